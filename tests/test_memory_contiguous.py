"""Contiguous KV manager on a 64-slot address space: exact ranges and holes."""
import pytest

from sim.memory import ContiguousKVManager, KVManager, KVUsage, MemoryError_


def make_cache(reservation: str = "exact", total_tokens: int = 64,
               max_context_tokens: int = 64) -> ContiguousKVManager:
    return ContiguousKVManager(total_tokens=total_tokens, reservation=reservation,
                               max_context_tokens=max_context_tokens)


def test_implements_the_protocol():
    kv = make_cache()
    assert isinstance(kv, KVManager)
    assert (kv.layout, kv.total_tokens) == ("contiguous", 64)


@pytest.mark.parametrize("reservation, finals, sizes", [
    ("max", [1, 7, 16], [12, 12, 12]),
    ("pow2", [1, 2, 3, 5, 8, 9, 12], [1, 2, 4, 8, 8, 12, 12]),   # capped at 12
    ("exact", [1, 7, 12], [1, 7, 12]),
])
def test_reservation_sizes(reservation, finals, sizes):
    kv = make_cache(reservation, max_context_tokens=12)
    assert [kv.reservation_tokens(n) for n in finals] == sizes
    assert [kv.reservation_tokens(s) for s in sizes] == sizes   # idempotent


def test_first_fit_places_each_reservation_in_the_lowest_hole_that_fits():
    kv = make_cache()
    kv.allocate(1, 5, 10)     # exact: 10 slots
    kv.allocate(2, 5, 20)
    kv.allocate(3, 5, 8)
    assert [kv.address_range(r) for r in (1, 2, 3)] == [(0, 10), (10, 30), (30, 38)]
    kv.free(1)
    assert kv.holes() == [(0, 10), (38, 64)]
    kv.allocate(4, 5, 12)     # too big for [0, 10)
    kv.allocate(5, 5, 6)      # first fit: [0, 6)
    assert kv.address_range(4) == (38, 50)
    assert kv.address_range(5) == (0, 6)
    assert kv.holes() == [(6, 10), (50, 64)]


def test_external_fragmentation_counts_holes_too_small_for_the_reservation():
    kv = make_cache()
    for rid, final in [(1, 10), (2, 20), (3, 8)]:
        kv.allocate(rid, 5, final)     # [0,10) [10,30) [30,38)
    kv.free(1)
    kv.allocate(4, 5, 12)              # [38,50)
    kv.allocate(5, 5, 6)               # [0,6)
    assert kv.holes() == [(6, 10), (50, 64)]
    assert kv.free_unusable(4) == 0
    assert kv.free_unusable(5) == 4
    assert kv.free_unusable(14) == 4
    assert kv.free_unusable(15) == 18
    assert kv.free_unusable(65) == 18   # past the context limit nothing fits
    assert kv.free_unusable(0) == 0
    assert kv.usage().largest_free_run == 14


def test_max_reservation_strands_a_small_hole():
    kv = make_cache("max", total_tokens=40, max_context_tokens=16)
    kv.allocate(1, 3, 5)
    kv.allocate(2, 3, 5)
    assert [kv.address_range(r) for r in (1, 2)] == [(0, 16), (16, 32)]
    assert not kv.can_allocate(3, 1, 1)     # 8 slots free, none usable
    assert kv.free_unusable(1) == 8
    assert kv.usage() == KVUsage(total=40, real=6, internal=0, reserved=26, free=8,
                                 largest_free_run=8)
    with pytest.raises(MemoryError_, match="no hole of 16 slots"):
        kv.allocate(3, 1, 1)


def test_free_coalesces_with_both_neighbours():
    kv = make_cache()
    for rid, final in [(1, 10), (2, 20), (3, 8), (4, 12)]:
        kv.allocate(rid, 1, final)     # [0,10) [10,30) [30,38) [38,50), hole [50,64)
    kv.free(2)
    assert kv.holes() == [(10, 30), (50, 64)]
    kv.free(1)                         # merges right
    assert kv.holes() == [(0, 30), (50, 64)]
    kv.free(4)                         # merges right
    assert kv.holes() == [(0, 30), (38, 64)]
    kv.free(3)                         # merges both sides
    assert kv.holes() == [(0, 64)]
    kv.check_invariants()
    kv.assert_empty()


def test_free_merges_left_only_and_not_at_all():
    kv = make_cache()
    for rid, final in [(1, 10), (2, 10), (3, 10), (4, 34)]:
        kv.allocate(rid, 1, final)     # fills [0, 64)
    kv.free(2)
    assert kv.holes() == [(10, 20)]    # no neighbour hole
    kv.free(3)
    assert kv.holes() == [(10, 30)]    # merges left
    kv.check_invariants()


def test_growth_stays_within_the_reservation():
    kv = make_cache("pow2")
    kv.allocate(1, 8, 10)              # reservation 16
    assert kv.address_range(1) == (0, 16)
    assert kv.can_append(1, 8) and not kv.can_append(1, 9)
    kv.append(1, 8)
    assert kv.num_tokens(1) == 16
    assert not kv.can_append(1)
    with pytest.raises(MemoryError_, match="reservation 16"):
        kv.append(1)
    assert kv.usage() == KVUsage(total=64, real=16, internal=0, reserved=0, free=48,
                                 largest_free_run=48)


def test_rejection_reasons():
    kv = make_cache("max", total_tokens=64, max_context_tokens=100)
    assert kv.rejection_reason(5) == "reserves 100 token slots (reservation=max), KV cache has 64"
    assert kv.rejection_reason(101) == ("needs 101 tokens of context, contiguous KV reserves "
                                        "at most 100")
    exact = make_cache("exact", total_tokens=64, max_context_tokens=100)
    assert exact.rejection_reason(64) is None
    assert exact.rejection_reason(65) == "reserves 65 token slots (reservation=exact), KV cache has 64"
    with pytest.raises(MemoryError_, match="can never be placed"):
        exact.can_allocate(1, 1, 65)


def test_contiguous_never_swaps():
    kv = make_cache()
    kv.allocate(1, 1, 4)
    assert not kv.can_swap_out(1)
    assert not kv.is_swapped(1)
    with pytest.raises(MemoryError_, match="no swap space"):
        kv.swap_out(1)
    with pytest.raises(MemoryError_, match="never swaps"):
        kv.can_swap_in(1)


def test_misuse_raises():
    kv = make_cache()
    kv.allocate(1, 1, 4)
    with pytest.raises(MemoryError_, match="already holds KV"):
        kv.allocate(1, 1, 4)
    with pytest.raises(MemoryError_, match="num_tokens <= final_tokens"):
        kv.can_allocate(2, 5, 4)
    kv.free(1)
    with pytest.raises(MemoryError_, match="double free"):
        kv.free(1)
    for act in (kv.append, kv.can_append, kv.num_tokens, kv.address_range):
        with pytest.raises(MemoryError_, match="holds no KV"):
            act(1)


def test_assert_empty_and_check_invariants_catch_problems():
    kv = make_cache()
    kv.allocate(3, 1, 10)
    with pytest.raises(MemoryError_, match=r"sequences \[3\] still hold 10 slots"):
        kv.assert_empty()
    kv._hole_starts[0] = 11            # leaves slot 10 in nobody's hands
    with pytest.raises(MemoryError_, match="broken at slot 10"):
        kv.check_invariants()


@pytest.mark.parametrize("kwargs, field", [
    ({"total_tokens": 0}, "total_tokens"),
    ({"total_tokens": 8, "reservation": "fixed"}, "reservation"),
    ({"total_tokens": 8, "max_context_tokens": 0}, "max_context_tokens"),
])
def test_bad_construction_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ContiguousKVManager(**kwargs)
