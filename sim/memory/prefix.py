"""Prefix caching for the paged layout: what a block holds, and which free
blocks to evict.

**Content.** A request may say what its tokens are as *segments*: a tuple of
``(content_id, length)`` pairs covering its prompt and then its output, in
token order. Two token positions hold the same token when they lie in
segments with the same id at the same offset. A trace's per-block hash ids
(Mooncake: one id per 512 prompt tokens; Qwen/Bailian: per 16) become
segments of that length, whatever the engine's ``block_size``; a synthetic
system prompt is one segment shared by its tenant's requests; a conversation
turn's prompt repeats the previous turn's segments, its answer's and a new
message's.

**Block keys.** Block ``k`` of a sequence (tokens ``k*B .. (k+1)*B - 1``) is
identified by a hash chained over the blocks before it (as vLLM v1 keys
blocks): ``key_k = hash((key_{k-1}, pieces_k))``, ``pieces_k`` the
``(content_id, start offset, end offset)`` pieces of its tokens. Two blocks
share a key exactly when their whole prefixes hold the same tokens. Only
full blocks are keyed.

**Eviction order** (``LRUFreeList``). Free blocks form one queue, oldest
release first; never-used blocks come before all released ones. A cached
free block stays findable until it reaches the head and is handed out again
(its key is then dropped: an eviction), or until a prefix hit takes it back
out of the queue. A sequence's blocks are released deepest first, so among
blocks freed at the same moment the one with the longest prefix is evicted
first. Invariant: the queue holds exactly the blocks with no reference, each
once, in that order.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable

import numpy as np

Segments = tuple[tuple[int, int], ...]


def block_keys(segments: Segments, num_blocks: int, block_size: int, start: int = 0,
               previous: int = 0) -> list[int]:
    """Keys of blocks ``start .. num_blocks - 1`` (all full), ``previous``
    being block ``start - 1``'s key (0 before the first block). A block
    inside one segment is keyed on ``(content id, start offset)``; one that
    straddles segments on all its pieces ``(content id, start, end)``: the
    same content always takes the same form."""
    keys: list[int] = []
    if start >= num_blocks:
        return keys
    seg, offset, pos = 0, 0, start * block_size
    key, end_all = previous, num_blocks * block_size
    while pos < end_all:
        while seg < len(segments) and pos >= offset + segments[seg][1]:   # past this segment
            offset += segments[seg][1]
            seg += 1
        if seg >= len(segments):
            raise ValueError(f"content covers {offset} tokens, block needs {pos + block_size}")
        cid, length = segments[seg]
        seg_end = offset + length
        inside = min(seg_end, end_all) - pos        # whole blocks of this segment from pos
        for a in range(pos - offset, pos - offset + inside - inside % block_size, block_size):
            key = hash((key, cid, a))
            keys.append(key)
        pos += inside - inside % block_size
        if pos >= end_all:
            break
        if pos + block_size <= seg_end or pos >= seg_end:
            continue                                # another whole block here, or the next segment
        pieces = []                                 # a block straddling segments
        end = pos + block_size
        while pos < end:
            if seg >= len(segments):
                raise ValueError(f"content covers {offset} tokens, block needs {end}")
            cid, length = segments[seg]
            take = min(end, offset + length)
            pieces.append((cid, pos - offset, take - offset))
            pos = take
            if pos == offset + length:
                offset += length
                seg += 1
        key = hash((key, tuple(pieces)))
        keys.append(key)
    return keys


def total_tokens(segments: Segments) -> int:
    return sum(length for _, length in segments)


class LRUFreeList:
    """``BlockQueue``'s interface (``take``, ``put``, ``len``, ``ids``) plus
    ``remove(block)`` for a block a prefix hit takes back.

    Released ids wait in a deque in queue order, and ``_free`` holds the set
    of them, so put and take move whole lists with C-level calls. A hit
    removes its block from the set only; the entry left behind in the deque
    is *stale* and counted in ``_stale``. Since a block has at most one live
    entry and a removal leaves exactly that one stale, a block's stale
    entries always come before its live one: ``take`` skips the first
    ``_stale[b]`` entries of ``b`` it meets."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.virgin = 0                                    # ids virgin.. never handed out
        self._queue: deque[int] = deque()                  # released ids, queue order, stale ones too
        self._free: set[int] = set()                       # the released ids that are free
        self._stale: dict[int, int] = {}                   # block -> its stale entries still queued

    def __len__(self) -> int:
        return self.num_blocks - self.virgin + len(self._free)

    def __contains__(self, block: int) -> bool:
        return block >= self.virgin or block in self._free

    def count_free(self, blocks) -> int:
        """How many of ``blocks`` (ids handed out before) are free."""
        return len(self._free.intersection(blocks))

    def take(self, count: int) -> np.ndarray:
        if count > len(self):
            raise ValueError(f"take({count}) from {len(self)} free blocks")
        fresh = min(count, self.num_blocks - self.virgin)
        out = list(range(self.virgin, self.virgin + fresh))
        self.virgin += fresh
        if count > fresh:
            popleft, stale = self._queue.popleft, self._stale
            taken = []
            while len(taken) < count - fresh:
                block = popleft()
                if stale and block in stale:
                    if stale[block] == 1:
                        del stale[block]
                    else:
                        stale[block] -= 1
                    continue
                taken.append(block)
            self._free.difference_update(taken)
            out += taken
        return np.array(out, np.int64)

    def put(self, blocks: Iterable[int]) -> None:
        blocks = blocks.tolist() if isinstance(blocks, np.ndarray) else [int(b) for b in blocks]
        self._queue.extend(blocks)
        self._free.update(blocks)

    def remove(self, block: int) -> None:
        """Take a particular free block out of the queue (a prefix hit)."""
        if block >= self.virgin:
            raise ValueError(f"block {block} was never used: it holds no cached prefix")
        self._free.remove(block)
        self._stale[block] = self._stale.get(block, 0) + 1

    def _released(self) -> list[int]:
        """The free released ids in queue order (O(queue): checks and peeks)."""
        stale, out = dict(self._stale), []
        for block in self._queue:
            if stale.get(block):
                stale[block] -= 1
            else:
                out.append(block)
        return out

    def head(self, count: int) -> list[int]:
        """The next ``count`` blocks ``take`` would hand out, without taking them."""
        fresh = list(range(self.virgin, min(self.num_blocks, self.virgin + count)))
        return fresh + self._released()[: count - len(fresh)]

    def ids(self) -> list[int]:
        return list(range(self.virgin, self.num_blocks)) + self._released()
