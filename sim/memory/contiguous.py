"""Contiguous KV cache (Orca, FasterTransformer): one address range per sequence.

The GPU cache is a linear address space of token slots ``[0, total_tokens)``.
``allocate`` reserves ONE contiguous range for a sequence, sized by the
reservation policy from its final length, and the range never grows:

* ``max``   -- ``max_context_tokens`` for everyone (Orca-Max);
* ``pow2``  -- the next power of two >= the final length, capped at
  ``max_context_tokens`` (Orca-Pow2);
* ``exact`` -- the final length itself, as if an oracle knew it (Orca-Oracle).

Placement is first-fit over the free holes in address order, so external
fragmentation (free slots in holes too small for the next reservation) arises
from the actual placement history rather than from an assumed factor.

Structure and invariants: ``_hole_starts``/``_hole_sizes`` are parallel lists
of the free holes sorted by start; holes have positive size, never overlap and
never touch (a freed range merges with its neighbours at once). Holes and the
sequences' ranges tile ``[0, total_tokens)`` exactly.

Each held sequence has a slot (``slots.SlotTable``) with its range's start
and size and its token count, so the bulk act ``append_slots`` grows a whole
array of sequences with a few numpy calls.

Complexity with H holes: first-fit ``can_allocate``/``allocate`` O(H);
``free`` finds its neighbours by ``bisect`` in O(log H) and edits the lists in
O(H) (a memmove); ``append`` and ``num_tokens`` are O(1).
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Literal

import numpy as np

from sim.memory.base import KVUsage, MemoryError_
from sim.memory.slots import SlotTable

if TYPE_CHECKING:
    from sim.memory.capacity import MemorySpec
    from sim.presets import ModelSpec

Reservation = Literal["max", "pow2", "exact"]
RESERVATIONS: tuple[Reservation, ...] = ("max", "pow2", "exact")


class ContiguousKVManager:
    layout = "contiguous"

    def __init__(self, total_tokens: int, reservation: Reservation = "max",
                 max_context_tokens: int = 4096) -> None:
        if total_tokens < 1:
            raise ValueError(f"total_tokens must be >= 1, got {total_tokens}")
        if reservation not in RESERVATIONS:
            raise ValueError(f"reservation must be one of {', '.join(RESERVATIONS)}; got {reservation!r}")
        if max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be >= 1, got {max_context_tokens}")
        self.total_tokens = total_tokens
        self.reservation = reservation
        self.max_context_tokens = max_context_tokens
        self._hole_starts: list[int] = [0]
        self._hole_sizes: list[int] = [total_tokens]
        self._seqs = SlotTable({"start": np.int64, "size": np.int64, "tokens": np.int64})
        self._real_slots = 0
        self._reserved_slots = 0                         # sum of range sizes

    @classmethod
    def from_spec(cls, spec: MemorySpec, model: ModelSpec, total_tokens: int) -> ContiguousKVManager:
        return cls(total_tokens, spec.reservation, model.max_context_tokens)

    # ---- queries -----------------------------------------------------
    def reservation_tokens(self, final_tokens: int) -> int:
        """Slots reserved for a sequence that will reach ``final_tokens``.
        Idempotent: ``reservation_tokens(reservation_tokens(n)) == reservation_tokens(n)``."""
        if self.reservation == "max":
            return self.max_context_tokens
        if self.reservation == "pow2":
            return min(1 << max(final_tokens - 1, 0).bit_length(), self.max_context_tokens)
        return final_tokens

    def slot(self, request_id: int) -> int:
        """The sequence's row in the bulk arrays (``append_slots``, ``growth_steps``)."""
        slot = self._seqs.slot_of.get(request_id)
        if slot is None:
            raise MemoryError_(f"request {request_id} holds no KV")
        return slot

    def address_range(self, request_id: int) -> tuple[int, int]:
        """``(start, end)`` of the sequence's reserved range, end exclusive."""
        start, size = self._range(request_id)
        return start, start + size

    def holes(self) -> list[tuple[int, int]]:
        """Free holes as ``(start, end)``, in address order."""
        return [(s, s + n) for s, n in zip(self._hole_starts, self._hole_sizes)]

    def num_tokens(self, request_id: int) -> int:
        return int(self._seqs.cols["tokens"][self.slot(request_id)])

    def is_swapped(self, request_id: int) -> bool:
        return False

    def rejection_reason(self, final_tokens: int) -> str | None:
        if final_tokens > self.max_context_tokens:
            return (f"needs {final_tokens} tokens of context, contiguous KV reserves at most "
                    f"{self.max_context_tokens}")
        need = self.reservation_tokens(final_tokens)
        if need > self.total_tokens:
            return (f"reserves {need} token slots (reservation={self.reservation}), "
                    f"KV cache has {self.total_tokens}")
        return None

    # ---- allocation --------------------------------------------------
    def prefix_hit_tokens(self, num_tokens: int, segments=None) -> int:
        """A reservation is one request's alone: nothing is shared."""
        return 0

    def can_allocate(self, request_id: int, num_tokens: int, final_tokens: int, segments=None) -> bool:
        """True when some hole fits the whole reservation (first fit)."""
        self._check_new(request_id, num_tokens, final_tokens)
        return self._first_fit(self.reservation_tokens(final_tokens)) is not None

    def allocate(self, request_id: int, num_tokens: int, final_tokens: int, segments=None) -> int:
        """Reserve for a new sequence; returns 0 (no prefix is ever reused)."""
        if self.try_allocate(request_id, num_tokens, final_tokens) is None:
            raise MemoryError_(f"allocate({request_id}): no hole of {self.reservation_tokens(final_tokens)} "
                               f"slots (largest {max(self._hole_sizes, default=0)})")
        return 0

    def try_allocate(self, request_id: int, num_tokens: int, final_tokens: int, segments=None) -> int | None:
        """``allocate`` if ``can_allocate``, checked once; None (and nothing
        held) if not."""
        self._check_new(request_id, num_tokens, final_tokens)
        size = self.reservation_tokens(final_tokens)
        i = self._first_fit(size)
        if i is None:
            return None
        start = self._hole_starts[i]
        if self._hole_sizes[i] == size:
            del self._hole_starts[i], self._hole_sizes[i]
        else:
            self._hole_starts[i] += size
            self._hole_sizes[i] -= size
        slot = self._seqs.add(request_id)
        cols = self._seqs.cols
        cols["start"][slot], cols["size"][slot], cols["tokens"][slot] = start, size, num_tokens
        self._real_slots += num_tokens
        self._reserved_slots += size
        return 0

    def can_append(self, request_id: int, num_tokens: int = 1) -> bool:
        """True while the sequence stays within its reservation (never grown)."""
        slot = self.slot(request_id)
        cols = self._seqs.cols
        return int(cols["tokens"][slot]) + num_tokens <= int(cols["size"][slot])

    def append(self, request_id: int, num_tokens: int = 1) -> None:
        slot = self.slot(request_id)
        cols = self._seqs.cols
        tokens, size = int(cols["tokens"][slot]), int(cols["size"][slot])
        if not tokens <= tokens + num_tokens <= size:
            raise MemoryError_(f"append({request_id}, {num_tokens}): {tokens} tokens held, reservation {size}")
        cols["tokens"][slot] = tokens + num_tokens
        self._real_slots += num_tokens

    def append_all(self, request_ids: list[int], num_tokens: int) -> bool:
        """Grow every listed sequence by ``num_tokens`` if each stays inside
        its reservation; otherwise change nothing and return False."""
        return self.append_slots(np.array([self.slot(r) for r in request_ids], np.int64), num_tokens)

    def append_slots(self, slots: np.ndarray, num_tokens: int) -> bool:
        """``append_all`` for sequences given by their slots (the simulator's hot path)."""
        cols = self._seqs.cols
        grown = cols["tokens"][slots] + num_tokens
        if (grown > cols["size"][slots]).any():
            return False
        cols["tokens"][slots] = grown
        self._real_slots += num_tokens * len(slots)
        return True

    def growth_steps(self, slots: np.ndarray, max_growth: int) -> int:
        """``max_growth`` if every sequence can grow that much inside its
        reservation, else 0."""
        cols = self._seqs.cols
        return max_growth if (cols["tokens"][slots] + max_growth <= cols["size"][slots]).all() else 0

    def free(self, request_id: int, complete: bool = True) -> None:
        """Return the range to the holes, merged with the holes it touches."""
        if request_id not in self._seqs:
            raise MemoryError_(f"free({request_id}): it holds no KV (double free?)")
        slot = self._seqs.release(request_id)
        cols = self._seqs.cols
        start, size = int(cols["start"][slot]), int(cols["size"][slot])
        self._real_slots -= int(cols["tokens"][slot])
        self._reserved_slots -= size
        starts, sizes = self._hole_starts, self._hole_sizes
        i = bisect_left(starts, start)
        merge_left = i > 0 and starts[i - 1] + sizes[i - 1] == start
        merge_right = i < len(starts) and starts[i] == start + size
        if merge_left and merge_right:
            sizes[i - 1] += size + sizes[i]
            del starts[i], sizes[i]
        elif merge_left:
            sizes[i - 1] += size
        elif merge_right:
            starts[i] = start
            sizes[i] += size
        else:
            starts.insert(i, start)
            sizes.insert(i, size)

    # ---- swap space: reservations never move to the CPU ----------------
    def can_swap_out(self, request_id: int) -> bool:
        self._range(request_id)
        return False

    def swap_out(self, request_id: int) -> list[tuple[int, int]]:
        raise MemoryError_(f"swap_out({request_id}): contiguous KV has no swap space")

    def can_swap_in(self, request_id: int) -> bool:
        raise MemoryError_(f"request {request_id} is not swapped out (contiguous KV never swaps)")

    def swap_in(self, request_id: int) -> list[tuple[int, int]]:
        raise MemoryError_(f"request {request_id} is not swapped out (contiguous KV never swaps)")

    # ---- accounting --------------------------------------------------
    def usage(self) -> KVUsage:
        return KVUsage(total=self.total_tokens, real=self._real_slots, internal=0,
                       reserved=self._reserved_slots - self._real_slots,
                       free=self.total_tokens - self._reserved_slots,
                       largest_free_run=max(self._hole_sizes, default=0))

    def free_unusable(self, need_tokens: int) -> int:
        """Free slots in holes smaller than the reservation a sequence of final
        length ``need_tokens`` would get (all of them past the context limit)."""
        if need_tokens <= 0:
            return 0
        if need_tokens > self.max_context_tokens:
            return self.total_tokens - self._reserved_slots
        need = self.reservation_tokens(need_tokens)
        return sum(n for n in self._hole_sizes if n < need)

    def check_invariants(self) -> None:
        """Raise ``MemoryError_`` on any inconsistency (O(H + sequences))."""
        starts, sizes = self._hole_starts, self._hole_sizes
        if len(starts) != len(sizes) or any(n <= 0 for n in sizes):
            raise MemoryError_("hole lists are inconsistent or hold an empty hole")
        for i in range(1, len(starts)):
            if starts[i - 1] + sizes[i - 1] >= starts[i]:
                raise MemoryError_(f"holes at {starts[i - 1]} and {starts[i]} overlap, touch or are unsorted")
        ranges = self._ranges()
        pieces = sorted([*zip(starts, sizes), *ranges.values()])
        end = 0
        for start, size in pieces:
            if start != end:
                raise MemoryError_(f"address space broken at slot {end} (next piece starts at {start})")
            end = start + size
        if end != self.total_tokens:
            raise MemoryError_(f"holes and ranges cover {end} of {self.total_tokens} slots")
        tokens = {rid: int(self._seqs.cols["tokens"][slot]) for rid, slot in self._seqs.slot_of.items()}
        for rid, held in tokens.items():
            if not 0 <= held <= ranges[rid][1]:
                raise MemoryError_(f"request {rid} holds {held} tokens in {ranges[rid][1]} slots")
        if self._real_slots != sum(tokens.values()):
            raise MemoryError_("real slot count drifted")
        if self._reserved_slots != sum(n for _, n in ranges.values()):
            raise MemoryError_("reserved slot count drifted")

    def assert_empty(self) -> None:
        if len(self._seqs) or self._hole_sizes != [self.total_tokens]:
            raise MemoryError_(f"KV leak: sequences {sorted(self._seqs.slot_of)} still hold "
                               f"{self._reserved_slots} slots")

    # ---- helpers -----------------------------------------------------
    def _range(self, request_id: int) -> tuple[int, int]:
        slot = self.slot(request_id)
        return int(self._seqs.cols["start"][slot]), int(self._seqs.cols["size"][slot])

    def _ranges(self) -> dict[int, tuple[int, int]]:
        cols = self._seqs.cols
        return {rid: (int(cols["start"][s]), int(cols["size"][s])) for rid, s in self._seqs.slot_of.items()}

    def _check_new(self, request_id: int, num_tokens: int, final_tokens: int) -> None:
        if request_id in self._seqs:
            raise MemoryError_(f"request {request_id} already holds KV")
        if not 0 <= num_tokens <= final_tokens or final_tokens < 1:
            raise MemoryError_(f"request {request_id}: need 0 <= num_tokens <= final_tokens and "
                               f"final_tokens >= 1, got {num_tokens} and {final_tokens}")
        if self.rejection_reason(final_tokens) is not None:
            raise MemoryError_(f"request {request_id} can never be placed: "
                               f"{self.rejection_reason(final_tokens)}")

    def _first_fit(self, size: int) -> int | None:
        """Index of the lowest-addressed hole of at least ``size`` slots."""
        if size > self.total_tokens - self._reserved_slots:
            return None
        for i, n in enumerate(self._hole_sizes):
            if n >= size:
                return i
        return None
