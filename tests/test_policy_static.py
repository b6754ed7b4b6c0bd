"""Static batching: batch formation, padding, and the batch's lifetime."""
from __future__ import annotations

from factories import make_policy, make_requests

from sim.memory.paged import PagedKVManager
from sim.request import Status


def test_padded_batch_runs_until_its_longest_request(contiguous):
    kv = contiguous(total_tokens=176, reservation="exact")
    pol = make_policy("static", kv, max_batch_size=2)
    r0, r1, r2 = make_requests((0.0, 10, 3), (0.0, 4, 1), (0.0, 100, 2))
    for r in (r0, r1, r2):
        pol.add(r, 0.0)
    b = pol.schedule(0.0)
    assert b.prefill_new_tokens == (10, 10)            # r1's prompt padded to 10
    assert kv.address_range(0) == (0, 13) and kv.address_range(1) == (13, 18)
    pol.on_step_done(b, 1.0)
    assert r1.status is Status.FINISHED and kv.num_tokens(0) == 10

    b = pol.schedule(1.0)                              # r1's row stays as padding
    assert b.decode_context_tokens == (11, 11) and b.requests == (r0,)
    pol.on_step_done(b, 2.0)
    b = pol.schedule(2.0)
    assert b.decode_context_tokens == (12, 12)
    assert pol.waiting[0] is r2                        # r2 waits for the whole batch
    pol.on_step_done(b, 3.0)
    assert r0.status is Status.FINISHED and r0.finish_s == 3.0

    b = pol.schedule(3.0)
    assert b.prefill_new_tokens == (100,) and r2.schedule_s == 3.0


def test_max_wait_holds_a_partial_batch(paged):
    pol = make_policy("static", paged(), max_batch_size=4, max_wait_s=0.5)
    r0, r1 = make_requests((0.0, 8, 1), (0.2, 8, 1))
    pol.add(r0, 0.0)
    assert pol.schedule(0.0) is None and pol.next_wakeup_s(0.0) == 0.5
    pol.add(r1, 0.2)
    assert pol.schedule(0.2) is None
    b = pol.schedule(0.5)
    assert b.prefill_new_tokens == (8, 8)


def test_full_batch_does_not_wait(paged):
    pol = make_policy("static", paged(), max_batch_size=2, max_wait_s=10.0)
    for r in make_requests((0.0, 8, 1), (0.1, 8, 1)):
        pol.add(r, r.arrival_s)
    assert pol.schedule(0.1).prefill_new_tokens == (8, 8)


def test_paged_static_batch_preempts_by_recompute():
    kv = PagedKVManager(num_blocks=5, block_size=4, watermark_frac=0.0)
    pol = make_policy("static", kv, max_batch_size=4)
    r0, r1 = make_requests((0.0, 8, 3), (0.0, 8, 5))
    pol.add(r0, 0.0), pol.add(r1, 0.0)
    pol.on_step_done(pol.schedule(0.0), 1.0)           # 2 blocks each, 1 free
    b = pol.schedule(1.0)                              # r0 takes it, r1 finds none: evicted
    assert b.requests == (r0,) and b.decode_context_tokens == (9, 9)
    assert r1.status is Status.WAITING and r1.preemptions == 1
