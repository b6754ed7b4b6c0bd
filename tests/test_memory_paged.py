"""Paged KV manager on a tiny cache: 11 blocks of 16 tokens, exact block ids."""
import numpy as np
import pytest

from sim.memory import KVManager, KVUsage, MemoryError_, PagedKVManager


def make_cache(watermark_frac: float = 0.01, num_cpu_blocks: int = 0) -> PagedKVManager:
    # 11 blocks * 16 tokens = 176 slots; watermark ceil(0.01 * 11) = 1 block
    return PagedKVManager(num_blocks=11, block_size=16, watermark_frac=watermark_frac,
                          num_cpu_blocks=num_cpu_blocks)


def test_implements_the_protocol():
    kv = make_cache()
    assert isinstance(kv, KVManager)
    assert (kv.layout, kv.total_tokens, kv.watermark_blocks) == ("paged", 176, 1)


def test_fresh_cache_hands_out_lowest_ids_first():
    kv = make_cache()
    kv.allocate(1, 20, 40)    # 2 blocks
    kv.allocate(2, 33, 40)    # 3 blocks
    assert kv.block_table(1) == [0, 1]
    assert kv.block_table(2) == [2, 3, 4]
    assert kv.num_free_blocks == 6


def test_freed_blocks_join_the_tail_of_the_free_queue():
    kv = make_cache(watermark_frac=0.0)
    kv.allocate(1, 20, 40)    # [0, 1]
    kv.allocate(2, 33, 40)    # [2, 3, 4]
    kv.free(1)                # queue: 5..10, 0, 1
    kv.allocate(3, 7 * 16, 7 * 16)
    assert kv.block_table(3) == [5, 6, 7, 8, 9, 10, 0]
    kv.free(2)                # queue: 1, 2, 3, 4
    kv.allocate(4, 17, 17)
    assert kv.block_table(4) == [1, 2]
    kv.append(3, 1)           # block 0 was full: next in queue is 3
    assert kv.block_table(3)[-1] == 3


def test_append_takes_a_block_only_when_the_last_one_is_full():
    kv = make_cache()
    kv.allocate(1, 15, 100)
    assert kv.blocks_needed_to_grow(1, 1) == 0
    kv.append(1)              # 16 tokens: block 0 now full
    assert kv.block_table(1) == [0]
    assert kv.blocks_needed_to_grow(1, 1) == 1
    assert kv.blocks_needed_to_grow(1, 17) == 2
    kv.append(1)              # 17 tokens
    assert kv.block_table(1) == [0, 1]
    kv.append(1, 15)          # 32 tokens, still 2 blocks
    assert (kv.num_tokens(1), kv.block_table(1)) == (32, [0, 1])
    assert kv.blocks_needed_to_grow(1, 0) == 0


def test_admission_keeps_the_watermark_but_growth_may_use_it():
    kv = make_cache()
    kv.allocate(1, 9 * 16, 176)           # 9 blocks, 2 free
    assert kv.can_allocate(2, 16, 16)     # 2 - 1 = 1 >= watermark 1
    assert not kv.can_allocate(2, 17, 17)  # would leave 0 free
    kv.allocate(2, 16, 32)                # 1 free: the watermark block
    assert not kv.can_allocate(3, 1, 1)
    with pytest.raises(MemoryError_, match="without room"):
        kv.allocate(3, 1, 1)
    assert kv.can_append(2, 1)            # growth takes the watermark block
    kv.append(2, 1)
    assert kv.num_free_blocks == 0
    assert not kv.can_append(1, 16)
    with pytest.raises(MemoryError_, match="needs 1 blocks, 0 free"):
        kv.append(1, 16)


def test_allocate_zero_tokens_takes_no_block():
    kv = make_cache()
    kv.allocate(1, 0, 5)
    assert kv.block_table(1) == []
    kv.append(1)
    assert kv.block_table(1) == [0]


def test_usage_counts_internal_fragmentation_exactly():
    kv = make_cache()
    kv.allocate(1, 20, 40)    # 2 blocks, 12 slots unused
    kv.allocate(2, 33, 40)    # 3 blocks, 15 slots unused
    assert kv.usage() == KVUsage(total=176, real=53, internal=27, reserved=0, free=96,
                                 largest_free_run=96)
    assert kv.free_unusable(1000) == 0


def test_rejection_reason_counts_blocks_against_the_admissible_cache():
    kv = make_cache()         # 11 blocks, 1 kept free at admission: 10 admissible
    assert kv.rejection_reason(160) is None
    assert kv.rejection_reason(161) == (
        "needs 11 blocks of 16 tokens, KV cache has 11 of which 1 are kept free at admission")
    kv0 = make_cache(watermark_frac=0.0)
    assert kv0.rejection_reason(176) is None
    assert kv0.rejection_reason(177) == "needs 12 blocks of 16 tokens, KV cache has 11"
    big = PagedKVManager(num_blocks=256, block_size=16, watermark_frac=0.0)
    assert big.rejection_reason(300 * 16) == "needs 300 blocks of 16 tokens, KV cache has 256"


def test_swap_out_and_in_move_blocks_between_pools():
    kv = make_cache(num_cpu_blocks=4)
    kv.allocate(1, 20, 40)    # GPU [0, 1]
    kv.allocate(2, 40, 40)    # GPU [2, 3, 4]
    assert kv.can_swap_out(1)
    assert kv.swap_out(1) == [(0, 0), (1, 1)]
    assert kv.is_swapped(1) and not kv.is_swapped(2)
    assert kv.cpu_block_table(1) == [0, 1]
    assert kv.num_tokens(1) == 20
    assert (kv.num_free_blocks, kv.num_free_cpu_blocks) == (8, 2)
    assert kv.usage().real == 40
    assert not kv.can_swap_out(2)         # 3 blocks, 2 CPU blocks free
    with pytest.raises(MemoryError_, match="needs 3 CPU blocks, 2 free"):
        kv.swap_out(2)
    assert kv.can_swap_in(1)
    assert kv.swap_in(1) == [(0, 5), (1, 6)]    # GPU queue was 5..10, 0, 1
    assert kv.block_table(1) == [5, 6]
    assert kv.swap_out(2) == [(2, 2), (3, 3), (4, 0)]   # CPU queue was 2, 3, 0, 1
    assert kv.cpu_block_table(2) == [2, 3, 0]
    kv.check_invariants()


def test_swap_in_ignores_the_watermark_but_needs_the_blocks():
    kv = make_cache(num_cpu_blocks=2)
    kv.allocate(1, 32, 32)            # [0, 1]
    kv.swap_out(1)
    kv.allocate(2, 9 * 16, 9 * 16)    # 9 of 11 blocks: 2 free
    assert kv.can_swap_in(1)          # uses all 2, watermark or not
    kv.swap_in(1)
    assert kv.num_free_blocks == 0
    kv.swap_out(1)
    kv.append(2, 16)                  # 1 block left
    assert not kv.can_swap_in(1)
    with pytest.raises(MemoryError_, match="needs 2 GPU blocks, 1 free"):
        kv.swap_in(1)


def test_a_swapped_sequence_cannot_grow_but_can_be_freed():
    kv = make_cache(num_cpu_blocks=4)
    kv.allocate(1, 20, 40)
    kv.swap_out(1)
    with pytest.raises(MemoryError_, match="swapped out"):
        kv.append(1)
    with pytest.raises(MemoryError_, match="swapped out"):
        kv.can_append(1)
    kv.free(1)
    assert (kv.num_free_blocks, kv.num_free_cpu_blocks) == (11, 4)
    kv.assert_empty()


def test_fork_shares_blocks_until_the_last_reference_goes():
    kv = make_cache()
    kv.allocate(1, 20, 40)    # [0, 1]
    kv.fork(1, 2)
    assert kv.block_table(2) == [0, 1]
    assert (kv.ref_count(0), kv.ref_count(1)) == (2, 2)
    assert kv.usage() == KVUsage(total=176, real=20, internal=12, reserved=0, free=144,
                                 largest_free_run=144, shared=32)     # 2 blocks held twice
    kv.free(1)
    assert (kv.ref_count(0), kv.ref_count(1), kv.num_free_blocks) == (1, 1, 9)
    kv.free(2)
    assert kv.num_free_blocks == 11
    kv.assert_empty()


def test_writing_into_a_shared_partial_block_copies_it_first():
    kv = make_cache()
    kv.allocate(1, 20, 40)    # [0 full, 1 holding 4]
    kv.fork(1, 2)
    assert kv.blocks_needed_to_grow(2, 1) == 1
    kv.append(2, 1)           # child gets a private copy of block 1
    assert kv.block_table(2) == [0, 2]
    assert kv.block_table(1) == [0, 1]
    assert [kv.ref_count(b) for b in (0, 1, 2)] == [2, 1, 1]
    assert kv.usage().real == 16 + 4 + 5
    assert kv.usage().internal == 3 * 16 - 25
    assert kv.blocks_needed_to_grow(1, 1) == 0   # block 1 is the parent's alone now
    kv.append(1, 1)
    assert kv.block_table(1) == [0, 1]
    kv.check_invariants()


def test_shared_full_blocks_are_not_copied():
    kv = make_cache()
    kv.allocate(1, 32, 64)    # [0, 1] both full
    kv.fork(1, 2)
    kv.append(2, 1)
    assert kv.block_table(2) == [0, 1, 2]
    assert kv.usage().real == 33


def test_misuse_raises():
    kv = make_cache()
    kv.allocate(1, 20, 40)
    with pytest.raises(MemoryError_, match="already holds KV"):
        kv.allocate(1, 1, 1)
    with pytest.raises(MemoryError_, match="num_tokens <= final_tokens"):
        kv.can_allocate(2, 5, 4)
    kv.free(1)
    with pytest.raises(MemoryError_, match="double free"):
        kv.free(1)
    with pytest.raises(MemoryError_, match="holds no KV"):
        kv.append(1)
    with pytest.raises(MemoryError_, match="not swapped out"):
        kv.can_swap_in(1)


def test_assert_empty_reports_the_leak():
    kv = make_cache()
    kv.allocate(7, 20, 40)
    with pytest.raises(MemoryError_, match=r"sequences \[7\] still hold 2 GPU and 0 CPU blocks"):
        kv.assert_empty()


def test_check_invariants_catches_a_corrupted_ref_count():
    kv = make_cache()
    kv.allocate(1, 20, 40)
    kv.check_invariants()
    kv._shared[0] = 2
    with pytest.raises(MemoryError_, match="ref counts"):
        kv.check_invariants()


@pytest.mark.parametrize("kwargs, field", [
    ({"num_blocks": 0}, "num_blocks"),
    ({"num_blocks": 4, "block_size": 0}, "block_size"),
    ({"num_blocks": 4, "watermark_frac": 1.0}, "watermark_frac"),
    ({"num_blocks": 4, "num_cpu_blocks": -1}, "num_cpu_blocks"),
])
def test_bad_construction_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PagedKVManager(**kwargs)


def _grown(lazy: bool, block_size: int, steps: list[int]) -> tuple[list[int], PagedKVManager]:
    """Free blocks after each growth of every held sequence by ``steps[i]``
    tokens (a lazy manager moves its clock), sequences of mixed fill."""
    kv = PagedKVManager(200, block_size, 0.0, lazy_ids=lazy)
    for rid, n in enumerate([1, 2, 3, 5, 8, 13]):
        kv.allocate(rid, n, 500)
    slots = np.array([kv.slot(r) for r in range(6)])
    free = []
    for k in steps:
        assert kv.append_slots(slots, k)
        kv.check_invariants()
        free.append(kv.num_free_blocks)
    return free, kv


@pytest.mark.parametrize("block_size", [3, 4, 16])
def test_a_lazy_manager_counts_the_blocks_an_eager_one_hands_out(block_size):
    steps = [1, 1, 2, 3, 1, 5, 17, 1, 40, 2]
    lazy, kv = _grown(True, block_size, steps)
    eager, ref = _grown(False, block_size, steps)
    assert lazy == eager
    assert [kv.num_tokens(r) for r in range(6)] == [ref.num_tokens(r) for r in range(6)]
    assert kv.usage() == ref.usage()
    # its first question about ids gives every sequence its blocks, after which it keeps ids
    tables = [kv.block_table(r) for r in range(6)]
    assert [len(t) for t in tables] == [len(ref.block_table(r)) for r in range(6)]
    assert sorted(b for t in tables for b in t) == list(range(200 - kv.num_free_blocks))
    kv.check_invariants()
    kv.append(0, 30)
    assert kv.block_table(0)[: len(tables[0])] == tables[0]
    for r in range(6):
        kv.free(r)
    kv.assert_empty()


def test_a_lazy_manager_refuses_growth_past_its_free_blocks():
    kv = PagedKVManager(4, 4, 0.0, lazy_ids=True)
    kv.allocate(0, 4, 100)
    kv.allocate(1, 3, 100)                 # 2 blocks held, 2 free
    slots = np.array([kv.slot(0), kv.slot(1)])
    assert kv.growth_steps(slots, 10) == 4        # 4 more tokens take a block each; 5 take 3
    assert not kv.append_slots(slots, 5)
    assert kv.num_free_blocks == 2 and kv.num_tokens(0) == 4
    assert kv.append_slots(slots, 4)
    assert kv.num_free_blocks == 0 and not kv.can_append(0, 1) and kv.can_append(1, 1)
