"""Random operation sequences on both managers: after every operation the
structure is consistent, ``free + used == total``, a refused act changes
nothing, a double free is caught, and freeing everything leaves no leak."""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sim.memory import ContiguousKVManager, MemoryError_, PagedKVManager

SETTINGS = settings(max_examples=100, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
PICK = st.integers(min_value=0, max_value=10**6)   # index into the live sequences


class _ManagerMachine(RuleBasedStateMachine):
    """Shared bookkeeping: ``tokens`` mirrors what every live sequence holds."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = None
        self.tokens: dict[int, int] = {}
        self.freed: set[int] = set()
        self.next_id = 0

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _pick(self, index: int, swapped: bool | None = False) -> int | None:
        ids = sorted(r for r in self.tokens if swapped is None or self.kv.is_swapped(r) == swapped)
        return ids[index % len(ids)] if ids else None

    def _refused(self, act, *args) -> None:
        """A refused act raises and leaves the manager as it was."""
        before = self._snapshot()
        with pytest.raises(MemoryError_):
            act(*args)
        assert self._snapshot() == before

    def _snapshot(self):
        return self.kv.usage(), {r: self.kv.num_tokens(r) for r in self.tokens}

    @rule(index=PICK, num_tokens=st.integers(0, 20))
    def append(self, index, num_tokens):
        rid = self._pick(index)
        if rid is None:
            return
        if self.kv.can_append(rid, num_tokens):
            self.kv.append(rid, num_tokens)
            self.tokens[rid] += num_tokens
        else:
            self._refused(self.kv.append, rid, num_tokens)

    @rule(num_tokens=st.integers(0, 12))
    def append_all(self, num_tokens):
        """The bulk form grows every GPU-resident sequence or none of them,
        and agrees with checking each growth on its own would-be total."""
        rids = sorted(r for r in self.tokens if not self.kv.is_swapped(r))
        before = self._snapshot()
        if self.kv.append_all(rids, num_tokens):
            for rid in rids:
                self.tokens[rid] += num_tokens
        else:
            assert self._snapshot() == before
            if self.kv.layout == "paged":   # each may fit alone, but not all together
                need = sum(self.kv.blocks_needed_to_grow(r, num_tokens) for r in rids)
                assert need > self.kv.num_free_blocks
            else:
                assert not all(self.kv.can_append(r, num_tokens) for r in rids)

    @rule(num_tokens=st.integers(0, 30), extra_tokens=st.integers(0, 15))
    def try_allocate(self, num_tokens, extra_tokens):
        """Check and act in one call: it allocates exactly when
        ``can_allocate`` says so, and holds nothing when it refuses."""
        rid, final = self._new_id(), max(num_tokens + extra_tokens, 1)
        if self.kv.rejection_reason(final) is not None:
            return
        fits = self.kv.can_allocate(rid, num_tokens, final)
        before = self._snapshot()
        reused = self.kv.try_allocate(rid, num_tokens, final)
        assert (reused is not None) == fits
        if fits:
            assert reused == 0              # no prefix caching here
            self.tokens[rid] = num_tokens
        else:
            assert self._snapshot() == before
            self._refused(self.kv.num_tokens, rid)      # it holds no KV

    @rule(index=PICK)
    def free(self, index):
        rid = self._pick(index, swapped=None)
        if rid is None:
            return
        self.kv.free(rid)
        del self.tokens[rid]
        self.freed.add(rid)

    @rule(index=PICK)
    def double_free(self, index):
        if self.freed:
            self._refused(self.kv.free, sorted(self.freed)[index % len(self.freed)])

    @rule(index=PICK)
    def swap_out(self, index):
        rid = self._pick(index)
        if rid is None:
            return
        if self.kv.can_swap_out(rid):
            gpu = self.kv.block_table(rid)
            moves = self.kv.swap_out(rid)
            assert [g for g, _ in moves] == gpu and [c for _, c in moves] == self.kv.cpu_block_table(rid)
            assert self.kv.is_swapped(rid)
        else:
            self._refused(self.kv.swap_out, rid)

    @invariant()
    def consistent(self):
        if self.kv is None:
            return
        self.kv.check_invariants()
        u = self.kv.usage()
        assert u.real + u.internal + u.reserved + u.free == u.total == self.kv.total_tokens
        assert min(u.real, u.internal, u.reserved, u.free) >= 0
        assert u.largest_free_run <= u.free
        assert {r: self.kv.num_tokens(r) for r in self.tokens} == self.tokens

    def teardown(self):
        if self.kv is None:
            return
        for rid in list(self.tokens):
            self.kv.free(rid)
        self.kv.check_invariants()
        self.kv.assert_empty()


class PagedMachine(_ManagerMachine):
    @initialize(num_blocks=st.integers(1, 12), block_size=st.sampled_from([1, 2, 4, 16]),
                watermark_frac=st.sampled_from([0.0, 0.1, 0.3]), num_cpu_blocks=st.integers(0, 6))
    def build(self, num_blocks, block_size, watermark_frac, num_cpu_blocks):
        self.kv = PagedKVManager(num_blocks, block_size, watermark_frac, num_cpu_blocks)

    @rule(num_tokens=st.integers(0, 60), extra_tokens=st.integers(0, 20))
    def allocate(self, num_tokens, extra_tokens):
        rid, final = self._new_id(), num_tokens + extra_tokens
        if self.kv.can_allocate(rid, num_tokens, final):
            self.kv.allocate(rid, num_tokens, final)
            self.tokens[rid] = num_tokens
        else:
            self._refused(self.kv.allocate, rid, num_tokens, final)

    @rule(index=PICK)
    def fork(self, index):
        parent = self._pick(index)
        if parent is not None:
            child = self._new_id()
            self.kv.fork(parent, child)
            self.tokens[child] = self.tokens[parent]
            assert self.kv.block_table(child) == self.kv.block_table(parent)

    @rule(index=PICK)
    def swap_in(self, index):
        rid = self._pick(index, swapped=True)
        if rid is None:
            return
        if self.kv.can_swap_in(rid):
            cpu = self.kv.cpu_block_table(rid)
            moves = self.kv.swap_in(rid)
            assert [c for c, _ in moves] == cpu and [g for _, g in moves] == self.kv.block_table(rid)
            assert not self.kv.is_swapped(rid)
        else:
            self._refused(self.kv.swap_in, rid)

    @invariant()
    def free_blocks_match_free_slots(self):
        if self.kv is not None:
            assert self.kv.usage().free == self.kv.num_free_blocks * self.kv.block_size


class _LazyAndEager:
    """A lazy paged manager (block ids only once needed) and an eager one fed
    the same calls: every answer that names no block id must be the same,
    and so must a refusal. Calls return the lazy manager's answer."""

    NAMES_IDS = {"block_table", "cpu_block_table", "swap_out", "swap_in"}

    def __init__(self, lazy: PagedKVManager, eager: PagedKVManager) -> None:
        self.lazy, self.eager = lazy, eager

    def __getattr__(self, name):
        mine, theirs = getattr(self.lazy, name), getattr(self.eager, name)
        if not callable(mine):
            assert mine == theirs, name
            return mine

        def call(*args):
            try:
                answer = mine(*args)
            except MemoryError_:
                with pytest.raises(MemoryError_):
                    theirs(*args)
                raise
            other = theirs(*args)
            if name not in self.NAMES_IDS:
                assert answer == other, name
            return answer
        return call


class LazyPagedMachine(PagedMachine):
    """The paged rules on a lazy manager checked call by call against an
    eager one; ``fork``, ``swap_out`` and ``block_table`` make it take ids
    part-way through a run."""

    @initialize(num_blocks=st.integers(1, 12), block_size=st.sampled_from([1, 2, 3, 4, 16]),
                watermark_frac=st.sampled_from([0.0, 0.1, 0.3]), num_cpu_blocks=st.integers(0, 6))
    def build(self, num_blocks, block_size, watermark_frac, num_cpu_blocks):
        self.kv = _LazyAndEager(
            PagedKVManager(num_blocks, block_size, watermark_frac, num_cpu_blocks, lazy_ids=True),
            PagedKVManager(num_blocks, block_size, watermark_frac, num_cpu_blocks))

    @rule(index=PICK, now=st.integers(0, 7))
    def fork(self, index, now):
        if not now:               # seldom: it ends the counting
            super().fork(index)

    @rule(index=PICK, now=st.integers(0, 7))
    def swap_out(self, index, now):
        if not now:
            super().swap_out(index)

    @rule(max_growth=st.integers(0, 70))
    def growth_steps(self, max_growth):
        rids = sorted(r for r in self.tokens if not self.kv.is_swapped(r))
        slots = np.array([self.kv.slot(r) for r in rids], np.int64)
        self.kv.growth_steps(slots, max_growth)
        bs = self.kv.block_size
        for some in (rids, rids[::2]):              # every GPU-resident sequence, and some of them
            fill = [0] * bs
            for r in some:
                fill[(self.tokens[r] - 1) % bs] += 1
            assert self.kv.fill_counts(np.array([self.kv.slot(r) for r in some], np.int64)) == fill


class ContiguousMachine(_ManagerMachine):
    @initialize(total_tokens=st.integers(1, 80), reservation=st.sampled_from(["max", "pow2", "exact"]),
                max_context_tokens=st.integers(1, 40))
    def build(self, total_tokens, reservation, max_context_tokens):
        self.kv = ContiguousKVManager(total_tokens, reservation, max_context_tokens)

    @rule(num_tokens=st.integers(0, 30), extra_tokens=st.integers(0, 15))
    def allocate(self, num_tokens, extra_tokens):
        rid, final = self._new_id(), max(num_tokens + extra_tokens, 1)
        if self.kv.rejection_reason(final) is not None:
            self._refused(self.kv.can_allocate, rid, num_tokens, final)
        elif self.kv.can_allocate(rid, num_tokens, final):
            self.kv.allocate(rid, num_tokens, final)
            self.tokens[rid] = num_tokens
            start, end = self.kv.address_range(rid)
            assert end - start == self.kv.reservation_tokens(final) >= final
        else:
            assert self.kv.free_unusable(final) == self.kv.usage().free
            self._refused(self.kv.allocate, rid, num_tokens, final)

    @invariant()
    def holes_are_the_free_slots(self):
        if self.kv is not None:
            holes = self.kv.holes()
            assert sum(end - start for start, end in holes) == self.kv.usage().free


TestPagedProperties = PagedMachine.TestCase
TestPagedProperties.settings = SETTINGS
TestLazyPagedProperties = LazyPagedMachine.TestCase
TestLazyPagedProperties.settings = SETTINGS
TestContiguousProperties = ContiguousMachine.TestCase
TestContiguousProperties.settings = SETTINGS
