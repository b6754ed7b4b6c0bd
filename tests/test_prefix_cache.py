"""Prefix caching in the paged manager: block keys, hits, ref counts and the
exact eviction order on a tiny cache."""
from __future__ import annotations

import numpy as np
import pytest

from sim.memory.paged import PagedKVManager
from sim.memory.prefix import LRUFreeList, block_keys

B = 4   # tokens per block


def kv(num_blocks: int = 8) -> PagedKVManager:
    return PagedKVManager(num_blocks, B, watermark_frac=0.0, prefix_caching=True)


def test_block_keys_depend_on_the_whole_prefix_not_on_how_it_is_cut():
    # the same 12 tokens described as one segment or as two: same keys
    assert block_keys(((7, 12),), 3, B) == block_keys(((7, 12),), 3, B)
    a = block_keys(((1, 6), (2, 6)), 3, B)
    b = block_keys(((1, 6), (3, 6)), 3, B)
    assert a[0] == b[0] and a[1] != b[1] and a[2] != b[2]        # diverge inside block 1
    # resuming from a block gives the same chain
    assert block_keys(((1, 6), (2, 6)), 3, B, start=1, previous=a[0]) == a[1:]
    # the same content at a different position is a different block
    assert block_keys(((5, 4), (5, 4)), 2, B)[1] != block_keys(((5, 4),), 1, B)[0]


def test_a_second_request_reuses_the_shared_prefix_and_computes_the_rest():
    m = kv()
    system = (9, 8)                                  # two full blocks of a shared system prompt
    first = (system, (100, 3), (1000, 5))            # prompt 11 tokens, output 5
    second = (system, (200, 6), (2000, 2))
    assert m.allocate(1, 11, 16, first) == 0
    assert m.prefix_hit_tokens(14, second) == 8
    assert m.allocate(2, 14, 16, second) == 8
    assert m.block_table(2)[:2] == m.block_table(1)[:2]
    assert m.ref_count(m.block_table(1)[0]) == 2
    m.check_invariants()
    assert m.usage().real == 11 + 14 - 8          # shared slots counted once
    st = m.prefix_stats
    assert (st["queried_tokens"], st["hit_tokens"], st["queried_blocks"], st["hit_blocks"]) == (25, 8, 5, 2)


def test_a_fully_cached_prompt_still_computes_its_last_token():
    m = kv()
    seg = ((1, 8), (2, 4))
    m.allocate(1, 8, 12, seg)
    m.free(1)
    # 8 prompt tokens, both blocks cached: only the first is reused
    assert m.prefix_hit_tokens(8, seg) == 4


def test_freed_blocks_stay_cached_and_an_answer_becomes_a_prefix():
    m = kv()
    turn1 = ((1, 6), (50, 6))                   # prompt 6, answer 6
    m.allocate(1, 6, 12, turn1)
    m.append(1, 6)                              # the answer's KV
    m.free(1)
    m.check_invariants()
    assert m.num_free_blocks == 8               # cached blocks are free
    turn2 = ((1, 6), (50, 6), (3, 5), (60, 4))  # previous prompt + answer + new message, then its answer
    assert m.prefix_hit_tokens(17, turn2) == 12
    assert m.allocate(2, 17, 21, turn2) == 12
    m.check_invariants()
    assert m.usage().real == 17


def test_eviction_is_lru_deepest_first_and_drops_the_key():
    m = kv(6)
    a = ((1, 12), (11, 1))                     # 3 full blocks of prompt
    b = ((2, 8), (12, 1))                      # 2 full blocks
    m.allocate(1, 12, 13, a)
    ta = m.block_table(1)
    m.allocate(2, 8, 9, b)
    tb = m.block_table(2)
    m.free(1)                                  # a released first, deepest block first
    m.free(2)
    assert m._free.ids() == [5, ta[2], ta[1], ta[0], tb[1], tb[0]]     # block 5 never used
    # a new unrelated sequence of 2 blocks takes the never-used block, then a's deepest
    m.allocate(3, 8, 8, ((3, 8),))
    assert m.prefix_stats["evictions"] == 1
    assert m.prefix_hit_tokens(13, a) == 8     # a's third block is gone, its first two remain
    assert m.prefix_hit_tokens(9, b) == 8
    m.check_invariants()


def test_a_hit_on_a_free_block_takes_it_out_of_the_free_list():
    m = kv(4)
    a = ((1, 8), (2, 1))
    m.allocate(1, 8, 9, a)
    m.free(1)
    assert m.can_allocate(2, 9, 9, a)
    assert m.allocate(2, 9, 9, a) == 8          # 9 tokens: both cached blocks reused, one new
    m.check_invariants()
    m.free(2)
    m.check_invariants()
    m.assert_empty()


def test_admission_counts_revived_blocks_against_the_watermark():
    m = PagedKVManager(4, B, watermark_frac=0.25, prefix_caching=True)     # keep 1 block free
    a = ((1, 8), (2, 4))
    m.allocate(1, 12, 12, a)
    m.free(1)
    # 12 tokens = 3 blocks: 1 reused (free, so it is taken from the free list), 2 new: 4 - 3 = 1 >= 1
    assert m.can_allocate(2, 12, 12, a)
    assert not m.can_allocate(2, 13, 16, ((1, 8), (2, 8)))   # 4 blocks: 0 left < 1


def test_lru_free_list_orders_virgin_then_released():
    q = LRUFreeList(4)
    assert q.take(2).tolist() == [0, 1]
    q.put([1, 0])
    q.remove(1)
    assert q.ids() == [2, 3, 0]
    assert q.head(2) == [2, 3]
    with pytest.raises(ValueError):
        q.remove(3)


@pytest.mark.parametrize("seed", range(5))
def test_lru_free_list_matches_an_ordered_model_under_random_use(seed):
    """Puts, takes, hit removals and peeks in random order against a plain
    ordered model: the same ids, in the same order, every time (stale
    entries left by removals, compaction and growth included)."""
    from collections import OrderedDict

    rng = np.random.default_rng(seed)
    n = 300
    q, model_free, virgin, held = LRUFreeList(n), OrderedDict(), 0, []
    for _ in range(3000):
        act = rng.integers(0, 4)
        if act == 0 and len(q):                          # take
            k = int(rng.integers(1, min(len(q), 20) + 1))
            got = q.take(k).tolist()
            fresh = list(range(virgin, min(n, virgin + k)))
            virgin += len(fresh)
            expect = fresh + [model_free.popitem(last=False)[0] for _ in range(k - len(fresh))]
            assert got == expect
            held += got
        elif act == 1 and held:                          # release some, in a random order
            k = int(rng.integers(1, min(len(held), 20) + 1))
            idx = rng.choice(len(held), k, replace=False)
            out = [held[i] for i in idx]
            held = [b for i, b in enumerate(held) if i not in set(idx.tolist())]
            q.put(out)
            for b in out:
                model_free[b] = None
        elif act == 2 and model_free:                    # a prefix hit takes a free block back
            b = list(model_free)[int(rng.integers(len(model_free)))]
            q.remove(b)
            del model_free[b]
            held.append(b)
        else:
            k = int(rng.integers(1, 30))
            expect = (list(range(virgin, n)) + list(model_free))[:k]
            assert q.head(k) == expect
        assert len(q) == n - virgin + len(model_free)
        assert q.ids() == list(range(virgin, n)) + list(model_free)


def test_without_content_or_caching_nothing_is_shared():
    m = PagedKVManager(8, B, prefix_caching=False)
    seg = ((1, 8), (2, 1))
    assert m.allocate(1, 9, 9, seg) == 0
    assert m.prefix_hit_tokens(9, seg) == 0
    m2 = kv()
    m2.allocate(1, 9, 9, None)
    m2.free(1)
    assert m2.prefix_hit_tokens(9, seg) == 0 and m2.prefix_stats["queried_tokens"] == 0


def test_random_operations_keep_every_invariant():
    """Sequences with shared system prompts and conversation-like histories
    come and go at random on a small cache; after every act the manager is
    consistent and a reported hit is a prefix whose blocks hold that content."""
    import numpy as np

    rng = np.random.default_rng(3)
    m = PagedKVManager(40, B, watermark_frac=0.05, prefix_caching=True)
    live: dict[int, int] = {}
    for rid in range(400):
        if live and (rng.random() < 0.45 or m.num_free_blocks < 6):
            victim = int(rng.choice(list(live)))
            if rng.random() < 0.5 and live[victim] < 6 and m.can_append(victim, 3):
                m.append(victim, 3)
                live[victim] += 3
            else:
                m.free(victim)
                del live[victim]
            m.check_invariants()
            continue
        system = int(rng.integers(0, 3))
        prompt = ((system, int(rng.integers(1, 9))), (1000 + rid, int(rng.integers(1, 7))))
        n = sum(length for _, length in prompt)
        segments = prompt + ((5000 + rid, 6),)
        if not m.can_allocate(rid, n, n + 6, segments):
            continue
        hit = m.prefix_hit_tokens(n, segments)
        assert m.allocate(rid, n, n + 6, segments) == hit
        assert hit % B == 0 and hit < n
        live[rid] = 0                     # output tokens appended so far
        m.check_invariants()
    for rid in list(live):
        m.free(rid)
    m.check_invariants()
    m.assert_empty()
    assert m.prefix_stats["hit_tokens"] > 0 and m.prefix_stats["evictions"] > 0


def _run(**changes):
    from experiments.config import validate
    from experiments.runner import run_experiment

    raw = {"name": "pc", "seed": 1, "model": "llama-2-7b", "hardware": "h100-sxm",
           "workload": {"num_requests": 400, "arrival": {"process": "poisson", "rate_rps": 8.0},
                        "lengths": {"preset": "sharegpt"}},
           "engine": {"memory": {"layout": "paged"}, "cost_model": {"kind": "roofline"}}}
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return run_experiment(validate(raw))


def test_caching_without_shared_content_changes_nothing():
    off = _run()
    on = _run(**{"engine.memory.prefix_caching": True})
    assert on.summary["prefix_cache"]["prefill_tokens_saved"] == 0
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert on.summary[key] == off.summary[key]


def test_a_shared_system_prompt_is_computed_once_per_tenant_and_saves_prefill():
    prefix = {"shared_tokens": 512, "tenants": 4}
    off = _run(**{"workload.prefix": prefix})
    on = _run(**{"workload.prefix": prefix, "engine.memory.prefix_caching": True})
    pc = on.summary["prefix_cache"]
    assert pc["prefill_tokens_saved"] == int(on.requests["cached_tokens"].sum()) > 0
    # 4 tenants x 32 blocks of system prompt: nearly every request finds its tenant's cached
    assert pc["prefill_tokens_saved"] >= (400 - 4 * 3) * 512
    assert on.summary["ttft_s"]["mean"] < off.summary["ttft_s"]["mean"]
    assert on.summary["counts"] == off.summary["counts"]


def test_conversations_repeat_the_previous_turn_and_arrive_in_order():
    out = _run(**{"workload.prefix": {"turns": 3, "think_time_s": 5.0}, "engine.memory.prefix_caching": True})
    reqs = out.requests
    assert len(reqs) == 400 and reqs["arrival_s"].is_monotonic_increasing
    assert out.summary["prefix_cache"]["hit_rate_tokens"] > 0.2


def _docs_trace(tmp_path, seed: int, requests: int, gap_ms: tuple[int, int], output_tokens: int) -> str:
    """A Mooncake-format file: three documents of 4 blocks, each request
    reading the first 1-4 blocks of one of them, then 100 tokens of its own."""
    import json

    rng = np.random.default_rng(seed)
    docs = [[int(x) for x in rng.integers(1, 10**9, 4)] for _ in range(3)]
    rows, t = [], 0
    for i in range(requests):
        t += int(rng.integers(*gap_ms))
        ids = docs[i % 3][: int(rng.integers(1, 5))] + [10**10 + i]
        rows.append({"timestamp": t, "input_length": 512 * (len(ids) - 1) + 100, "output_length": output_tokens,
                     "hash_ids": ids})
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_a_hashed_trace_reaches_about_its_reuse_potential(tmp_path):
    """Documents shared by many requests (Mooncake format): with a cache that
    holds them, the hit rate approaches the trace's unbounded reuse potential."""
    from workloads.stats import prefix_reuse
    from workloads.traces import load_trace

    path = _docs_trace(tmp_path, seed=0, requests=120, gap_ms=(100, 600), output_tokens=20)
    potential = prefix_reuse(load_trace(path).workload)
    out = _run(**{"workload": {"trace": {"path": path}}, "engine.memory.prefix_caching": True})
    hit = out.summary["prefix_cache"]["hit_rate_tokens"]
    assert potential > 0.5 and potential - 0.05 <= hit <= potential + 1e-9


@pytest.mark.parametrize("segments", [((1, 16), (2, 16), (3, 5)), ((1, 6), (2, 6), (3, 20)), ((9, 40),),
                                      ((1, 3), (2, 3), (3, 3), (4, 30))])
def test_block_keys_resume_anywhere_and_match_a_reference(segments):
    """The fast form agrees with itself from every starting block, and two
    contents share a key exactly when their token prefixes are equal."""
    total = sum(length for _, length in segments)
    full = total // B
    keys = block_keys(segments, full, B)
    for start in range(1, full):
        assert block_keys(segments, full, B, start, keys[start - 1]) == keys[start:]
    tokens = [(cid, i) for cid, length in segments for i in range(length)]
    other = ((1, 16), (2, 16), (3, 5))
    other_tokens = [(cid, i) for cid, length in other for i in range(length)]
    other_keys = block_keys(other, sum(length for _, length in other) // B, B)
    for k in range(min(full, len(other_keys))):
        same_prefix = tokens[: (k + 1) * B] == other_tokens[: (k + 1) * B]
        assert (keys[k] == other_keys[k]) == same_prefix


def test_a_sweep_that_shares_kv_draws_the_sharing_figure(tmp_path):
    import copy

    from experiments.config import validate
    from experiments.sweep import run_sweep

    raw = {"name": "pcs", "seed": 1, "model": "llama-2-7b", "hardware": "h100-sxm",
           "workload": {"num_requests": 120, "arrival": {"process": "poisson", "rate_rps": 4.0},
                        "lengths": {"preset": "alpaca"}, "prefix": {"shared_tokens": 64, "tenants": 2}},
           "engine": {"memory": {"layout": "paged", "prefix_caching": True}, "cost_model": "roofline"},
           "sweep": {"workload.arrival.rate_rps": [2.0, 4.0]}}
    run_sweep(copy.deepcopy(raw), validate(raw), tmp_path / "s", jobs=1, progress=False)
    assert (tmp_path / "s" / "plots" / "sharing.png").is_file()


def test_a_prompt_repeating_an_unfinished_answer_shares_nothing_from_there_on():
    m = kv(16)
    turn1 = ((1, 8), (50, 8))                   # prompt 8, answer 50 of 8 tokens
    m.allocate(1, 8, 16, turn1)
    turn2 = ((1, 8), (50, 8), (2, 4), (60, 4))  # arrives while turn 1 still answers
    assert m.allocate(2, 20, 24, turn2) == 8     # the settled prompt is shared ...
    m.free(2)                                    # ... its copy of answer 50 and beyond never are
    assert m.prefix_hit_tokens(20, turn2) == 8
    m.append(1, 8)
    m.free(1)                                    # the answer is done: now it is a prefix
    assert m.prefix_hit_tokens(20, turn2) == 16
    m.check_invariants()




CASES = {
    "system prompts, recompute": {"workload.prefix": {"shared_tokens": 256, "tenants": 4},
                                  "engine.memory.num_blocks": 400},
    "system prompts, swap": {"workload.prefix": {"shared_tokens": 256, "tenants": 4},
                             "engine.memory.num_blocks": 400, "engine.memory.swap_space_gb": 4,
                             "engine.batching": {"preemption": "swap"}},
    "conversations, chunked": {"workload.prefix": {"turns": 3, "think_time_s": 2.0},
                               "engine.memory.num_blocks": 400,
                               "engine.batching": {"chunked_prefill": True, "max_batch_tokens": 512}},
    "hashed documents": {"workload": "docs", "engine.memory.num_blocks": 300},
}


@pytest.mark.parametrize("case", list(CASES))
def test_virtual_keys_change_nothing_but_work(case, tmp_path, monkeypatch):
    """Told which content several requests share, the manager keys the rest
    virtually; every request, every timeline row and every prefix statistic
    (evictions included) is the same as keying every block, preemptions
    (which turn virtual keys into real ones) included."""
    changes = {**CASES[case], "engine.memory.prefix_caching": True}
    if changes.get("workload") == "docs":
        changes["workload"] = {"trace": {"path": _docs_trace(tmp_path, seed=1, requests=300, gap_ms=(20, 120),
                                                             output_tokens=60)}}
    keyed = {"virtually": 0}
    original = PagedKVManager._key_virtually

    def counting(self, slot, start, end):
        keyed["virtually"] += max(0, end - start)
        original(self, slot, start, end)

    monkeypatch.setattr(PagedKVManager, "_key_virtually", counting)
    told = _run(**changes)
    assert keyed["virtually"] > 0                     # the hint did take blocks out of the maps
    monkeypatch.setattr(PagedKVManager, "expect_content", lambda self, contents: None)
    keyed["virtually"] = 0
    every = _run(**changes)
    assert keyed["virtually"] == 0
    assert told.summary["preemptions"] == every.summary["preemptions"] > 0
    assert told.summary["prefix_cache"] == every.summary["prefix_cache"]
    assert told.summary["prefix_cache"]["evictions"] > 0 and told.summary["prefix_cache"]["hit_rate_tokens"] > 0
    assert told.requests.equals(every.requests)
    assert told.timeline.equals(every.timeline)
