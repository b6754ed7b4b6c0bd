"""The contract every KV memory manager keeps.

Managers are plain data structures (STYLE.md rule 2): they know sequences by
``request_id`` and token counts, never requests, clocks or policies. Each act
has a paired check (``can_allocate``/``allocate``, ``can_append``/``append``);
calling an act whose check is false raises ``MemoryError_`` -- a policy bug,
not a workload condition. ``try_allocate`` and ``append_all`` check and act
in one call, changing nothing when the check fails.

Token accounting: a sequence *holds* ``num_tokens`` tokens of KV (real
tokens). The manager may hold more slots than that for it: the unused tail of
its last block (paged, ``internal``) or a reservation for tokens not yet
generated (contiguous, ``reserved``).
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class MemoryError_(RuntimeError):
    """A manager invariant was violated (double free, act without check, leak)."""


class KVUsage(NamedTuple):
    """Snapshot of token slots, all in tokens. ``real + internal + reserved +
    free == total`` always holds."""

    total: int
    real: int          # slots holding real tokens' KV
    internal: int      # allocated to a sequence, unused, in its last block (paged)
    reserved: int      # reserved for a sequence's future tokens (contiguous)
    free: int
    largest_free_run: int  # longest run of contiguous free slots (== free for paged)
    shared: int = 0    # slots more that sequences would hold without sharing (paged: blocks x (refs - 1))

    @property
    def used(self) -> int:
        return self.real + self.internal + self.reserved


@runtime_checkable
class KVManager(Protocol):
    layout: str            # "paged" | "contiguous"
    total_tokens: int      # token slots on the GPU

    def rejection_reason(self, final_tokens: int) -> str | None:
        """Why a sequence that will reach ``final_tokens`` can never run here
        (even with the whole memory to itself), or None if it can."""
        ...

    def prefix_hit_tokens(self, num_tokens: int, segments) -> int:
        """Leading tokens of a ``num_tokens`` prefill whose KV is already
        cached (prefix caching; 0 where nothing is shared)."""
        ...

    def can_allocate(self, request_id: int, num_tokens: int, final_tokens: int, segments=None) -> bool: ...

    def allocate(self, request_id: int, num_tokens: int, final_tokens: int, segments=None) -> int:
        """Start holding ``num_tokens`` tokens for a new sequence that will
        grow to ``final_tokens``; ``segments`` (its content, prefix caching)
        lets it reuse a cached prefix. Returns the tokens reused."""
        ...

    def try_allocate(self, request_id: int, num_tokens: int, final_tokens: int, segments=None) -> int | None:
        """``allocate`` if ``can_allocate`` (bulk check + act, checked once),
        else None and nothing held."""
        ...

    def can_append(self, request_id: int, num_tokens: int = 1) -> bool: ...

    def append(self, request_id: int, num_tokens: int = 1) -> None:
        """Grow a held sequence by ``num_tokens`` tokens."""
        ...

    def append_all(self, request_ids: list[int], num_tokens: int) -> bool:
        """Grow every listed sequence by ``num_tokens`` if all of it fits at
        once, else change nothing and return False (bulk check + act)."""
        ...

    def free(self, request_id: int, complete: bool = True) -> None:
        """Release everything the sequence holds (``complete``: it finished;
        False when it is preempted)."""
        ...

    def num_tokens(self, request_id: int) -> int: ...

    def usage(self) -> KVUsage: ...

    def free_unusable(self, need_tokens: int) -> int:
        """Free slots that cannot serve a new sequence needing ``need_tokens``
        slots at once: external fragmentation (0 for paged)."""
        ...

    def check_invariants(self) -> None:
        """Raise ``MemoryError_`` if the structure is inconsistent."""
        ...

    def assert_empty(self) -> None:
        """Raise ``MemoryError_`` unless every slot is free (end of run)."""
        ...
