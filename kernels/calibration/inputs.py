"""A step's inputs: the shapes (``Composition``), the rows as the kernels see
them (``Rows``: padding, skipped tokens, write positions, locations), the host
arrays (``HostStep``) and the device tensors (``StepInputs``).

Launch conventions shared by the profiler and the engine, so that a profile
prices exactly what the engine runs: decode block tables are always
``table_width`` blocks wide and the contiguous decode's split-K bound is the
model's ``max_context_tokens``, so the split count depends on the batch size
alone (and a CUDA graph captured for a batch size stays valid for any
contexts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sim.presets import ModelSpec


@dataclass(frozen=True)
class Composition:
    """One step's shapes, with the meaning of ``sim.batch.Batch``'s fields
    (a decode context counts the new token's own key)."""

    prefill_new_tokens: tuple[int, ...] = ()
    prefill_context_tokens: tuple[int, ...] = ()
    decode_context_tokens: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(self.prefill_new_tokens) + len(self.decode_context_tokens)

    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(cached tokens before the step, new tokens) per sequence, prefills first."""
        if any(n < 1 for n in self.prefill_new_tokens) or any(c < 1 for c in self.decode_context_tokens):
            raise ValueError(f"every prefill needs >= 1 new token and every decode >= 1 context token: {self}")
        cached = [*self.prefill_context_tokens, *(c - 1 for c in self.decode_context_tokens)]
        new = [*self.prefill_new_tokens, *([1] * len(self.decode_context_tokens))]
        return np.asarray(cached, dtype=np.int64), np.asarray(new, dtype=np.int64)


@dataclass
class Rows:
    """A step row by row (prefills first, then decodes), as the kernels see it.

    Row r computes ``new[r]`` query tokens over ``cached[r]`` earlier keys
    (a decode row: one token, ``cached + 1`` keys in all). Its KV lives at
    ``where[r]``: an int32 array of block ids (paged) or its first slot
    (contiguous); ``None`` marks a padding row, which reads the scratch
    location and writes nothing. Of its new tokens the first ``skip[r]`` are
    padding (not written); the rest are written from position
    ``write_pos[r]`` on. An ordinary row has ``skip = 0`` and
    ``write_pos = cached``; a static batch pads prompts in front and reads
    padded contexts, which ``skip`` and ``write_pos`` describe."""

    num_prefill: int
    new: np.ndarray          # int64 [R]
    cached: np.ndarray       # int64 [R]
    skip: np.ndarray         # int64 [R]
    write_pos: np.ndarray    # int64 [R]
    where: list

    @classmethod
    def plain(cls, comp: Composition, where: list) -> "Rows":
        cached, new = comp.spans()
        return cls(len(comp.prefill_new_tokens), new, cached, np.zeros_like(new), cached.copy(), where)


@dataclass
class HostStep:
    """One step's inputs as host arrays, before they go to the device."""

    token_ids: np.ndarray            # int64 [T], prefill chunks then decode tokens
    positions: np.ndarray            # int64 [T]
    slot_mapping: np.ndarray         # int64 [T]; -1: padding, not written
    last_token_index: np.ndarray     # int64 [S]
    cu_seqlens: np.ndarray           # int32 [P + 1]
    prefill_context_lens: np.ndarray  # int32 [P]
    decode_context_lens: np.ndarray  # int32 [D]
    prefill_block_tables: np.ndarray | None   # int32 [P, W], only when a prefill has cached context
    decode_block_tables: np.ndarray | None    # paged: int32 [D, table_width]
    decode_starts: np.ndarray | None          # contiguous: int64 [D]
    max_prefill_tokens: int
    max_context_tokens: int          # split-K bound of the decode kernels

    _TENSORS = ("token_ids", "positions", "slot_mapping", "last_token_index", "cu_seqlens",
                "prefill_context_lens", "decode_context_lens", "prefill_block_tables",
                "decode_block_tables", "decode_starts")

    def to_device(self, device) -> "StepInputs":
        tensors = {name: None if getattr(self, name) is None else torch.from_numpy(getattr(self, name)).to(device)
                   for name in self._TENSORS}
        return StepInputs(**tensors, num_prefill_tokens=int(self.cu_seqlens[-1]),
                          max_prefill_tokens=self.max_prefill_tokens,
                          num_decode_seqs=len(self.decode_context_lens),
                          max_context_tokens=self.max_context_tokens)

    def copy_into(self, static: "StepInputs") -> None:
        """Fill a CUDA graph's input tensors (same shapes) in place."""
        for name in self._TENSORS:
            value, dest = getattr(self, name), getattr(static, name)
            if (value is None) != (dest is None):
                raise ValueError(f"step input {name}: the graph was captured "
                                 f"{'without' if dest is None else 'with'} it")
            if value is not None:
                dest.copy_(torch.from_numpy(value), non_blocking=True)


def table_width(geom: ModelSpec, block_size: int) -> int:
    """Blocks in every decode block-table row: the model's whole context."""
    return -(-geom.max_context_tokens // block_size)


def host_step(rows: Rows, token_ids: np.ndarray, layout: str, *, block_size: int, width: int,
              max_context_tokens: int, scratch: int = 0) -> HostStep:
    """Host arrays for ``rows``. ``scratch`` is where padding rows read and
    where paged rows read past their own blocks (a block id, or a first slot)."""
    new, cached, skip, wpos = rows.new, rows.cached, rows.skip, rows.write_pos
    num_p, num_rows = rows.num_prefill, len(new)
    ends = np.cumsum(new)
    seq = np.repeat(np.arange(num_rows), new)                  # row of each packed token
    offset = np.arange(len(seq)) - (ends - new)[seq]
    written = offset >= skip[seq]
    pos_w = np.where(written, wpos[seq] + offset - skip[seq], 0)
    pad = np.array([w is None for w in rows.where], dtype=bool)
    ctx_p, ctx_d = cached[:num_p], cached[num_p:] + 1
    prefill_tables = decode_tables = decode_starts = None
    if layout == "paged":
        need = max(width, int(-(-(max(int(ctx_p.max(initial=0)), 1)) // block_size)))
        tables = np.full((num_rows, need), scratch, dtype=np.int32)
        for r, blocks in enumerate(rows.where):
            if blocks is not None:
                n = min(len(blocks), need)
                tables[r, :n] = blocks[:n]
        slots = tables[seq, np.minimum(pos_w // block_size, need - 1)].astype(np.int64) * block_size \
            + pos_w % block_size
        decode_tables = np.ascontiguousarray(tables[num_p:, :width])
        if num_p and ctx_p.max() > 0:
            prefill_tables = np.ascontiguousarray(tables[:num_p, :-(-int(ctx_p.max()) // block_size)])
    else:
        starts = np.array([scratch if w is None else int(w) for w in rows.where], dtype=np.int64)
        slots = starts[seq] + pos_w
        decode_starts = starts[num_p:].copy()
        if num_p and ctx_p.max() > 0:
            first = starts[:num_p]
            if (first[ctx_p > 0] % block_size).any():
                raise ValueError("contiguous prefill over cached context needs reservations that start "
                                 f"on a {block_size}-slot page boundary")
            pages = -(-int(ctx_p.max()) // block_size)
            prefill_tables = (first[:, None] // block_size + np.arange(pages)[None, :]).astype(np.int32)
    slots = np.where(written & ~pad[seq], slots, -1)
    return HostStep(
        token_ids=np.ascontiguousarray(token_ids, dtype=np.int64), positions=(cached[seq] + offset),
        slot_mapping=slots.astype(np.int64), last_token_index=(ends - 1).astype(np.int64),
        cu_seqlens=np.concatenate([[0], ends[:num_p]]).astype(np.int32),
        prefill_context_lens=ctx_p.astype(np.int32), decode_context_lens=ctx_d.astype(np.int32),
        prefill_block_tables=prefill_tables, decode_block_tables=decode_tables, decode_starts=decode_starts,
        max_prefill_tokens=int(new[:num_p].max(initial=0)), max_context_tokens=max_context_tokens)


@dataclass(frozen=True)
class StepInputs:
    """Device tensors of one step (``HostStep.to_device``)."""

    token_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    last_token_index: torch.Tensor
    cu_seqlens: torch.Tensor
    prefill_context_lens: torch.Tensor
    decode_context_lens: torch.Tensor
    prefill_block_tables: torch.Tensor | None
    decode_block_tables: torch.Tensor | None
    decode_starts: torch.Tensor | None
    num_prefill_tokens: int
    max_prefill_tokens: int
    num_decode_seqs: int
    max_context_tokens: int


def prepare_step(comp, cache, where: list, token_ids: np.ndarray, device, geom: ModelSpec) -> StepInputs:
    """Device inputs for ``comp`` (a ``Composition`` or ``sim.batch.Batch``)
    whose sequences live at ``where`` (from ``place``), with the shared launch
    conventions (``table_width``, the model's context as split-K bound)."""
    if not isinstance(comp, Composition):
        comp = Composition(tuple(comp.prefill_new_tokens), tuple(comp.prefill_context_tokens),
                           tuple(comp.decode_context_tokens))
    host = host_step(Rows.plain(comp, where), token_ids, cache.layout, block_size=cache.block_size,
                     width=table_width(geom, cache.block_size), max_context_tokens=geom.max_context_tokens)
    return host.to_device(device)
