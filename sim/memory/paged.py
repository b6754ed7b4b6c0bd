"""Paged KV cache (vLLM): fixed-size blocks taken on demand as a sequence grows.

Structure and invariants:

* ``_free`` is a FIFO queue of free GPU block ids (``slots.BlockQueue``).
  Initially it holds ``0, 1, ..., num_blocks - 1``; blocks are taken from the
  head (lowest id first on a fresh cache) and a released block is appended to
  the tail, the blocks of one sequence in block-table order. So the block
  handed out next is always the one that has been free longest. Ids never
  handed out are not stored one by one, so a pool of any size costs memory
  only for the blocks in use.
* Every held sequence has a slot (``slots.SlotTable``) with its token count
  and, on the GPU, its block table: row ``slot`` of ``_table``, its first
  ``blocks`` entries, in token order, exactly ``ceil(tokens / block_size)``
  of them. A swapped-out sequence has no GPU blocks and a table in
  ``_cpu_tables`` instead (the CPU pool has its own FIFO queue).
* A block's reference count is the number of block tables that contain it:
  1 for a block held by one table, ``_shared[b]`` (>= 2) for one that
  ``fork`` shares, 0 exactly when it is in ``_free``. A shared *partially
  filled* last block is copied before either sequence writes into it
  (copy-on-write), so every sharer of a block agrees on how many of its
  slots hold tokens.
* ``_real_slots`` is the number of GPU slots holding a token, each physical
  slot counted once however many tables share it.

**Block ids only where they are seen** (``lazy_ids=True``, what a
simulation builds). Without prefix caching no simulated figure depends on
which block a sequence holds, only on how many. So a lazy manager starts by
counting: ``_free`` is a ``FreeCount``, a sequence's blocks are
``ceil(tokens / block_size)`` and its token count is ``_tok[slot] +
_clock``. When every held sequence grows together (a decode step or run of
the whole running set) only the clock moves, and the new blocks are counted
from ``_by_residue`` (held sequences by ``_tok % block_size``: a sequence
takes a block on the step on which its token count is a multiple of the
block size) -- a few integer operations however many sequences run. The
first call that needs ids (``block_table``, ``ref_count``, ``fork``,
``swap_out``) gives every held sequence its blocks, lowest ids first in slot
order, and the manager keeps ids from then on, exactly as an eager one.

Every check/act pair keeps ``can_x() is True`` => ``x()`` succeeds. The bulk
act ``append_slots`` grows a whole array of sequences with a few numpy calls;
unless a shared block is some sequence's partially filled last block, it
never loops over sequences.

**Prefix caching** (``prefix_caching=True``, ``sim/memory/prefix.py``): a
sequence allocated with its content (``segments``) reuses every cached full
block of its longest cached prefix (ref counts + 1; a cached block that was
free leaves the free queue) and takes new blocks for the rest. Its full
blocks get their keys when its prefill is allocated (the prompt) and when it
is freed (the output), so they outlive it as cached free blocks until
evicted. Then the free queue is an ``LRUFreeList`` and a released
sequence's blocks enter it deepest first. Extra invariants: ``_key_of`` and
``_block_of`` are inverse maps; a keyed block is owned or free; handing a
keyed free block out again drops its key (an eviction).

**Keys no one can look up** (``expect_content``). A simulation knows every
request's content up front. A block whose prefix holds content that no
other request has can only be found again by its own request, after a
recompute preemption; so, once told which content ids several requests
share, the manager keys such blocks *virtually* (a bit in ``_virtual``,
counted in the statistics and evicted like a key, but in no map and with no
hash computed) and turns them into real keys when their sequence is
preempted (its content then joins ``_revisit``). Hits, evictions and every
statistic are the same as keying everything (tested against it).
"""
from __future__ import annotations

import math
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from sim.memory.base import KVUsage, MemoryError_
from sim.memory.prefix import LRUFreeList, Segments, block_keys, total_tokens
from sim.memory.slots import BlockQueue, FreeCount, SlotTable

if TYPE_CHECKING:
    from sim.memory.capacity import MemorySpec
    from sim.presets import ModelSpec


ALL_BLOCKS = 1 << 62
"""``_settled_blocks`` / ``_shared_blocks`` when nothing limits them: every block."""


_usage = partial(tuple.__new__, KVUsage)
"""``KVUsage`` of its seven fields in order: the tuple its own ``__new__``
builds, without that Python function's call (``usage`` runs every step)."""


def _ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)``; the hot paths write ``-(-a // b)`` inline (a call costs
    more than the division)."""
    return -(-a // b)


class PagedKVManager:
    layout = "paged"

    def __init__(self, num_blocks: int, block_size: int = 16, watermark_frac: float = 0.01,
                 num_cpu_blocks: int = 0, prefix_caching: bool = False, lazy_ids: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not 0.0 <= watermark_frac < 1.0:
            raise ValueError(f"watermark_frac must be in [0, 1), got {watermark_frac}")
        if num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be >= 0, got {num_cpu_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_cpu_blocks = num_cpu_blocks
        self.total_tokens = num_blocks * block_size
        self._low_bits = block_size - 1 if block_size & (block_size - 1) == 0 else 0   # x % bs == x & this
        self.watermark_blocks = math.ceil(round(watermark_frac * num_blocks, 9))
        self.prefix_caching = prefix_caching
        self._ids = prefix_caching or not lazy_ids       # block ids kept (see the module doc)
        self._free = LRUFreeList(num_blocks) if prefix_caching else \
            BlockQueue(num_blocks) if self._ids else FreeCount(num_blocks)
        self._clock = 0                            # tokens every held sequence gained together (lazy)
        self._by_residue = [0] * block_size        # lazy: held sequences by _tok % block_size
        self._key_of: dict[int, int] = {}          # block -> key (prefix caching)
        self._block_of: dict[int, int] = {}        # key -> block
        self._multi: set[int] | None = None        # content ids several requests hold (None: unknown)
        self._virtual = np.zeros(0, bool)          # block -> keyed virtually (see the module doc)
        self._num_virtual = 0
        self._revisit: set[Segments] = set()       # contents of preempted sequences: every block keyed
        self._content: dict[int, Segments] = {}    # request id -> segments
        self._keys: dict[int, list[int]] = {}      # request id -> keys of its full blocks so far
        self._queried: dict[Segments, list[int]] = {}   # keys of waiting requests' content, until allocated
        self._forks = 0                            # fork() calls: only they share a partially filled block
        self.block_copies: list[tuple[int, int]] = []   # copy-on-write copies not yet handed to a batch
        self.on_fork = None                        # a real executor's hook: on_fork(parent, child)
        self._version = 0                          # bumped whenever a key or an open answer changes
        self._open: set[int] = set()               # answers (content ids) of sequences not finished yet
        self._limit: dict[int, int] = {}           # request id -> its leading blocks that may be shared
        self._last_hits: tuple = (None, 0, -1, ([], []))   # (segments, tokens, version, result) memo
        self.prefix_stats = {"queried_tokens": 0, "hit_tokens": 0, "queried_blocks": 0, "hit_blocks": 0,
                             "evictions": 0}
        self._shared: dict[int, int] = {}
        self._seqs = SlotTable({"tokens": np.int64, "blocks": np.int64})
        self._tok, self._nblk = self._seqs.cols["tokens"], self._seqs.cols["blocks"]
        self._table = np.zeros((self._seqs.capacity, 16), np.int64)
        self._real_slots = 0
        self._cpu_free = BlockQueue(num_cpu_blocks)
        self._cpu_tables: dict[int, list[int]] = {}

    @classmethod
    def from_spec(cls, spec: MemorySpec, model: ModelSpec, total_tokens: int) -> PagedKVManager:
        """Build from a config: ``total_tokens`` GPU slots, ``spec.swap_space_gb``
        (10**9 bytes) of CPU blocks."""
        num_blocks = total_tokens // spec.block_size
        if num_blocks < 1:
            raise ValueError(f"memory: a KV cache of {total_tokens} tokens holds no block of "
                             f"block_size={spec.block_size} tokens")
        block_bytes = spec.block_size * model.kv_bytes_per_token
        num_cpu_blocks = int(spec.swap_space_gb * 10**9) // block_bytes
        return cls(num_blocks, spec.block_size, spec.watermark, num_cpu_blocks, spec.prefix_caching,
                   lazy_ids=True)

    # ---- queries -----------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_free_cpu_blocks(self) -> int:
        return len(self._cpu_free)

    def slot(self, request_id: int) -> int:
        """The sequence's row in the bulk arrays (``append_slots``, ``growth_steps``)."""
        slot = self._seqs.slot_of.get(request_id)
        if slot is None:
            raise MemoryError_(f"request {request_id} holds no KV")
        return slot

    def block_table(self, request_id: int) -> list[int]:
        """GPU block ids of a sequence, in token order (a copy)."""
        self._need_ids()
        slot = self._gpu_slot(request_id)
        return self._table[slot, : self._nblk[slot]].tolist()

    def cpu_block_table(self, request_id: int) -> list[int]:
        """CPU block ids of a swapped-out sequence, in token order (a copy)."""
        if request_id not in self._cpu_tables:
            raise MemoryError_(f"request {request_id} is not swapped out")
        return list(self._cpu_tables[request_id])

    def ref_count(self, block_id: int) -> int:
        self._need_ids()
        if block_id in self._shared:
            return self._shared[block_id]
        return int(self._owned_counts().get(block_id, 0))

    def num_tokens(self, request_id: int) -> int:
        return self._tokens(self.slot(request_id))

    def is_swapped(self, request_id: int) -> bool:
        return request_id in self._cpu_tables

    def rejection_reason(self, final_tokens: int) -> str | None:
        """A sequence is rejected when its final length needs more blocks than
        an empty cache admits: all blocks minus the admission watermark (a
        sequence preempted by recompute is re-admitted with up to its whole
        context, so anything larger could wait forever)."""
        need = -(-final_tokens // self.block_size)
        admissible = self.num_blocks - self.watermark_blocks
        if need <= admissible:
            return None
        reason = f"needs {need} blocks of {self.block_size} tokens, KV cache has {self.num_blocks}"
        if self.watermark_blocks:
            reason += f" of which {self.watermark_blocks} are kept free at admission"
        return reason

    def blocks_needed_to_grow(self, request_id: int, num_tokens: int) -> int:
        """New GPU blocks that ``append(request_id, num_tokens)`` would take
        (a copied shared last block included)."""
        slot = self._gpu_slot(request_id)
        if num_tokens < 0:
            raise MemoryError_(f"request {request_id}: cannot grow by {num_tokens} tokens")
        if num_tokens == 0:
            return 0
        if not self._ids:
            tokens = self._tokens(slot)
            return _ceil_div(tokens + num_tokens, self.block_size) - _ceil_div(tokens, self.block_size)
        tokens, blocks = int(self._tok[slot]), int(self._nblk[slot])
        need = _ceil_div(tokens + num_tokens, self.block_size) - blocks
        if tokens % self.block_size and int(self._table[slot, blocks - 1]) in self._shared:
            need += 1   # copy-on-write of the shared, partially filled last block
        return need

    # ---- allocation --------------------------------------------------
    def prefix_hit_tokens(self, num_tokens: int, segments: Segments | None) -> int:
        """Leading tokens of a ``num_tokens`` prefill already cached: whole
        blocks, and never all of it (the last token is computed for its logits)."""
        return len(self._hits(num_tokens, segments)[0]) * self.block_size

    def _hits(self, num_tokens: int, segments: Segments | None) -> tuple[list[int], list[int]]:
        """(cached blocks of the longest cached prefix, keys of the full
        blocks that can be looked up: all of them, or those of content other
        requests hold too, ``_shared_blocks``)."""
        if not self.prefix_caching or segments is None or num_tokens < 1:
            return [], []
        last = self._last_hits      # admission asks three times in a row, unchanged in between
        if last[0] is segments and last[1] == num_tokens and last[2] == self._version:
            return last[3]
        upto = min(num_tokens // self.block_size, self._shared_blocks(segments))
        keys = self._queried.get(segments)
        if keys is None or len(keys) < upto:
            keys = self._queried[segments] = block_keys(segments, upto, self.block_size)
        keys = keys[:upto]
        hits = []
        for key in keys[: min((num_tokens - 1) // self.block_size, self._settled_blocks(segments))]:
            block = self._block_of.get(key)
            if block is None:
                break
            hits.append(block)
        self._last_hits = (segments, num_tokens, self._version, (hits, keys))
        return hits, keys

    def _settled_blocks(self, segments: Segments) -> int:
        """Leading full blocks of a prompt whose content is settled: up to the
        first block that repeats an answer still being generated (an open-loop
        conversation turn can arrive before the answer it repeats is done; its
        copy of that answer is not the answer, so nothing from there on --
        its KV included -- may be shared)."""
        offset = 0
        for cid, length in segments[:-1]:          # the prompt: the last segment is the request's own answer
            if cid in self._open:
                return offset // self.block_size
            offset += length
        return ALL_BLOCKS                          # all of it (and the answer, once done)

    def can_allocate(self, request_id: int, num_tokens: int, final_tokens: int,
                     segments: Segments | None = None) -> bool:
        """Admission keeps ``watermark_blocks`` blocks free for running
        sequences (a cached prefix block that is free counts as taken)."""
        self._check_new(request_id, num_tokens, final_tokens)
        return self._fits_new(num_tokens, self._hits(num_tokens, segments)[0])

    def _fits_new(self, num_tokens: int, hits: list[int]) -> bool:
        """Whether a new sequence of ``num_tokens`` whose prefix hits ``hits``
        leaves the watermark free."""
        revived = self._free.count_free(hits) if hits else 0
        need = -(-num_tokens // self.block_size) - len(hits) + revived
        return len(self._free) - need >= self.watermark_blocks

    def allocate(self, request_id: int, num_tokens: int, final_tokens: int,
                 segments: Segments | None = None) -> int:
        """Hold ``num_tokens`` tokens for a new sequence; with prefix caching
        and ``segments``, reuse the cached prefix. Returns the reused tokens."""
        reused = self.try_allocate(request_id, num_tokens, final_tokens, segments)
        if reused is None:
            raise MemoryError_(f"allocate({request_id}, {num_tokens}) without room: "
                               f"{len(self._free)} free blocks, watermark {self.watermark_blocks}")
        return reused

    def try_allocate(self, request_id: int, num_tokens: int, final_tokens: int,
                     segments: Segments | None = None) -> int | None:
        """``allocate`` if ``can_allocate``, checked once; None (and nothing
        held) if not."""
        self._check_new(request_id, num_tokens, final_tokens)
        hits, keys = self._hits(num_tokens, segments)
        if not self._fits_new(num_tokens, hits):
            return None
        bs = self.block_size
        for block in hits:                   # before taking new blocks: a hit is never evicted now
            if block in self._free:
                self._free.remove(block)
                self._real_slots += bs
            else:
                self._shared[block] = self._shared.get(block, 1) + 1
        slot = self._add_seq(request_id)
        count = -(-num_tokens // bs)
        if not self._ids:
            self._free.n -= count
            self._tok[slot] = base = num_tokens - self._clock
            self._by_residue[base % bs] += 1
            self._real_slots += num_tokens
            return 0
        new = self._take(count - len(hits))
        self._set_blocks(slot, np.concatenate([np.array(hits, np.int64), new]) if hits else new)
        self._tok[slot] = num_tokens
        self._real_slots += num_tokens - len(hits) * bs
        if self.prefix_caching and segments is not None:
            self._queried.pop(segments, None)
            self._content[request_id], self._keys[request_id] = segments, keys
            limit = self._limit[request_id] = self._settled_blocks(segments)
            real = min(limit, len(keys))
            self._register(slot, keys[:real], len(hits))
            self._key_virtually(slot, max(real, len(hits)), min(limit, num_tokens // bs))
            self._open.add(segments[-1][0])
            self._version += 1
            st = self.prefix_stats
            st["queried_tokens"] += num_tokens
            st["hit_tokens"] += len(hits) * bs
            st["queried_blocks"] += num_tokens // bs
            st["hit_blocks"] += len(hits)
        return len(hits) * bs

    def can_append(self, request_id: int, num_tokens: int = 1) -> bool:
        """Growth may use the watermark blocks."""
        slot = self._gpu_slot(request_id)
        if not self._ids:
            return self.blocks_needed_to_grow(request_id, num_tokens) <= len(self._free)
        tokens, blocks = int(self._tok[slot]), int(self._nblk[slot])
        if 0 < num_tokens <= blocks * self.block_size - tokens \
                and int(self._table[slot, blocks - 1]) not in self._shared:
            return True    # fast path: fits in this table's own last block
        return self.blocks_needed_to_grow(request_id, num_tokens) <= len(self._free)

    def append(self, request_id: int, num_tokens: int = 1) -> None:
        slot = self._gpu_slot(request_id)
        if not self._ids:
            if not self._count_growth(np.array([slot], np.int64), num_tokens):
                raise MemoryError_(f"append({request_id}, {num_tokens}) needs "
                                   f"{self.blocks_needed_to_grow(request_id, num_tokens)} blocks, "
                                   f"{len(self._free)} free")
            return
        tokens, blocks = int(self._tok[slot]), int(self._nblk[slot])
        bs = self.block_size
        if 0 < num_tokens <= blocks * bs - tokens and int(self._table[slot, blocks - 1]) not in self._shared:
            self._tok[slot] = tokens + num_tokens   # fast path: no new block
            self._real_slots += num_tokens
            return
        need = self.blocks_needed_to_grow(request_id, num_tokens)
        if need > len(self._free):
            raise MemoryError_(f"append({request_id}, {num_tokens}) needs {need} "
                               f"blocks, {len(self._free)} free")
        if num_tokens and tokens % bs and int(self._table[slot, blocks - 1]) in self._shared:
            self._copy_last_block(slot, tokens % bs)
        grow = _ceil_div(tokens + num_tokens, bs) - blocks
        self._set_blocks(slot, np.concatenate([self._table[slot, :blocks], self._take(grow)]))
        self._tok[slot] = tokens + num_tokens
        self._real_slots += num_tokens

    def append_all(self, request_ids: list[int], num_tokens: int) -> bool:
        """Grow every listed sequence by ``num_tokens`` if all of that growth
        fits at once; otherwise change nothing and return False."""
        return self.append_slots(np.array([self._gpu_slot(r) for r in request_ids], np.int64), num_tokens)

    def append_slots(self, slots: np.ndarray, num_tokens: int) -> bool:
        """``append_all`` for sequences given by their slots (GPU-resident):
        the bulk form of ``can_append``/``append`` for the simulator's hot
        path. Blocks go to the sequences in the order ``slots`` lists them."""
        if num_tokens == 0 or len(slots) == 0:
            return True
        if not self._ids:
            n, free = len(slots), self._free
            if n != len(self._seqs.slot_of):
                return self._count_growth(slots, num_tokens)
            # Every held sequence (the slots are distinct): only the clock moves. Step j takes
            # a block for those whose tokens % bs == (-clock - j) % bs: residues top, top - 1,
            # ..., around the circle.
            bs, top = self.block_size, (-self._clock) % self.block_size
            if num_tokens == 1:                    # a decode step
                need = self._by_residue[top]
            else:
                full, rest = divmod(num_tokens, bs)
                need = full * n
                if rest:
                    low, counts = top - rest + 1, self._by_residue
                    need += sum(counts[low: top + 1]) if low >= 0 else sum(counts[: top + 1]) + sum(counts[low:])
            if need > free.n:
                return False
            free.n -= need
            self._clock += num_tokens
            self._real_slots += num_tokens * n
            return True
        if self._forks and self._shared and self._any_shared_partial_last(slots):
            return self._append_slots_shared(slots, num_tokens)
        bs = self.block_size
        tokens = self._tok[slots]
        if num_tokens <= bs:      # a decode step or a short run: at most one new block each
            if num_tokens == 1 and self._low_bits:              # a decode step: a full last block grows
                grow = (tokens & self._low_bits) == 0
            else:                                               # the last block has fewer free slots
                grow = (tokens - 1) % bs >= bs - num_tokens
            rows = slots[grow]
            count = len(rows)
            if count > len(self._free):
                return False
            if count:
                cols = self._nblk[rows]
                blocks = self._take(count)
                try:
                    self._table[rows, cols] = blocks
                except IndexError:                             # a sequence longer than any before
                    self._ensure_width(int(cols.max()) + 1)
                    self._table[rows, cols] = blocks
                self._nblk[rows] = cols + 1
            self._tok[slots] = tokens + num_tokens
            self._real_slots += num_tokens * len(slots)
            return True
        have = self._nblk[slots]
        need = (tokens + num_tokens + bs - 1) // bs - have
        total = int(need.sum())
        if total > len(self._free):
            return False
        if total:
            grow = need > 0
            counts = need[grow]
            rows = np.repeat(slots[grow], counts)
            # a row's k-th new block goes to column have + k: the running index less where its run starts
            cols = np.arange(total) + np.repeat(have[grow] - (counts.cumsum() - counts), counts)
            self._ensure_width(int(cols.max()) + 1)
            self._table[rows, cols] = self._take(total)
            self._nblk[slots] = have + need
        self._tok[slots] = tokens + num_tokens
        self._real_slots += num_tokens * len(slots)
        return True

    def fill_counts(self, slots: np.ndarray) -> list[int]:
        """Entry q: how many of the sequences at ``slots`` have ``(tokens - 1)
        % block_size == q`` -- a last block holding q + 1 tokens (an empty
        sequence counts as a full one). Over every held sequence of a
        manager without ids, its count by residue, turned by the clock."""
        bs = self.block_size
        if not self._ids and len(slots) == len(self._seqs.slot_of):
            turn = (1 - self._clock) % bs        # (t + clock - 1) % bs == q  <=>  t % bs == (q + turn) % bs
            return self._by_residue[turn:] + self._by_residue[:turn]
        return np.bincount((self._tok[slots] + (self._clock - 1)) % bs, minlength=bs).tolist()

    def growth_steps(self, slots: np.ndarray, max_growth: int) -> int:
        """Largest ``g <= max_growth`` such that every sequence can grow by
        ``g`` tokens at once: the new blocks they all need fit in the free ones
        (free slots in each last block first)."""
        bs = self.block_size
        free_blocks = len(self._free)
        if len(slots) * -(-max_growth // bs) <= free_blocks:
            return max_growth           # even if every sequence's last block were full
        slack = (-(self._tok[slots] + self._clock)) % bs

        def blocks_for(g: int) -> int:     # g > slack: ceil((g - slack) / bs) blocks; else none
            return int(((g - slack + bs - 1) // bs).sum())

        if blocks_for(max_growth) <= free_blocks:
            return max_growth
        lo, hi = 0, max_growth          # blocks_for(lo) fits, blocks_for(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if blocks_for(mid) <= free_blocks:
                lo = mid
            else:
                hi = mid
        return lo

    def free(self, request_id: int, complete: bool = True) -> None:
        """Release a sequence's GPU or CPU blocks; a GPU block goes back to the
        free queue only when no other table holds it. With prefix caching a
        ``complete`` sequence's output blocks get their keys first; a
        preempted one's do not (its answer is not finished: nothing else can
        hold the same tokens yet)."""
        if request_id not in self._seqs.slot_of:
            raise MemoryError_(f"free({request_id}): it holds no KV (double free?)")
        cpu_table = self._cpu_tables.pop(request_id, None) if self._cpu_tables else None
        if self._content:          # prefix caching
            self._forget_content(request_id, complete, swapped=cpu_table is not None)
        slot = self._seqs.release(request_id)
        if cpu_table is not None:
            self._cpu_free.put(cpu_table)
            return
        self._real_slots -= self._release_gpu(slot)

    def _forget_content(self, request_id: int, complete: bool, swapped: bool) -> None:
        """``free``'s prefix-cache part: key the output of a ``complete``
        sequence (or, preempted, its virtual keys), then drop its content."""
        if not swapped and request_id in self._content:
            if complete:
                self._register_output(request_id)
            elif self._num_virtual:
                self._key_for_revisit(request_id)
        content = self._content.pop(request_id, None)
        if complete and content is not None:
            self._open.discard(content[-1][0])    # its answer is done: prompts may repeat it now
            self._revisit.discard(content)
            self._version += 1
        self._keys.pop(request_id, None)
        self._limit.pop(request_id, None)

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (ref counts + 1)."""
        self._need_ids()
        parent = self._gpu_slot(parent_id)
        if child_id in self._seqs:
            raise MemoryError_(f"fork({parent_id}, {child_id}): the child already holds KV")
        child = self._add_seq(child_id)
        blocks = self._table[parent, : self._nblk[parent]].copy()
        self._set_blocks(child, blocks)
        self._tok[child] = self._tok[parent]
        for block in blocks.tolist():
            self._shared[block] = self._shared.get(block, 1) + 1
        self._forks += 1
        if self.on_fork is not None:
            self.on_fork(parent_id, child_id)

    # ---- swap space --------------------------------------------------
    def can_swap_out(self, request_id: int) -> bool:
        return self.blocks_held(request_id) <= len(self._cpu_free)

    def blocks_held(self, request_id: int) -> int:
        """GPU blocks the sequence holds."""
        slot = self._gpu_slot(request_id)
        if self._ids:
            return int(self._nblk[slot])
        return _ceil_div(self._tokens(slot), self.block_size)

    def swap_out(self, request_id: int) -> list[tuple[int, int]]:
        """Copy a sequence's blocks to CPU blocks and release the GPU ones;
        returns the copies ``(gpu block, cpu block)`` in token order, which a
        real executor performs before the step's compute. Sharing is not kept
        across a swap."""
        self._need_ids()
        slot = self._gpu_slot(request_id)
        blocks = int(self._nblk[slot])
        if not self.can_swap_out(request_id):
            raise MemoryError_(f"swap_out({request_id}): needs {blocks} CPU blocks, {len(self._cpu_free)} free")
        table = self._table[slot, :blocks].tolist()
        self._real_slots -= self._release_gpu(slot)
        self._nblk[slot] = 0
        cpu_table = self._cpu_free.take(blocks).tolist()
        self._cpu_tables[request_id] = cpu_table
        return list(zip(table, cpu_table))

    def can_swap_in(self, request_id: int) -> bool:
        """Only availability counts: a swapped sequence ignores the watermark."""
        if request_id not in self._cpu_tables:
            raise MemoryError_(f"request {request_id} is not swapped out")
        return len(self._cpu_tables[request_id]) <= len(self._free)

    def swap_in(self, request_id: int) -> list[tuple[int, int]]:
        """Copy a swapped sequence back to fresh GPU blocks; returns the copies
        ``(cpu block, gpu block)`` in token order."""
        if not self.can_swap_in(request_id):
            raise MemoryError_(f"swap_in({request_id}): needs {len(self._cpu_tables[request_id])} "
                               f"GPU blocks, {len(self._free)} free")
        cpu_table = self._cpu_tables.pop(request_id)
        self._cpu_free.put(cpu_table)
        slot = self._seqs.slot_of[request_id]
        table = self._take(len(cpu_table))
        self._set_blocks(slot, table)
        self._real_slots += int(self._tok[slot])
        return list(zip(cpu_table, table.tolist()))

    # ---- accounting --------------------------------------------------
    def usage(self) -> KVUsage:
        """``internal`` is the unused tail of allocated blocks, each physical
        block counted once."""
        free = len(self._free) * self.block_size
        real = self._real_slots
        shared = (sum(self._shared.values()) - len(self._shared)) * self.block_size if self._shared else 0
        # total, real, internal, reserved, free, largest_free_run, shared
        return _usage((self.total_tokens, real, self.total_tokens - free - real, 0, free, free, shared))

    def free_unusable(self, need_tokens: int) -> int:
        """Any free block serves any sequence: no external fragmentation."""
        return 0

    def check_invariants(self) -> None:
        """Raise ``MemoryError_`` on any inconsistency (O(blocks))."""
        if not self._ids:
            self._check_counts()
            return
        owned = self._owned_counts()
        _check_pool("GPU", self._free.ids(), owned, self.num_blocks)
        expect_shared = {b: c for b, c in owned.items() if c > 1}
        if expect_shared != self._shared:
            raise MemoryError_("GPU ref counts disagree with the block tables")
        if any(self._block_of.get(k) != b for b, k in self._key_of.items()) or \
                len(self._block_of) != len(self._key_of):
            raise MemoryError_("prefix cache: block and key maps disagree")
        free_ids = set(self._free.ids())
        virtual = np.flatnonzero(self._virtual).tolist()
        if any(b not in owned and b not in free_ids for b in [*self._key_of, *virtual]):
            raise MemoryError_("prefix cache: a keyed block is neither held nor free")
        if len(virtual) != self._num_virtual or any(b in self._key_of for b in virtual):
            raise MemoryError_("prefix cache: virtual keys miscounted or also real")
        cpu_owned = Counter(b for table in self._cpu_tables.values() for b in table)
        _check_pool("CPU", self._cpu_free.ids(), cpu_owned, self.num_cpu_blocks)
        if any(c > 1 for c in cpu_owned.values()):
            raise MemoryError_("CPU ref counts disagree with the block tables")
        for rid, slot in self._seqs.slot_of.items():
            tokens = int(self._tok[slot])
            blocks = len(self._cpu_tables[rid]) if rid in self._cpu_tables else int(self._nblk[slot])
            if blocks != _ceil_div(tokens, self.block_size):
                raise MemoryError_(f"request {rid}: {tokens} tokens in {blocks} blocks")
        if self._real_slots != self._count_real_slots():
            raise MemoryError_(f"real slots {self._real_slots} != {self._count_real_slots()} recounted")

    def assert_empty(self) -> None:
        if len(self._seqs) or len(self._free) != self.num_blocks or len(self._cpu_free) != self.num_cpu_blocks:
            held = sorted(self._seqs.slot_of)
            raise MemoryError_(f"KV leak: sequences {held} still hold "
                               f"{self.num_blocks - len(self._free)} GPU and "
                               f"{self.num_cpu_blocks - len(self._cpu_free)} CPU blocks")

    # ---- helpers -----------------------------------------------------
    def _check_new(self, request_id: int, num_tokens: int, final_tokens: int) -> None:
        if request_id in self._seqs.slot_of:
            raise MemoryError_(f"request {request_id} already holds KV")
        if not 0 <= num_tokens <= final_tokens:
            raise MemoryError_(f"request {request_id}: need 0 <= num_tokens <= final_tokens, "
                               f"got {num_tokens} and {final_tokens}")

    def _tokens(self, slot: int) -> int:
        """Tokens the sequence at ``slot`` holds (its count plus the clock)."""
        return int(self._tok[slot]) + self._clock

    def _gpu_slot(self, request_id: int) -> int:
        slot = self._seqs.slot_of.get(request_id)
        if slot is None:
            raise MemoryError_(f"request {request_id} holds no KV")
        if request_id in self._cpu_tables:
            raise MemoryError_(f"request {request_id} is swapped out, not on the GPU")
        return slot

    def _add_seq(self, request_id: int) -> int:
        seqs = self._seqs
        slot = seqs.add(request_id)
        if seqs.capacity > len(self._table):      # the columns grew
            self._tok, self._nblk = seqs.cols["tokens"], seqs.cols["blocks"]
            grown = np.zeros((seqs.capacity, self._table.shape[1]), np.int64)
            grown[: len(self._table)] = self._table
            self._table = grown
        return slot

    def _ensure_width(self, width: int) -> None:
        if width > self._table.shape[1]:
            grown = np.zeros((len(self._table), max(width, 2 * self._table.shape[1])), np.int64)
            grown[:, : self._table.shape[1]] = self._table
            self._table = grown

    def _set_blocks(self, slot: int, blocks: np.ndarray) -> None:
        n = len(blocks)
        if n > self._table.shape[1]:
            self._ensure_width(n)
        self._table[slot, :n] = blocks
        self._nblk[slot] = n

    def _copy_last_block(self, slot: int, fill: int) -> None:
        """Copy-on-write: give this table a private copy of its shared last block."""
        last = int(self._table[slot, self._nblk[slot] - 1])
        self._drop_ref(last)
        copy = int(self._take(1)[0])
        self._table[slot, self._nblk[slot] - 1] = copy
        self.block_copies.append((last, copy))
        self._real_slots += fill

    def _drop_ref(self, block: int) -> bool:
        """One table less holds ``block``; True if it became free."""
        if block not in self._shared:
            self._free.put([block])
            return True
        self._unshare(block)
        return False

    def _unshare(self, block: int) -> None:
        """One table less holds a shared ``block``."""
        count = self._shared[block]
        if count == 2:
            del self._shared[block]
        else:
            self._shared[block] = count - 1

    def _release_gpu(self, slot: int) -> int:
        """Drop one reference to each of the slot's blocks; returns the real
        slots of blocks freed."""
        bs = self.block_size
        if not self._ids:
            base = int(self._tok[slot])
            tokens = base + self._clock
            self._free.n += -(-tokens // bs)
            self._by_residue[base % bs] -= 1
            return tokens
        blocks = self._table[slot, : self._nblk[slot]]
        tokens = int(self._tok[slot])
        if self.prefix_caching:
            blocks = blocks[::-1]          # deepest first: the longest prefix is evicted first
        if not self._shared:               # nothing shared: all go
            self._free.put(blocks)
            return min(tokens, len(blocks) * bs)
        order = blocks.tolist()
        if not order:
            return 0
        common = self._shared.keys() & set(order)  # blocks other tables hold too: one reference less
        for block in common:
            self._unshare(block)
        freed = [b for b in order if b not in common] if common else order
        self._free.put(freed)
        # every block but the last is full; the last holds what is left of the tokens
        last = int(self._table[slot, len(order) - 1])
        partial = len(order) * bs - tokens
        return len(freed) * bs - (partial if last not in common else 0)

    def _count_growth(self, slots: np.ndarray, num_tokens: int) -> bool:
        """Growth of some held sequences of a manager without ids: their own
        counts grow (``append_slots`` moves the clock instead when ``slots``
        are all of them)."""
        bs, free, n = self.block_size, self._free, len(slots)
        base = self._tok[slots]
        tokens = base + self._clock
        need = int(((tokens + (num_tokens + bs - 1)) // bs - (tokens + (bs - 1)) // bs).sum())
        if need > free.n:
            return False
        free.n -= need
        grown = base + num_tokens
        self._tok[slots] = grown
        moved = np.bincount(grown % bs, minlength=bs) - np.bincount(base % bs, minlength=bs)
        self._by_residue = (np.array(self._by_residue) + moved).tolist()
        self._real_slots += num_tokens * n
        return True

    def _need_ids(self) -> None:
        """Give every held sequence block ids (lowest first, in slot order)
        and keep ids from now on (a lazy manager's first call that needs them)."""
        if self._ids:
            return
        self._ids = True
        self._free = BlockQueue(self.num_blocks)
        for slot in sorted(self._seqs.slot_of.values()):
            tokens = self._tokens(slot)
            self._tok[slot] = tokens
            self._set_blocks(slot, self._free.take(_ceil_div(tokens, self.block_size)))
        self._clock = 0
        self._by_residue = [0] * self.block_size

    def _check_counts(self) -> None:
        """``check_invariants`` of a manager without ids."""
        bs = self.block_size
        tokens = [self._tokens(s) for s in self._seqs.slot_of.values()]
        held = sum(_ceil_div(t, bs) for t in tokens)
        if held + len(self._free) != self.num_blocks:
            raise MemoryError_(f"GPU free + used blocks != {self.num_blocks}")
        by_residue = [0] * bs
        for s in self._seqs.slot_of.values():
            by_residue[int(self._tok[s]) % bs] += 1
        if by_residue != self._by_residue:
            raise MemoryError_("sequences by residue miscounted")
        if self._real_slots != sum(tokens):
            raise MemoryError_(f"real slots {self._real_slots} != {sum(tokens)} recounted")

    def _take(self, count: int) -> np.ndarray:
        """``count`` free blocks; a cached one loses its key (an eviction)."""
        blocks = self._free.take(count)
        if self._num_virtual:
            if len(self._virtual) < self._free.virgin:
                self._grow_virtual()
            gone = int(np.count_nonzero(self._virtual[blocks]))
            if gone:
                self._virtual[blocks] = False
                self._num_virtual -= gone
                self.prefix_stats["evictions"] += gone
                self._version += gone
        key_of = self._key_of
        if key_of:
            evicted = key_of.keys() & blocks.tolist()
            if evicted:
                block_of = self._block_of
                for block in evicted:
                    del block_of[key_of.pop(block)]
                self.prefix_stats["evictions"] += len(evicted)
                self._version += len(evicted)
        return blocks

    def _register(self, slot: int, keys: list[int], start: int = 0) -> None:
        """Key the slot's (full) blocks ``start .. len(keys) - 1``, where
        neither the block nor the key is taken (the same content cached twice
        keeps the first)."""
        key_of, block_of = self._key_of, self._block_of
        blocks, new = self._table[slot, start: len(keys)].tolist(), keys[start:]
        if block_of.keys().isdisjoint(new) and key_of.keys().isdisjoint(blocks):
            key_of.update(zip(blocks, new))       # the usual case: all new, in bulk
            block_of.update(zip(new, blocks))
            self._version += len(new)
            return
        for block, key in zip(blocks, new):
            if block not in key_of and key not in block_of:
                key_of[block] = key
                block_of[key] = block
                self._version += 1

    def _register_output(self, request_id: int) -> None:
        """Key every full block a sequence holds now (its output included)."""
        slot = self._seqs.slot_of[request_id]
        content = self._content[request_id]
        full = min(int(self._tok[slot]) // self.block_size, total_tokens(content) // self.block_size,
                   self._limit[request_id])
        keys = self._keys[request_id]
        real = min(full, self._shared_blocks(content))
        if real > len(keys):
            keys = keys + block_keys(content, real, self.block_size, len(keys),
                                     keys[-1] if keys else 0)
        self._register(slot, keys[:real])
        self._key_virtually(slot, real, full)

    # ---- keys no one else can look up (expect_content) -----------------------
    def expect_content(self, contents) -> None:
        """Told every request's content (``segments``) before the run: blocks
        of content only one request holds are then keyed virtually."""
        counts: Counter = Counter()
        for segments in contents:
            counts.update({cid for cid, _ in segments})
        self._multi = {cid for cid, n in counts.items() if n > 1}

    def _shared_blocks(self, segments: Segments) -> int:
        """Leading full blocks every token of whose prefix lies in content
        other requests hold too (all of them without ``expect_content``, or
        after the content's sequence was preempted)."""
        if self._multi is None or segments in self._revisit:
            return ALL_BLOCKS
        offset, multi = 0, self._multi
        for cid, length in segments:
            if cid not in multi:
                break
            offset += length
        return offset // self.block_size

    def _key_virtually(self, slot: int, start: int, end: int) -> None:
        """Key the slot's blocks ``start .. end - 1`` virtually."""
        if end <= start:
            return
        blocks = self._table[slot, start:end]
        if len(self._virtual) <= int(blocks.max()):
            self._grow_virtual(int(blocks.max()) + 1)
        fresh = blocks[~self._virtual[blocks]]
        self._virtual[fresh] = True
        self._num_virtual += len(fresh)
        self._version += len(fresh)

    def _grow_virtual(self, need: int = 0) -> None:
        size = max(need, self._free.virgin, 2 * len(self._virtual), 64)
        grown = np.zeros(size, bool)
        grown[: len(self._virtual)] = self._virtual
        self._virtual = grown

    def _key_for_revisit(self, request_id: int) -> None:
        """A preempted sequence may be admitted again and find its own
        blocks: key its virtually keyed prompt blocks for real."""
        slot = self._seqs.slot_of[request_id]
        content = self._content[request_id]
        end = min(int(self._nblk[slot]), len(self._virtual))
        blocks = self._table[slot, :end]
        virtual = np.flatnonzero(self._virtual[blocks])
        if not len(virtual):
            return
        keys = self._keys[request_id]
        top = int(virtual[-1]) + 1
        if top > len(keys):
            keys = self._keys[request_id] = keys + block_keys(content, top, self.block_size, len(keys),
                                                              keys[-1] if keys else 0)
        key_of, block_of = self._key_of, self._block_of
        for k in virtual.tolist():
            block, key = int(blocks[k]), keys[k]
            key_of[block] = key
            block_of[key] = block
        self._virtual[blocks[virtual]] = False
        self._num_virtual -= len(virtual)
        self._revisit.add(content)
        self._version += len(virtual)          # lookups of this content see its keys now

    def _any_shared_partial_last(self, slots: np.ndarray) -> bool:
        """Whether some sequence's partially filled last block is shared (it
        must be copied before the sequence writes into it)."""
        tokens = self._tok[slots]
        partial = slots[(tokens % self.block_size) != 0]
        if not len(partial):
            return False
        last = self._table[partial, self._nblk[partial] - 1]
        return bool(np.isin(last, np.fromiter(self._shared, np.int64, len(self._shared))).any())

    def _append_slots_shared(self, slots: np.ndarray, num_tokens: int) -> bool:
        """``append_slots`` when some block is shared: one sequence at a time,
        copying shared partial last blocks (counts a copy per sharer of a
        shared last block: may refuse early, never late)."""
        bs = self.block_size
        need = 0
        for slot in slots.tolist():
            tokens, blocks = int(self._tok[slot]), int(self._nblk[slot])
            need += _ceil_div(tokens + num_tokens, bs) - blocks
            if tokens % bs and int(self._table[slot, blocks - 1]) in self._shared:
                need += 1
        if need > len(self._free):
            return False
        by_slot = {s: rid for rid, s in self._seqs.slot_of.items()}
        for slot in slots.tolist():
            self.append(by_slot[slot], num_tokens)
        return True

    def _owned_counts(self) -> Counter:
        counts: Counter = Counter()
        for rid, slot in self._seqs.slot_of.items():
            if rid not in self._cpu_tables:
                counts.update(self._table[slot, : self._nblk[slot]].tolist())
        return counts

    def _count_real_slots(self) -> int:
        """Recount real slots from scratch; a shared block must look alike to every sharer."""
        fill: dict[int, int] = {}
        bs = self.block_size
        for rid, slot in self._seqs.slot_of.items():
            if rid in self._cpu_tables:
                continue
            tokens = int(self._tok[slot])
            for i, block in enumerate(self._table[slot, : self._nblk[slot]].tolist()):
                f = min(bs, tokens - i * bs)
                if fill.setdefault(block, f) != f:
                    raise MemoryError_(f"block {block} is shared by sequences that disagree on its fill")
        return sum(fill.values())


def _check_pool(name: str, free: list[int], owned: Counter, num_blocks: int) -> None:
    """Free ids unique and unowned; free + owned blocks == all blocks."""
    if len(set(free)) != len(free):
        raise MemoryError_(f"{name} free queue holds a block twice")
    for block in free:
        if owned.get(block):
            raise MemoryError_(f"{name} block {block} is both free and owned")
    if len(free) + len(owned) != num_blocks:
        raise MemoryError_(f"{name} free + used blocks != {num_blocks}")
