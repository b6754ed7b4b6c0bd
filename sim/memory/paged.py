"""Paged KV cache (vLLM): fixed-size blocks taken on demand as a sequence grows.

Structure and invariants:

* ``_free`` is a FIFO queue of free GPU block ids. Initially it holds
  ``0, 1, ..., num_blocks - 1``; blocks are taken from the head (lowest id
  first on a fresh cache) and a released block is appended to the tail, the
  blocks of one sequence in block-table order. So the block handed out next is
  always the one that has been free longest.
* ``_ref[b]`` counts the block tables that contain block ``b``; a block is in
  ``_free`` exactly when its count is 0. ``fork`` shares a parent's blocks with
  a child; a shared *partially filled* last block is copied before either
  sequence writes into it (copy-on-write), so every sharer of a block agrees on
  how many of its slots hold tokens.
* ``_tables[r]`` lists the GPU blocks of sequence ``r`` in token order and has
  exactly ``ceil(tokens / block_size)`` entries; a swapped-out sequence has a
  table in ``_cpu_tables`` instead (the CPU pool has its own FIFO queue).
* ``_real_slots`` is the number of GPU slots holding a token, each physical
  slot counted once however many tables share it.

Every check/act pair keeps ``can_x() is True`` => ``x()`` succeeds. Appending
one token is O(1) (a new block at most); freeing is O(blocks of the sequence).
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sim.memory.base import KVUsage, MemoryError_

if TYPE_CHECKING:
    from sim.memory.capacity import MemorySpec
    from sim.presets import ModelSpec


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class PagedKVManager:
    layout = "paged"

    def __init__(self, num_blocks: int, block_size: int = 16, watermark_frac: float = 0.01,
                 num_cpu_blocks: int = 0) -> None:
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
        self.watermark_blocks = math.ceil(round(watermark_frac * num_blocks, 9))
        self._free: deque[int] = deque(range(num_blocks))
        self._ref = [0] * num_blocks
        self._tables: dict[int, list[int]] = {}
        self._tokens: dict[int, int] = {}     # every held sequence, GPU or CPU
        self._real_slots = 0
        self._cpu_free: deque[int] = deque(range(num_cpu_blocks))
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
        return cls(num_blocks, spec.block_size, spec.watermark, num_cpu_blocks)

    # ---- queries -----------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_free_cpu_blocks(self) -> int:
        return len(self._cpu_free)

    def block_table(self, request_id: int) -> list[int]:
        """GPU block ids of a sequence, in token order (a copy)."""
        return list(self._gpu_table(request_id))

    def cpu_block_table(self, request_id: int) -> list[int]:
        """CPU block ids of a swapped-out sequence, in token order (a copy)."""
        if request_id not in self._cpu_tables:
            raise MemoryError_(f"request {request_id} is not swapped out")
        return list(self._cpu_tables[request_id])

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    def num_tokens(self, request_id: int) -> int:
        if request_id not in self._tokens:
            raise MemoryError_(f"request {request_id} holds no KV")
        return self._tokens[request_id]

    def is_swapped(self, request_id: int) -> bool:
        return request_id in self._cpu_tables

    def rejection_reason(self, final_tokens: int) -> str | None:
        """A sequence is rejected when its final length needs more blocks than
        an empty cache admits: all blocks minus the admission watermark (a
        sequence preempted by recompute is re-admitted with up to its whole
        context, so anything larger could wait forever)."""
        need = _ceil_div(final_tokens, self.block_size)
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
        table = self._gpu_table(request_id)
        tokens = self._tokens[request_id]
        if num_tokens < 0:
            raise MemoryError_(f"request {request_id}: cannot grow by {num_tokens} tokens")
        if num_tokens == 0:
            return 0
        need = _ceil_div(tokens + num_tokens, self.block_size) - len(table)
        if tokens % self.block_size and self._ref[table[-1]] > 1:
            need += 1   # copy-on-write of the shared, partially filled last block
        return need

    # ---- allocation --------------------------------------------------
    def can_allocate(self, request_id: int, num_tokens: int, final_tokens: int) -> bool:
        """Admission keeps ``watermark_blocks`` blocks free for running sequences."""
        self._check_new(request_id, num_tokens, final_tokens)
        need = _ceil_div(num_tokens, self.block_size)
        return len(self._free) - need >= self.watermark_blocks

    def allocate(self, request_id: int, num_tokens: int, final_tokens: int) -> None:
        if not self.can_allocate(request_id, num_tokens, final_tokens):
            raise MemoryError_(f"allocate({request_id}, {num_tokens}) without room: "
                               f"{len(self._free)} free blocks, watermark {self.watermark_blocks}")
        table = self._take(_ceil_div(num_tokens, self.block_size))
        self._tables[request_id] = table
        self._tokens[request_id] = num_tokens
        self._real_slots += num_tokens

    def can_append(self, request_id: int, num_tokens: int = 1) -> bool:
        """Growth may use the watermark blocks."""
        table = self._tables.get(request_id)
        if table is not None and 0 < num_tokens <= len(table) * self.block_size - self._tokens[request_id] \
                and self._ref[table[-1]] == 1:
            return True    # fast path: fits in this table's own last block
        return self.blocks_needed_to_grow(request_id, num_tokens) <= len(self._free)

    def append(self, request_id: int, num_tokens: int = 1) -> None:
        table = self._tables.get(request_id)
        if table is None:
            raise self._not_on_gpu(request_id)
        tokens = self._tokens[request_id]
        if 0 < num_tokens <= len(table) * self.block_size - tokens and self._ref[table[-1]] == 1:
            self._tokens[request_id] = tokens + num_tokens   # fast path: no new block
            self._real_slots += num_tokens
            return
        need = self.blocks_needed_to_grow(request_id, num_tokens)
        if need > len(self._free):
            raise MemoryError_(f"append({request_id}, {num_tokens}) needs {need} "
                               f"blocks, {len(self._free)} free")
        bs = self.block_size
        if num_tokens and tokens % bs and self._ref[table[-1]] > 1:
            self._copy_last_block(table, tokens % bs)
        table.extend(self._take(_ceil_div(tokens + num_tokens, bs) - len(table)))
        self._tokens[request_id] = tokens + num_tokens
        self._real_slots += num_tokens

    def append_all(self, request_ids: list[int], num_tokens: int) -> bool:
        """Grow every listed sequence by ``num_tokens`` if all of that growth
        fits at once; otherwise change nothing and return False. The bulk
        form of ``can_append``/``append`` for the simulator's hot path."""
        if num_tokens == 0:
            return True
        bs = self.block_size
        tables, token_counts, ref = self._tables, self._tokens, self._ref
        need = 0       # counts a copy per sharer of a shared last block: may refuse early, never late
        for rid in request_ids:
            tokens = token_counts[rid]
            table = tables[rid]
            need += -(-(tokens + num_tokens) // bs) - len(table)
            if tokens % bs and ref[table[-1]] > 1:
                need += 1                      # copy-on-write of a shared last block
        free = self._free
        if need > len(free):
            return False
        grown = 0
        for rid in request_ids:
            tokens = token_counts[rid]
            table = tables[rid]
            if tokens % bs and ref[table[-1]] > 1:
                self.append(rid, num_tokens)       # copy-on-write path keeps its own count
                continue
            for _ in range(-(-(tokens + num_tokens) // bs) - len(table)):
                block = free.popleft()
                ref[block] = 1
                table.append(block)
            token_counts[rid] = tokens + num_tokens
            grown += 1
        self._real_slots += num_tokens * grown
        return True

    def free(self, request_id: int) -> None:
        """Release a sequence's GPU or CPU blocks; a GPU block goes back to the
        free queue only when no other table holds it."""
        tokens = self._tokens.pop(request_id, None)
        if tokens is None:
            raise MemoryError_(f"free({request_id}): it holds no KV (double free?)")
        cpu_table = self._cpu_tables.pop(request_id, None)
        if cpu_table is not None:
            self._cpu_free.extend(cpu_table)
            return
        self._real_slots -= self._release_gpu(self._tables.pop(request_id), tokens)

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (ref counts + 1)."""
        table = self._gpu_table(parent_id)
        if child_id in self._tokens:
            raise MemoryError_(f"fork({parent_id}, {child_id}): the child already holds KV")
        for block in table:
            self._ref[block] += 1
        self._tables[child_id] = list(table)
        self._tokens[child_id] = self._tokens[parent_id]

    # ---- swap space --------------------------------------------------
    def can_swap_out(self, request_id: int) -> bool:
        return len(self._gpu_table(request_id)) <= len(self._cpu_free)

    def swap_out(self, request_id: int) -> list[tuple[int, int]]:
        """Copy a sequence's blocks to CPU blocks and release the GPU ones;
        returns the copies ``(gpu block, cpu block)`` in token order, which a
        real executor performs before the step's compute. Sharing is not kept
        across a swap."""
        if not self.can_swap_out(request_id):
            raise MemoryError_(f"swap_out({request_id}): needs {len(self._tables[request_id])} "
                               f"CPU blocks, {len(self._cpu_free)} free")
        table = self._tables.pop(request_id)
        tokens = self._tokens[request_id]
        self._real_slots -= self._release_gpu(table, tokens)
        cpu_table = [self._cpu_free.popleft() for _ in table]
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
        self._cpu_free.extend(cpu_table)
        table = self._take(len(cpu_table))
        self._tables[request_id] = table
        self._real_slots += self._tokens[request_id]
        return list(zip(cpu_table, table))

    # ---- accounting --------------------------------------------------
    def usage(self) -> KVUsage:
        """``internal`` is the unused tail of allocated blocks, each physical
        block counted once."""
        free = len(self._free) * self.block_size
        used = self.total_tokens - free
        return KVUsage(total=self.total_tokens, real=self._real_slots,
                       internal=used - self._real_slots, reserved=0, free=free,
                       largest_free_run=free)

    def free_unusable(self, need_tokens: int) -> int:
        """Any free block serves any sequence: no external fragmentation."""
        return 0

    def check_invariants(self) -> None:
        """Raise ``MemoryError_`` on any inconsistency (O(blocks))."""
        _check_pool("GPU", self._free, self._tables.values(), self.num_blocks, self._ref)
        _check_pool("CPU", self._cpu_free, self._cpu_tables.values(), self.num_cpu_blocks, None)
        if self._tables.keys() & self._cpu_tables.keys():
            raise MemoryError_("a sequence is both on the GPU and swapped out")
        if set(self._tokens) != self._tables.keys() | self._cpu_tables.keys():
            raise MemoryError_("token counts and block tables name different sequences")
        for rid, tokens in self._tokens.items():
            table = self._tables.get(rid, self._cpu_tables.get(rid))
            if len(table) != _ceil_div(tokens, self.block_size):
                raise MemoryError_(f"request {rid}: {tokens} tokens in {len(table)} blocks")
        if self._real_slots != self._count_real_slots():
            raise MemoryError_(f"real slots {self._real_slots} != {self._count_real_slots()} recounted")

    def assert_empty(self) -> None:
        if self._tokens or len(self._free) != self.num_blocks or len(self._cpu_free) != self.num_cpu_blocks:
            raise MemoryError_(f"KV leak: sequences {sorted(self._tokens)} still hold "
                               f"{self.num_blocks - len(self._free)} GPU and "
                               f"{self.num_cpu_blocks - len(self._cpu_free)} CPU blocks")

    # ---- helpers -----------------------------------------------------
    def _check_new(self, request_id: int, num_tokens: int, final_tokens: int) -> None:
        if request_id in self._tokens:
            raise MemoryError_(f"request {request_id} already holds KV")
        if not 0 <= num_tokens <= final_tokens:
            raise MemoryError_(f"request {request_id}: need 0 <= num_tokens <= final_tokens, "
                               f"got {num_tokens} and {final_tokens}")

    def _gpu_table(self, request_id: int) -> list[int]:
        table = self._tables.get(request_id)
        if table is None:
            raise self._not_on_gpu(request_id)
        return table

    def _not_on_gpu(self, request_id: int) -> MemoryError_:
        if request_id in self._cpu_tables:
            return MemoryError_(f"request {request_id} is swapped out, not on the GPU")
        return MemoryError_(f"request {request_id} holds no KV")

    def _take(self, num_blocks: int) -> list[int]:
        """Pop ``num_blocks`` blocks from the head of the free queue (checked by the caller)."""
        table = [self._free.popleft() for _ in range(num_blocks)]
        for block in table:
            self._ref[block] = 1
        return table

    def _copy_last_block(self, table: list[int], fill: int) -> None:
        """Copy-on-write: give this table a private copy of its shared last block."""
        self._ref[table[-1]] -= 1
        table[-1] = self._take(1)[0]
        self._real_slots += fill

    def _release_gpu(self, blocks: list[int], tokens: int) -> int:
        """Drop one reference to each of ``blocks`` (holding ``tokens`` tokens
        from the first one on); returns the real slots of blocks freed."""
        bs = self.block_size
        ref = self._ref
        if blocks and max(map(ref.__getitem__, blocks)) == 1:   # nothing shared: all go
            for block in blocks:
                ref[block] = 0
            self._free.extend(blocks)
            return min(tokens, len(blocks) * bs)
        freed_real = 0
        for i, block in enumerate(blocks):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free.append(block)
                freed_real += min(bs, tokens - i * bs)
        return freed_real

    def _count_real_slots(self) -> int:
        """Recount real slots from scratch; a shared block must look alike to every sharer."""
        fill: dict[int, int] = {}
        bs = self.block_size
        for rid, table in self._tables.items():
            tokens = self._tokens[rid]
            for i, block in enumerate(table):
                f = min(bs, tokens - i * bs)
                if fill.setdefault(block, f) != f:
                    raise MemoryError_(f"block {block} is shared by sequences that disagree on its fill")
        return sum(fill.values())


def _check_pool(name: str, free: deque[int], tables: Iterable[list[int]], num_blocks: int,
                refs: list[int] | None) -> None:
    """Free ids unique and unowned; ``refs`` equal to the table occurrences
    (``None``: the pool shares nothing, every block has at most one owner)."""
    if len(set(free)) != len(free):
        raise MemoryError_(f"{name} free queue holds a block twice")
    counted = [0] * num_blocks
    for table in tables:
        for block in table:
            counted[block] += 1
    if counted != (refs if refs is not None else [min(c, 1) for c in counted]):
        raise MemoryError_(f"{name} ref counts disagree with the block tables")
    for block in free:
        if counted[block]:
            raise MemoryError_(f"{name} block {block} is both free and owned")
    if len(free) + sum(1 for c in counted if c) != num_blocks:
        raise MemoryError_(f"{name} free + used blocks != {num_blocks}")
