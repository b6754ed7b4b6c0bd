"""Continuous batching: who is admitted, when, and what each step computes."""
from __future__ import annotations

import pytest
from factories import make_policy, make_requests

from sim.memory.paged import PagedKVManager
from sim.request import Status


def test_admit_decode_and_leave_exactly(paged):
    kv = paged()
    pol = make_policy("continuous", kv)
    r0, r1 = make_requests((0.0, 20, 3), (0.0, 30, 2))
    assert pol.add(r0, 0.0) and pol.add(r1, 0.0)

    b = pol.schedule(0.0)
    assert b.prefill_new_tokens == (20, 30) and b.decode_context_tokens == ()
    assert kv.block_table(0) == [0, 1] and kv.block_table(1) == [2, 3]
    pol.on_step_done(b, 1.0)
    assert pol.running == [r0, r1]          # observing the running set synchronises its requests
    assert (r0.generated_tokens, r1.generated_tokens) == (1, 1)
    assert r0.first_token_s == r1.first_token_s == 1.0

    b = pol.schedule(1.0)        # both decode; each attends prompt + its new token
    assert b.prefill_new_tokens == () and b.decode_context_tokens == (21, 31)
    pol.on_step_done(b, 2.0)
    assert r1.status is Status.FINISHED and r1.finish_s == 2.0
    assert kv.num_free_blocks == 11 - 2          # r1's blocks came back

    b = pol.schedule(2.0)
    assert b.decode_context_tokens == (22,)
    pol.on_step_done(b, 3.0)
    assert r0.status is Status.FINISHED and r0.finish_s == 3.0
    assert pol.schedule(3.0) is None
    kv.assert_empty()


def test_join_mid_flight_shares_the_step(paged):
    pol = make_policy("continuous", paged())
    r0, r1 = make_requests((0.0, 16, 5), (0.5, 8, 2))
    pol.add(r0, 0.0)
    pol.on_step_done(pol.schedule(0.0), 1.0)
    pol.add(r1, 0.5)
    b = pol.schedule(1.0)
    assert b.prefill_new_tokens == (8,) and b.decode_context_tokens == (17,)
    assert [r.request_id for r in b.requests] == [1, 0]     # prefills first, then decodes
    assert r1.schedule_s == 1.0


def test_prefill_only_steps_when_not_mixed(paged):
    pol = make_policy("continuous", paged(), mixed_prefill_decode=False)
    r0, r1 = make_requests((0.0, 16, 5), (0.5, 8, 2))
    pol.add(r0, 0.0)
    pol.on_step_done(pol.schedule(0.0), 1.0)
    pol.add(r1, 0.5)
    b = pol.schedule(1.0)
    assert b.prefill_new_tokens == (8,) and b.decode_context_tokens == ()
    pol.on_step_done(b, 2.0)
    pol.running                                              # synchronise the running requests
    assert r0.generated_tokens == 1                          # r0 waited a step
    assert pol.schedule(2.0).decode_context_tokens == (17, 9)


def test_token_budget_and_batch_size_limit_admission(paged):
    pol = make_policy("continuous", paged(num_blocks=64), max_batch_tokens=40, max_batch_size=2)
    for r in make_requests((0.0, 30, 2), (0.0, 20, 2), (0.0, 5, 2)):
        pol.add(r, 0.0)
    b = pol.schedule(0.0)
    assert b.prefill_new_tokens == (30,)          # 30 + 20 > 40: the second waits (no overtaking)
    pol.on_step_done(b, 1.0)
    b = pol.schedule(1.0)
    assert b.prefill_new_tokens == (20,) and b.decode_context_tokens == (31,)
    pol.on_step_done(b, 2.0)
    b = pol.schedule(2.0)                          # r0 finished at 2.0 -> r2 joins
    assert b.prefill_new_tokens == (5,) and b.decode_context_tokens == (21,)


def test_recompute_preemption_evicts_latest_admitted():
    kv = PagedKVManager(num_blocks=5, block_size=4, watermark_frac=0.0)
    pol = make_policy("continuous", kv)
    r0, r1 = make_requests((0.0, 7, 10), (0.0, 7, 10))
    pol.add(r0, 0.0), pol.add(r1, 0.0)
    pol.on_step_done(pol.schedule(0.0), 1.0)      # 2 blocks each, 1 free
    b = pol.schedule(1.0)
    assert b.decode_context_tokens == (8, 8)       # both still fit their 2 blocks
    pol.on_step_done(b, 2.0)
    b = pol.schedule(2.0)                          # r0 takes the last block, r1 is evicted
    assert b.decode_context_tokens == (9,) and b.swap_out_tokens == 0
    assert r1.status is Status.WAITING and r1.preemptions == 1 and r1.computed_tokens == 0
    assert list(pol.waiting) == [r1] and pol.num_preemptions == 1
    assert kv.block_table(0) == [0, 1, 4]
    # r1 must re-prefill prompt + 2 generated tokens = 9 tokens = 3 blocks: only 2 are free
    assert b.prefill_new_tokens == ()


def test_swap_preemption_moves_blocks_and_brings_them_back():
    kv = PagedKVManager(num_blocks=5, block_size=4, watermark_frac=0.0, num_cpu_blocks=4)
    pol = make_policy("continuous", kv, preemption="swap")
    r0, r1 = make_requests((0.0, 7, 3), (0.0, 7, 10))
    pol.add(r0, 0.0), pol.add(r1, 0.0)
    pol.on_step_done(pol.schedule(0.0), 1.0)
    pol.on_step_done(pol.schedule(1.0), 2.0)
    b = pol.schedule(2.0)
    assert b.swap_out_tokens == 8 and r1.status is Status.SWAPPED and kv.is_swapped(1)
    pol.on_step_done(b, 3.0)                      # r0 finishes: 3 tokens generated
    assert r0.status is Status.FINISHED
    b = pol.schedule(3.0)
    assert b.swap_in_tokens == 8 and b.num_seqs == 0 and r1.status is Status.RUNNING
    pol.on_step_done(b, 3.5)
    b = pol.schedule(3.5)
    assert b.decode_context_tokens == (9,)       # resumes where it left off, no recompute
    assert pol.running == [r1] and r1.generated_tokens == 2 and r1.preemptions == 1


def test_requests_that_can_never_run_are_rejected_with_a_reason(paged):
    pol = make_policy("continuous", paged(), max_batch_tokens=100)
    too_long, too_big, prompt_over_budget = make_requests((0.0, 90, 200), (0.0, 100, 100), (0.0, 120, 1))
    assert not pol.add(too_long, 0.0)
    assert too_long.status is Status.REJECTED and "290 tokens of context" in too_long.reason
    assert not pol.add(too_big, 0.0) and "blocks" in too_big.reason          # 200 > 176 slots
    assert not pol.add(prompt_over_budget, 0.0) and "max_batch_tokens" in prompt_over_budget.reason
    assert pol.schedule(0.0) is None and pol.rejected == [too_long, too_big, prompt_over_budget]


def test_watermark_too_large_for_a_request_rejects_it():
    kv = PagedKVManager(num_blocks=11, block_size=16, watermark_frac=0.5)   # keeps 6 blocks free
    pol = make_policy("continuous", kv)
    big, small = make_requests((0.0, 100, 1), (0.0, 10, 1))               # 7 blocks > 11 - 6
    assert not pol.add(big, 0.0) and pol.add(small, 0.0)
    assert "kept free" in big.reason
    assert pol.schedule(0.0).prefill_new_tokens == (10,)


class NeverFits(PagedKVManager):
    """A manager whose admission always fails although it claims every
    request could run: the policy must not spin or deadlock on it."""

    def can_allocate(self, request_id, num_tokens, final_tokens, segments=None):
        return False

    def try_allocate(self, request_id, num_tokens, final_tokens, segments=None):
        return None


def test_unschedulable_head_is_rejected_not_deadlocked():
    for name in ("continuous", "static"):
        pol = make_policy(name, NeverFits(num_blocks=11, block_size=16, watermark_frac=0.0))
        (req,) = make_requests((0.0, 10, 1))
        assert pol.add(req, 0.0)
        assert pol.schedule(0.0) is None
        assert req.status is Status.REJECTED and "empty KV cache" in req.reason


def test_contiguous_admits_only_what_it_can_reserve(contiguous):
    kv = contiguous(total_tokens=100, reservation="exact")
    pol = make_policy("continuous", kv)
    for r in make_requests((0.0, 30, 30), (0.0, 30, 30), (0.0, 10, 5)):
        pol.add(r, 0.0)
    b = pol.schedule(0.0)
    assert b.prefill_new_tokens == (30,) and b.kv_layout == "contiguous"   # 60 + 60 > 100
    assert kv.address_range(0) == (0, 60)


def test_chunked_prefill_spends_the_budget_on_decodes_first_then_chunks(paged):
    pol = make_policy("continuous", paged(), chunked_prefill=True, max_batch_tokens=32)
    r0, r1 = make_requests((0.0, 8, 4), (0.0, 100, 2))
    pol.add(r0, 0.0)
    pol.add(r1, 0.0)
    b = pol.schedule(0.0)              # r0 whole (8), then r1's first chunk (24 of 100)
    assert (b.prefill_new_tokens, b.prefill_context_tokens) == ((8, 24), (0, 0))
    pol.on_step_done(b, 1.0)
    assert r0.first_token_s == 1.0 and r1.first_token_s is None
    b = pol.schedule(1.0)              # r0 decodes; 31 tokens left for r1
    assert b.decode_context_tokens == (9,)
    assert (b.prefill_new_tokens, b.prefill_context_tokens) == ((31,), (24,))
    assert [r.request_id for r in b.requests] == [1, 0]
    pol.on_step_done(b, 2.0)
    b = pol.schedule(2.0)
    assert (b.prefill_new_tokens, b.prefill_context_tokens) == ((31,), (55,))
    pol.on_step_done(b, 3.0)
    b = pol.schedule(3.0)              # r0's fourth and last token; r1's last 14 tokens
    assert b.decode_context_tokens == (11,) and (b.prefill_new_tokens, b.prefill_context_tokens) == ((14,), (86,))
    pol.on_step_done(b, 4.0)
    assert r1.first_token_s == 4.0 and r0.status is Status.FINISHED
    b = pol.schedule(4.0)
    assert b.decode_context_tokens == (101,) and b.prefill_new_tokens == ()


def test_a_prompt_longer_than_the_budget_is_chunked_not_rejected(paged):
    plain = make_policy("continuous", paged(), max_batch_tokens=32)
    chunked = make_policy("continuous", paged(), max_batch_tokens=32, chunked_prefill=True)
    (r,) = make_requests((0.0, 100, 2))
    assert plain.rejection_reason(r) is not None and chunked.rejection_reason(r) is None


def test_chunked_prefill_computes_only_what_the_prefix_cache_lacks():
    kv = PagedKVManager(32, 8, watermark_frac=0.0, prefix_caching=True)
    pol = make_policy("continuous", kv, chunked_prefill=True, max_batch_tokens=16)
    first, second = make_requests((0.0, 40, 1), (0.0, 40, 1))
    first.segments = ((7, 32), (100, 8), (200, 1))
    second.segments = ((7, 32), (101, 8), (201, 1))
    pol.add(first, 0.0)
    t = 0.0
    while first.status is not Status.FINISHED:
        b = pol.schedule(t)
        t += 1.0
        pol.on_step_done(b, t)
    pol.add(second, t)
    b = pol.schedule(t)                # 32 cached tokens: 8 left, one chunk over 32 of context
    assert (b.prefill_new_tokens, b.prefill_context_tokens) == ((8,), (32,))
    assert second.cached_tokens == 32


@pytest.mark.parametrize("layout", ["paged", "contiguous"])
def test_parallel_samples_share_the_prompt_and_finish_together(layout):
    from sim.memory.contiguous import ContiguousKVManager

    kv = PagedKVManager(40, 4, watermark_frac=0.0) if layout == "paged" else ContiguousKVManager(400, "exact", 256)
    pol = make_policy("continuous", kv)
    (r,) = make_requests((0.0, 10, 3))
    r.num_seqs = 3
    pol.add(r, 0.0)
    b = pol.schedule(0.0)                      # one prefill of the prompt for all three
    assert (b.prefill_new_tokens, b.decode_context_tokens) == ((10,), ())
    # paged: the samples hold the prompt's 3 blocks, shared; contiguous: a copy each
    assert kv.usage().real == (10 if layout == "paged" else 30)
    pol.on_step_done(b, 1.0)
    assert r.first_token_s == 1.0 and pol.num_running == 3
    b = pol.schedule(1.0)                      # three samples decode
    assert b.decode_context_tokens == (11, 11, 11)
    if layout == "paged":                      # each wrote its own copy of the partial last block
        assert kv.usage().real == 8 + 3 * 3 and kv.usage().shared == 2 * 2 * 4
    pol.on_step_done(b, 2.0)
    pol.on_step_done(pol.schedule(2.0), 3.0)
    assert r.status is Status.FINISHED and r.finish_s == 3.0 and pol.finished == [r]
    assert pol.schedule(3.0) is None
    kv.assert_empty()


def test_max_batch_size_counts_every_sample_from_admission():
    """Two requests of 3 samples and max_batch_size 4: the second waits
    until the first finishes, although the first runs a single row until
    its first token; a preempted request's unjoined samples stop counting.
    The batch never exceeds 4 rows."""
    kv = PagedKVManager(40, 4, watermark_frac=0.0)
    pol = make_policy("continuous", kv, max_batch_size=4)
    first, second = make_requests((0.0, 10, 3), (0.0, 10, 3))
    first.num_seqs = second.num_seqs = 3
    pol.add(first, 0.0)
    pol.add(second, 0.0)
    b = pol.schedule(0.0)
    assert len(b.requests) == 1 and list(pol.waiting) == [second]
    t = 0.0
    while first.status is not Status.FINISHED:
        assert len(b.requests) <= 4
        t += 1.0
        pol.on_step_done(b, t)
        b = pol.schedule(t)
    assert second.status is Status.RUNNING and len(b.requests) == 1
    pol._preempt_recompute(pol._run.pop())      # as memory pressure does it, before its samples joined
    assert pol._joining == 0 and pol.waiting[0] is second
    pol.on_step_done(pol.schedule(t), t + 1.0)  # admitted again: prompt, then its samples join
    assert pol._joining == 0 and pol.num_running == 3
    pol._preempt_recompute(pol._run.pop())      # after: all three rows go
    assert pol._joining == 0 and pol.num_running == 0


def test_a_request_with_more_samples_than_the_batch_is_rejected():
    kv = PagedKVManager(40, 4, watermark_frac=0.0)
    pol = make_policy("continuous", kv, max_batch_size=2)
    (r,) = make_requests((0.0, 10, 3))
    r.num_seqs = 3
    assert not pol.add(r, 0.0) and "max_batch_size allows 2" in r.reason


def _beam_run() -> tuple[list[int], PagedKVManager, list]:
    """One request of 4 beams to its end; the shared slots after each step."""
    kv = PagedKVManager(64, 4, watermark_frac=0.0)
    pol = make_policy("continuous", kv)
    (r,) = make_requests((0.0, 9, 12))
    r.num_seqs, r.beam = 4, True
    pol.add(r, 0.0)
    t, shared, running = 0.0, [], []
    while r.status is not Status.FINISHED:
        b = pol.schedule(t)
        t += 1.0
        pol.on_step_done(b, t)
        kv.check_invariants()
        shared.append(kv.usage().shared)
        running.append(sorted(pol._run.seq[: pol.num_running].tolist()))
    return shared, kv, running


def test_beams_are_reselected_after_every_token_and_share_their_history():
    shared, kv, running = _beam_run()
    assert all(len(seqs) == 4 and len(set(seqs)) == 4 for seqs in running[:-1])
    assert max(shared[1:-1]) > 2 * 2 * 4        # beams share more than the prompt's two full blocks
    kv.assert_empty()
    assert _beam_run()[0] == shared             # the same request draws the same beams: runs repeat


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_each_row_of_a_batch_holds_what_the_kv_manager_holds(preemption):
    """``held_tokens`` (in ``requests`` order: prefills first, then decodes)
    is what each row's sequence holds once the step's slots are reserved,
    for batches of many rows (kept as arrays) and few, with three
    admissions a step and, in a tight cache, preemptions (and swaps)."""
    kv = PagedKVManager(num_blocks=120, block_size=4, watermark_frac=0.0, num_cpu_blocks=200)
    pol = make_policy("continuous", kv, preemption=preemption)
    reqs = make_requests(*[(0.0, 5 + i % 7, 4 + (i * 5) % 23) for i in range(240)])
    checked = many = 0
    for step in range(400):
        for req in reqs[3 * step: 3 * step + 3]:
            pol.add(req, float(step))
        batch = pol.schedule(float(step))
        if batch is None:
            continue
        assert len(batch.held_tokens) == len(batch.requests)
        assert list(batch.held_tokens) == [kv.num_tokens(batch.seq_id(i)) for i in range(len(batch.requests))]
        checked += 1
        many += len(batch.requests) > 24 and bool(batch.prefill_new_tokens)
        pol.on_step_done(batch, step + 1.0)
    assert checked > 100 and many > 20 and pol.num_preemptions > 0
