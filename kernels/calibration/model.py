"""One serving step of a decoder-only transformer, run on pagesim's kernels.

A step takes any batch composition -- prefill chunks (new tokens on top of
cached context) plus decode sequences with their own context lengths -- and
runs embedding, ``num_layers`` decoder blocks and greedy sampling over each
sequence's last token, reading and writing a paged *or* contiguous KV cache
through pagesim's Triton kernels (``backend="triton"``) or their torch
references (``backend="reference"``, for CPU tests). The profiler times it and
the real engine (``kernels.engine``) serves with it, so both run the same code.

Two block styles, chosen by the geometry's ``mlp``:

* ``gated_silu`` (Llama): RMSNorm, rotary positions, GQA, SiLU(gate) * up;
* ``relu`` (OPT): LayerNorm, learned positions, biases, ReLU MLP.

GEMMs are fused as real engines fuse them (one QKV GEMM, one gate/up GEMM).
Tokens are packed prefill-first: prefill chunks in order, then one token per
decode sequence. Weights are random (no downloads). For timing, layers may
share a *ring* of ``num_sets`` distinct weight and cache sets (layer i uses
set ``i % num_sets``): every layer still runs with its full arithmetic and
memory traffic, and with a few hundred MB between two uses of a set nothing
is served from L2 (docs/calibration.md shows the check). The engine gives
every layer its own set.

Geometries are ``sim.presets.ModelSpec`` (plain dataclasses, no dependency):
the GPU side and the simulator read the same presets.

Launch conventions shared by the profiler and the engine, so that a profile
prices exactly what the engine runs: decode block tables are always
``table_width`` blocks wide and the contiguous decode's split-K bound is the
model's ``max_context_tokens``, so the split count depends on the batch size
alone (and a CUDA graph captured for a batch size stays valid for any
contexts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from kernels.ops import reference as ref
from sim.presets import ModelSpec

Backend = Literal["triton", "reference"]
ROPE_THETA = 10000.0
NORM_EPS = 1e-5


def opt_style(geom: ModelSpec) -> bool:
    """LayerNorm + learned positions + biases + ReLU, as in OPT."""
    return geom.mlp == "relu"


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: tuple[torch.Tensor, torch.Tensor | None]   # (weight, bias)
    qkv: tuple[torch.Tensor, torch.Tensor | None]         # [(Hq + 2 Hkv) D, H]
    out: tuple[torch.Tensor, torch.Tensor | None]         # [H, Hq D]
    mlp_norm: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]          # gate/up [2F, H] or fc1 [F, H]
    down: tuple[torch.Tensor, torch.Tensor | None]        # [H, F]


@dataclass(frozen=True)
class Weights:
    embed: torch.Tensor                   # [V, H]
    positions: torch.Tensor | None        # [max_context, H] (OPT) or None
    layers: tuple[LayerWeights, ...]      # a ring: layer i uses layers[i % len]
    final_norm: tuple[torch.Tensor, torch.Tensor | None]
    lm_head: torch.Tensor                 # [V, H]


def random_weights(geom: ModelSpec, *, num_sets: int | None = None, dtype=torch.bfloat16,
                   device="cpu", seed: int = 0) -> Weights:
    """Random weights scaled so activations stay O(1) through every layer."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype) * std

    def linear(rows, cols, std_scale=1.0):
        bias = rand(rows, std=0.02) if opt_style(geom) else None
        return rand(rows, cols, std=std_scale / math.sqrt(cols)), bias

    def norm():
        bias = rand(geom.hidden_size, std=0.02) if opt_style(geom) else None
        return 1.0 + rand(geom.hidden_size, std=0.02), bias

    h, hd = geom.hidden_size, geom.head_dim
    qkv_rows = (geom.num_heads + 2 * geom.num_kv_heads) * hd
    up_rows = geom.ffn_size * (1 if opt_style(geom) else 2)
    residual_scale = 1.0 / math.sqrt(2 * geom.num_layers)
    layers = tuple(
        LayerWeights(norm(), linear(qkv_rows, h), linear(h, geom.num_heads * hd, residual_scale),
                     norm(), linear(up_rows, h), linear(h, geom.ffn_size, residual_scale))
        for _ in range(num_sets or geom.num_layers))
    positions = rand(geom.max_context_tokens, h) if opt_style(geom) else None
    return Weights(rand(geom.vocab_size, h), positions, layers, norm(),
                   rand(geom.vocab_size, h, std=1.0 / math.sqrt(h)))


# ---- KV caches ----------------------------------------------------------------
def _alloc(shape, init: str, dtype, device, seed: int) -> torch.Tensor:
    if init == "zeros":
        return torch.zeros(shape, dtype=dtype, device=device)
    if init == "randn":
        gen = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=dtype, device=device)
    raise ValueError(f"init must be 'zeros' or 'randn', got {init!r}")


class PagedKVCache:
    """K and V pools ``[num_blocks, block_size, Hkv, D]`` per layer set, all in
    one tensor ``[sets, 2, num_blocks, block_size, Hkv, D]`` (so a swap moves a
    block of every layer with one gather)."""

    layout = "paged"

    def __init__(self, geom: ModelSpec, num_blocks: int, *, block_size: int = 16,
                 num_sets: int | None = None, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 init: str = "randn"):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.num_sets = num_sets or geom.num_layers
        self.kv = _alloc((self.num_sets, 2, num_blocks, block_size, geom.num_kv_heads, geom.head_dim),
                         init, dtype, device, seed)

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.kv[i % self.num_sets]
        return kv[0], kv[1]

    page_view = layer      # what the prefill kernel reads cached context through
    write_view = layer     # what the slot writes address


class ContiguousKVCache:
    """K and V as one linear buffer of token slots ``[num_slots, Hkv, D]`` per
    layer set (``[sets, 2, num_slots, Hkv, D]``). A sequence occupies the slots
    from its first slot on -- the contiguous KV manager's reservation offset in
    the engine. Writes address it as one-token pages; the prefill kernel reads
    cached context through pages of ``block_size`` slots, so a sequence with
    cached context must start on a page boundary."""

    layout = "contiguous"

    def __init__(self, geom: ModelSpec, num_slots: int, *, block_size: int = 16,
                 num_sets: int | None = None, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 init: str = "randn"):
        self.block_size = block_size
        self.num_slots = -(-num_slots // block_size) * block_size
        self.num_sets = num_sets or geom.num_layers
        self.kv = _alloc((self.num_sets, 2, self.num_slots, geom.num_kv_heads, geom.head_dim),
                         init, dtype, device, seed)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.kv[i % self.num_sets]
        return kv[0], kv[1]

    def page_view(self, i: int):
        return tuple(x.view(-1, self.block_size, *x.shape[1:]) for x in self.layer(i))

    def write_view(self, i: int):
        return tuple(x.view(x.shape[0], 1, *x.shape[1:]) for x in self.layer(i))


# ---- step inputs -------------------------------------------------------------
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


def place(cache, totals: list[int], rng: np.random.Generator | None = None) -> list:
    """Fresh locations in an empty ``cache`` for sequences that will hold
    ``totals`` tokens: block ids (paged; in random order with ``rng``) or
    page-aligned first slots (contiguous, packed in order)."""
    bs = cache.block_size
    need = [-(-int(t) // bs) for t in totals]
    if cache.layout == "paged":
        if sum(need) > cache.num_blocks:
            raise ValueError(f"composition needs {sum(need)} blocks, the cache has {cache.num_blocks}")
        ids = rng.permutation(cache.num_blocks) if rng is not None else np.arange(cache.num_blocks)
        return np.split(ids[: sum(need)].astype(np.int32), np.cumsum(need)[:-1])
    if sum(need) * bs > cache.num_slots:
        raise ValueError(f"composition needs {sum(need) * bs} slots, the cache has {cache.num_slots}")
    return (np.concatenate([[0], np.cumsum(need)[:-1]]) * bs).astype(np.int64).tolist()


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


# ---- attention backends ----------------------------------------------------
@dataclass(frozen=True)
class AttentionOps:
    """The four kernels a step needs, behind one signature per kernel."""

    paged_decode: Callable      # (q, k_cache, v_cache, block_tables, context_lens, out)
    contiguous_decode: Callable  # (q, k_buf, v_buf, seq_starts, context_lens, max_context_tokens, out)
    prefill: Callable           # (q, k, v, cu_seqlens, max_seqlen, k_pages, v_pages, tables, ctx, out)
    write: Callable             # (k, v, k_pages, v_pages, slot_mapping)


def attention_ops(backend: Backend) -> AttentionOps:
    if backend == "triton":
        from kernels.ops.cache_write import write_paged_kv
        from kernels.ops.contiguous_decode import contiguous_decode_attention
        from kernels.ops.paged_decode import paged_decode_attention
        from kernels.ops.prefill import prefill_attention
        return AttentionOps(
            lambda q, kc, vc, bt, cl, out: paged_decode_attention(q, kc, vc, bt, cl, out=out),
            lambda q, kc, vc, st, cl, mx, out: contiguous_decode_attention(
                q, kc, vc, cl, out=out, seq_starts=st, max_context_tokens=mx),
            lambda q, k, v, cu, m, kc, vc, bt, cl, out: prefill_attention(
                q, k, v, cu, m, k_cache=kc, v_cache=vc, block_tables=bt, context_lens=cl, out=out),
            write_paged_kv)
    if backend == "reference":
        return AttentionOps(
            lambda q, kc, vc, bt, cl, out: out.copy_(ref.paged_decode_ref(q, kc, vc, bt, cl)),
            lambda q, kc, vc, st, cl, mx, out: out.copy_(ref.contiguous_decode_ref(q, kc, vc, cl, seq_starts=st)),
            lambda q, k, v, cu, m, kc, vc, bt, cl, out: out.copy_(
                ref.prefill_ref(q, k, v, cu, None, kc, vc, bt, cl)),
            ref.write_paged_ref)
    raise ValueError(f"backend must be 'triton' or 'reference', got {backend!r}")


# ---- the model -------------------------------------------------------------
class Transformer:
    """The step's operators as methods, so the profiler times exactly the
    functions ``step`` runs."""

    def __init__(self, geom: ModelSpec, weights: Weights, backend: Backend = "triton") -> None:
        self.geom = geom
        self.weights = weights
        self.ops = attention_ops(backend)
        half = geom.head_dim // 2
        dev = weights.embed.device
        self.inv_freq = 1.0 / ROPE_THETA ** (torch.arange(half, device=dev).float() / half)

    # -- elementwise and GEMM operators --
    def embed(self, token_ids: torch.Tensor, positions: torch.Tensor):
        """Hidden states [T, H] and the rotary tables (None for OPT)."""
        h = F.embedding(token_ids, self.weights.embed)
        if opt_style(self.geom):
            return h + F.embedding(positions, self.weights.positions), None
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]
        return h, (angles.cos().to(h.dtype), angles.sin().to(h.dtype))

    def norm(self, x: torch.Tensor, wb) -> torch.Tensor:
        weight, bias = wb
        if opt_style(self.geom):
            return F.layer_norm(x, (x.shape[-1],), weight, bias, NORM_EPS)
        return F.rms_norm(x, (x.shape[-1],), weight, NORM_EPS)

    @staticmethod
    def project(x: torch.Tensor, wb) -> torch.Tensor:
        return F.linear(x, *wb)

    def split_heads(self, qkv: torch.Tensor, rope):
        """q [T, Hq, D], k/v [T, Hkv, D] from the fused QKV output, rotated
        (Llama: neox-style rotate-half) where the model uses rotary positions."""
        g = self.geom
        t, d = qkv.shape[0], g.head_dim
        qk = qkv[:, : (g.num_heads + g.num_kv_heads) * d].view(t, -1, d)
        v = qkv[:, (g.num_heads + g.num_kv_heads) * d:].view(t, g.num_kv_heads, d)
        if rope is not None:
            cos, sin = rope
            x1, x2 = qk[..., : d // 2], qk[..., d // 2:]
            qk = qk * cos + torch.cat((-x2, x1), dim=-1) * sin
        return qk[:, : g.num_heads], qk[:, g.num_heads:], v

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        if opt_style(self.geom):
            return F.relu(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def residual(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h + x

    def final_hidden(self, h: torch.Tensor, last_token_index: torch.Tensor) -> torch.Tensor:
        return self.norm(h.index_select(0, last_token_index), self.weights.final_norm)

    @staticmethod
    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.argmax(logits, dim=-1)

    # -- KV cache and attention --
    def write_kv(self, k, v, cache, layer: int, inp: StepInputs) -> None:
        self.ops.write(k, v, *cache.write_view(layer), inp.slot_mapping)

    def attend(self, q, k, v, cache, layer: int, inp: StepInputs) -> torch.Tensor:
        """Attention output [T, Hq, D]: prefill chunks, then decode sequences."""
        out = torch.empty_like(q) if q.is_contiguous() else q.new_empty(q.shape)
        tp = inp.num_prefill_tokens
        if tp:
            kc, vc = cache.page_view(layer) if inp.prefill_block_tables is not None else (None, None)
            ctx = inp.prefill_context_lens if kc is not None else None
            self.ops.prefill(q[:tp], k[:tp], v[:tp], inp.cu_seqlens, inp.max_prefill_tokens,
                             kc, vc, inp.prefill_block_tables, ctx, out[:tp])
        if inp.num_decode_seqs:
            kc, vc = cache.layer(layer)
            if cache.layout == "paged":
                self.ops.paged_decode(q[tp:], kc, vc, inp.decode_block_tables,
                                      inp.decode_context_lens, out[tp:])
            else:
                self.ops.contiguous_decode(q[tp:], kc, vc, inp.decode_starts, inp.decode_context_lens,
                                           inp.max_context_tokens, out[tp:])
        return out

    # -- the step --
    def layer(self, h: torch.Tensor, layer: int, cache, inp: StepInputs, rope) -> torch.Tensor:
        w = self.weights.layers[layer % len(self.weights.layers)]
        qkv = self.project(self.norm(h, w.attn_norm), w.qkv)
        q, k, v = self.split_heads(qkv, rope)
        self.write_kv(k, v, cache, layer, inp)
        o = self.attend(q, k, v, cache, layer, inp)
        h = self.residual(h, self.project(o.view(o.shape[0], -1), w.out))
        x = self.project(self.norm(h, w.mlp_norm), w.up)
        return self.residual(h, self.project(self.activation(x), w.down))

    def step(self, inp: StepInputs, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [S, V] of each sequence's last token and the greedy next tokens [S]."""
        h, rope = self.embed(inp.token_ids, inp.positions)
        for i in range(self.geom.num_layers):
            h = self.layer(h, i, cache, inp, rope)
        logits = self.project(self.final_hidden(h, inp.last_token_index), (self.weights.lm_head, None))
        return logits, self.sample(logits)


def dense_logits(model: Transformer, token_ids: torch.Tensor) -> torch.Tensor:
    """Plain torch forward of one whole sequence without any cache: logits
    [n, V] at every position (the correctness reference for ``step``)."""
    g = model.geom
    n = token_ids.shape[0]
    positions = torch.arange(n, device=token_ids.device)
    h, rope = model.embed(token_ids, positions)
    causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
    for i in range(g.num_layers):
        w = model.weights.layers[i % len(model.weights.layers)]
        q, k, v = model.split_heads(model.project(model.norm(h, w.attn_norm), w.qkv), rope)
        group = g.num_heads // g.num_kv_heads
        k, v = (x.float().repeat_interleave(group, dim=1) for x in (k, v))
        scores = torch.einsum("qhd,khd->hqk", q.float(), k) / math.sqrt(g.head_dim)
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        o = torch.einsum("hqk,khd->qhd", probs, v).to(h.dtype).reshape(n, -1)
        h = model.residual(h, model.project(o, w.out))
        x = model.project(model.norm(h, w.mlp_norm), w.up)
        h = model.residual(h, model.project(model.activation(x), w.down))
    return model.project(model.norm(h, model.weights.final_norm), (model.weights.lm_head, None))


def random_token_ids(geom: ModelSpec, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, geom.vocab_size, size=num_tokens, dtype=np.int64)
