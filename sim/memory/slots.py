"""Per-sequence state of a KV manager as arrays, one row ("slot") a sequence.

A manager knows sequences by request id; its hot paths -- growing every
running sequence by a token, pricing how far they can grow -- work on whole
arrays of slots, so one scheduling decision costs a few numpy calls however
many sequences run. ``SlotTable`` hands out slots (lowest free first, reused
after ``release``) and keeps the columns a manager asks for, growing them by
doubling.

``BlockQueue`` is the paged manager's FIFO of free block ids without one
entry per block: ids never handed out yet form a range that precedes every
released id, and released ids queue in a ring buffer in release order.
"""
from __future__ import annotations

import numpy as np


class SlotTable:
    """Columns of per-sequence values, indexed by slot; ``id_of`` maps a
    request id to its slot."""

    def __init__(self, columns: dict[str, type], capacity: int = 64) -> None:
        self._dtypes = columns
        self.cols = {name: np.zeros(capacity, dtype) for name, dtype in columns.items()}
        self._columns = list(self.cols.values())
        self.capacity = capacity
        self.slot_of: dict[int, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))     # a stack: lowest slot on top

    def __contains__(self, request_id: int) -> bool:
        return request_id in self.slot_of

    def __len__(self) -> int:
        return len(self.slot_of)

    def add(self, request_id: int) -> int:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.slot_of[request_id] = slot
        for col in self._columns:
            col[slot] = 0
        return slot

    def release(self, request_id: int) -> int:
        slot = self.slot_of.pop(request_id)
        self._free.append(slot)
        return slot

    def _grow(self) -> None:
        old = self.capacity
        for name, col in self.cols.items():
            grown = np.zeros(2 * old, self._dtypes[name])
            grown[:old] = col
            self.cols[name] = grown
        self._columns = list(self.cols.values())
        self.capacity = 2 * old
        self._free = list(range(2 * old - 1, old - 1, -1))


class FreeCount:
    """Free blocks known by their number only (a paged manager before it
    needs block ids): ``n`` of them."""

    def __init__(self, num_blocks: int) -> None:
        self.n = num_blocks

    def __len__(self) -> int:
        return self.n


class BlockQueue:
    """FIFO of free block ids ``0 .. num_blocks - 1``. Invariant: the queue is
    the never-used ids ``virgin .. num_blocks - 1`` in increasing order,
    followed by the released ids in the order they were released; ``take``
    pops from the head, ``put`` appends to the tail. A fresh queue therefore
    hands out the lowest ids first, and the block handed out next is always
    the one free longest -- with memory for the released ids only."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.virgin = 0
        self._ring = np.empty(64, np.int64)
        self._head = 0
        self._size = 0

    def __len__(self) -> int:
        return self.num_blocks - self.virgin + self._size

    def take(self, count: int) -> np.ndarray:
        """The ``count`` ids at the head (the caller checked there are enough)."""
        fresh = min(count, self.num_blocks - self.virgin)
        rest = count - fresh
        if fresh:
            out = np.arange(self.virgin, self.virgin + fresh, dtype=np.int64)
            self.virgin += fresh
            if not rest:
                return out
        head, size = self._head, len(self._ring)
        if head + rest <= size:
            taken = self._ring[head: head + rest].copy()
        else:
            taken = np.concatenate([self._ring[head:], self._ring[: head + rest - size]])
        self._head = (head + rest) % size
        self._size -= rest
        return np.concatenate([out, taken]) if fresh else taken

    def put(self, blocks) -> None:
        blocks = np.asarray(blocks, dtype=np.int64)
        n = len(blocks)
        if self._size + n > len(self._ring):
            self._regrow(self._size + n)
        size = len(self._ring)
        tail = (self._head + self._size) % size
        if tail + n <= size:
            self._ring[tail: tail + n] = blocks
        else:
            split = size - tail
            self._ring[tail:] = blocks[:split]
            self._ring[: n - split] = blocks[split:]
        self._size += n

    def _regrow(self, need: int) -> None:
        size = len(self._ring)
        while size < need:
            size *= 2
        ring = np.empty(size, np.int64)
        ring[: self._size] = self.released()
        self._ring, self._head = ring, 0

    def released(self) -> np.ndarray:
        return self._ring[(self._head + np.arange(self._size)) % len(self._ring)]

    def ids(self) -> list[int]:
        """Every free id in queue order (O(free blocks): for checks and tests)."""
        return list(range(self.virgin, self.num_blocks)) + self.released().tolist()
