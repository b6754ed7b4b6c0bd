"""One serving step of a decoder-only transformer, run on pagesim's kernels.

A step takes any batch composition -- prefill chunks (new tokens on top of
cached context) plus decode sequences with their own context lengths -- and
runs embedding, ``num_layers`` decoder blocks and greedy sampling over each
sequence's last token, reading and writing a paged *or* contiguous KV cache
through pagesim's Triton kernels (``backend="triton"``) or their torch
references (``backend="reference"``, for CPU tests).

Two block styles, chosen by the geometry's ``mlp``:

* ``gated_silu`` (Llama): RMSNorm, rotary positions, GQA, SiLU(gate) * up;
* ``relu`` (OPT): LayerNorm, learned positions, biases, ReLU MLP.

GEMMs are fused as real engines fuse them (one QKV GEMM, one gate/up GEMM).
Tokens are packed prefill-first: prefill chunks in order, then one token per
decode sequence. Weights are random (no downloads). For timing, layers may
share a *ring* of ``num_sets`` distinct weight and cache sets (layer i uses
set ``i % num_sets``): every layer still runs with its full arithmetic and
memory traffic, and with a few hundred MB between two uses of a set nothing
is served from L2 (docs/calibration.md shows the check).

Imports torch only (plus numpy): the GPU machine has no pydantic, so the model
geometries of ``sim.presets.MODELS`` are mirrored here (a test keeps them equal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from kernels import reference as ref

Backend = Literal["triton", "reference"]
ROPE_THETA = 10000.0
NORM_EPS = 1e-5


@dataclass(frozen=True)
class Geometry:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    max_context_tokens: int = 4096
    mlp: Literal["gated_silu", "relu"] = "gated_silu"

    @property
    def opt_style(self) -> bool:
        """LayerNorm + learned positions + biases + ReLU, as in OPT."""
        return self.mlp == "relu"


GEOMETRIES: dict[str, Geometry] = {g.name: g for g in [
    Geometry("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 4096),
    Geometry("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, 4096),
    Geometry("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8192),
    Geometry("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, 2048, mlp="relu"),
    Geometry("llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 4096),
]}


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


def random_weights(geom: Geometry, *, num_sets: int | None = None, dtype=torch.bfloat16,
                   device="cpu", seed: int = 0) -> Weights:
    """Random weights scaled so activations stay O(1) through every layer."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype) * std

    def linear(rows, cols, std_scale=1.0):
        bias = rand(rows, std=0.02) if geom.opt_style else None
        return rand(rows, cols, std=std_scale / math.sqrt(cols)), bias

    def norm():
        bias = rand(geom.hidden_size, std=0.02) if geom.opt_style else None
        return 1.0 + rand(geom.hidden_size, std=0.02), bias

    h, hd = geom.hidden_size, geom.head_dim
    qkv_rows = (geom.num_heads + 2 * geom.num_kv_heads) * hd
    up_rows = geom.ffn_size * (1 if geom.opt_style else 2)
    residual_scale = 1.0 / math.sqrt(2 * geom.num_layers)
    layers = tuple(
        LayerWeights(norm(), linear(qkv_rows, h), linear(h, geom.num_heads * hd, residual_scale),
                     norm(), linear(up_rows, h), linear(h, geom.ffn_size, residual_scale))
        for _ in range(num_sets or geom.num_layers))
    positions = rand(geom.max_context_tokens, h) if geom.opt_style else None
    return Weights(rand(geom.vocab_size, h), positions, layers, norm(),
                   rand(geom.vocab_size, h, std=1.0 / math.sqrt(h)))


# ---- KV caches and step inputs ----------------------------------------------
class PagedKVCache:
    """K and V pools ``[num_blocks, block_size, Hkv, D]``, one pair per set."""

    layout = "paged"

    def __init__(self, geom: Geometry, num_blocks: int, *, block_size: int = 16,
                 num_sets: int | None = None, dtype=torch.bfloat16, device="cpu", seed: int = 0):
        self.block_size, self.num_blocks = block_size, num_blocks
        shape = (num_blocks, block_size, geom.num_kv_heads, geom.head_dim)
        self.k, self.v = _random_sets(shape, num_sets or geom.num_layers, dtype, device, seed)

    def layer(self, i: int):
        return self.k[i % len(self.k)], self.v[i % len(self.v)]

    prefill_view = layer

    def place(self, total_tokens: list[int], rng: np.random.Generator | None = None) -> list:
        """Fresh blocks for sequences of ``total_tokens`` (random order with ``rng``)."""
        need = [-(-t // self.block_size) for t in total_tokens]
        if sum(need) > self.num_blocks:
            raise ValueError(f"composition needs {sum(need)} blocks, the cache has {self.num_blocks}")
        ids = rng.permutation(self.num_blocks) if rng is not None else np.arange(self.num_blocks)
        return np.split(ids[: sum(need)].astype(np.int32), np.cumsum(need)[:-1])

    def tables(self, placement: list, width: int) -> np.ndarray:
        out = np.zeros((len(placement), max(width, 1)), dtype=np.int32)
        for i, blocks in enumerate(placement):
            n = min(len(blocks), width)
            out[i, :n] = blocks[:n]
        return out

    def slots(self, placement, seq: np.ndarray, pos: np.ndarray) -> np.ndarray:
        table = self.tables(placement, max((len(b) for b in placement), default=1))
        return table[seq, pos // self.block_size].astype(np.int64) * self.block_size + pos % self.block_size


class ContiguousKVCache:
    """K and V slabs ``[num_rows, max_len, Hkv, D]``, one pair per set; a
    sequence owns one row. ``prefill_view`` shows a slab as pages of
    ``block_size`` tokens (a free reshape) so the prefill kernel reads cached
    context of either layout."""

    layout = "contiguous"

    def __init__(self, geom: Geometry, num_rows: int, max_len: int, *, block_size: int = 16,
                 num_sets: int | None = None, dtype=torch.bfloat16, device="cpu", seed: int = 0):
        self.block_size, self.num_rows = block_size, num_rows
        self.max_len = -(-max_len // block_size) * block_size
        shape = (num_rows, self.max_len, geom.num_kv_heads, geom.head_dim)
        self.k, self.v = _random_sets(shape, num_sets or geom.num_layers, dtype, device, seed)

    def layer(self, i: int):
        return self.k[i % len(self.k)], self.v[i % len(self.v)]

    def prefill_view(self, i: int):
        return tuple(x.view(-1, self.block_size, *x.shape[2:]) for x in self.layer(i))

    def place(self, total_tokens: list[int], num_decode: int) -> list[int]:
        """Rows for prefills then decodes: decodes take rows 0..num_decode-1
        (the decode kernel reads a consecutive range of rows)."""
        if len(total_tokens) > self.num_rows or max(total_tokens, default=0) > self.max_len:
            raise ValueError(f"composition needs {len(total_tokens)} rows of {max(total_tokens, default=0)} "
                             f"tokens, the cache has {self.num_rows} of {self.max_len}")
        num_prefill = len(total_tokens) - num_decode
        return list(range(num_decode, num_decode + num_prefill)) + list(range(num_decode))

    def tables(self, rows: list[int], width: int) -> np.ndarray:
        per_row = self.max_len // self.block_size
        return (np.asarray(rows, dtype=np.int32)[:, None] * per_row
                + np.arange(max(width, 1), dtype=np.int32)[None, :])


def _random_sets(shape, num_sets: int, dtype, device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    k = [torch.randn(shape, generator=gen, dtype=dtype, device=device) for _ in range(num_sets)]
    v = [torch.randn(shape, generator=gen, dtype=dtype, device=device) for _ in range(num_sets)]
    return k, v


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


@dataclass(frozen=True)
class StepInputs:
    """Device tensors of one step, built before it runs (outside any timing)."""

    token_ids: torch.Tensor            # [T] int64, prefill chunks then decode tokens
    positions: torch.Tensor            # [T] int64
    last_token_index: torch.Tensor     # [S] int64
    cu_seqlens: torch.Tensor           # [P + 1] int32
    prefill_context_lens: torch.Tensor  # [P] int32
    decode_context_lens: torch.Tensor  # [Bd] int32
    num_prefill_tokens: int
    max_prefill_tokens: int
    num_decode_seqs: int
    prefill_block_tables: torch.Tensor | None = None  # only when a prefill has cached context
    decode_block_tables: torch.Tensor | None = None   # paged
    slot_mapping: torch.Tensor | None = None          # paged writes, [T] int64
    decode_rows: slice | None = None                  # contiguous: the decodes' rows
    seq_ids: torch.Tensor | None = None               # contiguous writes, [T] int64
    write_positions: torch.Tensor | None = None       # contiguous writes, [T] int64


def prepare_step(comp, cache, placement, token_ids: np.ndarray, device) -> StepInputs:
    """Tensors for ``comp`` (a ``Composition`` or ``sim.batch.Batch``) whose
    sequences live where ``placement`` (from ``cache.place``) says."""
    if not isinstance(comp, Composition):
        comp = Composition(tuple(comp.prefill_new_tokens), tuple(comp.prefill_context_tokens),
                           tuple(comp.decode_context_tokens))
    cached, new = comp.spans()
    num_p = len(comp.prefill_new_tokens)
    seq = np.repeat(np.arange(len(new)), new)                  # sequence of each packed token
    pos = cached[seq] + np.arange(len(seq)) - (np.cumsum(new) - new)[seq]
    ctx_p, ctx_d = cached[:num_p], cached[num_p:] + 1
    host = {"token_ids": (token_ids, np.int64), "positions": (pos, np.int64),
            "last_token_index": (np.cumsum(new) - 1, np.int64),
            "cu_seqlens": (np.concatenate([[0], np.cumsum(new[:num_p])]), np.int32),
            "prefill_context_lens": (ctx_p, np.int32), "decode_context_lens": (ctx_d, np.int32)}
    if num_p and ctx_p.max() > 0:
        host["prefill_block_tables"] = (cache.tables(placement[:num_p], _blocks(ctx_p, cache)), np.int32)
    if cache.layout == "paged":
        host["decode_block_tables"] = (cache.tables(placement[num_p:], _blocks(ctx_d, cache)), np.int32)
        host["slot_mapping"] = (cache.slots(placement, seq, pos), np.int64)
    else:
        host["seq_ids"] = (np.asarray(placement, dtype=np.int64)[seq], np.int64)
        host["write_positions"] = (pos, np.int64)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=dt)).to(device) for k, (a, dt) in host.items()}
    return StepInputs(**tensors, num_prefill_tokens=int(new[:num_p].sum()),
                      max_prefill_tokens=int(new[:num_p].max(initial=0)), num_decode_seqs=len(new) - num_p,
                      decode_rows=_decode_rows(cache, list(placement[num_p:])))


def _blocks(context_tokens: np.ndarray, cache) -> int:
    """Block-table width covering the longest context."""
    return int(-(-context_tokens.max() // cache.block_size)) if len(context_tokens) else 1


def _decode_rows(cache, rows: list) -> slice | None:
    if cache.layout == "paged" or not rows:
        return None
    if rows != list(range(rows[0], rows[0] + len(rows))):
        raise ValueError(f"contiguous decode rows must be consecutive, got {rows}")
    return slice(rows[0], rows[0] + len(rows))


# ---- attention backends ----------------------------------------------------
@dataclass(frozen=True)
class AttentionOps:
    """The five kernels a step needs, behind one signature per kernel."""

    paged_decode: Callable      # (q, k_cache, v_cache, block_tables, context_lens, out)
    contiguous_decode: Callable  # (q, k_cache, v_cache, context_lens, out)
    prefill: Callable           # (q, k, v, cu_seqlens, max_seqlen, k_cache, v_cache, tables, ctx, out)
    write_paged: Callable       # (k, v, k_cache, v_cache, slot_mapping)
    write_contiguous: Callable  # (k, v, k_cache, v_cache, seq_ids, positions)


def attention_ops(backend: Backend) -> AttentionOps:
    if backend == "triton":
        from kernels.cache_write import write_contiguous_kv, write_paged_kv
        from kernels.contiguous_decode import contiguous_decode_attention
        from kernels.paged_decode import paged_decode_attention
        from kernels.prefill import prefill_attention
        return AttentionOps(
            lambda q, kc, vc, bt, cl, out: paged_decode_attention(q, kc, vc, bt, cl, out=out),
            lambda q, kc, vc, cl, out: contiguous_decode_attention(q, kc, vc, cl, out=out),
            lambda q, k, v, cu, m, kc, vc, bt, cl, out: prefill_attention(
                q, k, v, cu, m, k_cache=kc, v_cache=vc, block_tables=bt, context_lens=cl, out=out),
            write_paged_kv, write_contiguous_kv)
    if backend == "reference":
        return AttentionOps(
            lambda q, kc, vc, bt, cl, out: out.copy_(ref.paged_decode_ref(q, kc, vc, bt, cl)),
            lambda q, kc, vc, cl, out: out.copy_(ref.contiguous_decode_ref(q, kc, vc, cl)),
            lambda q, k, v, cu, m, kc, vc, bt, cl, out: out.copy_(
                ref.prefill_ref(q, k, v, cu, None, kc, vc, bt, cl)),
            ref.write_paged_ref, ref.write_contiguous_ref)
    raise ValueError(f"backend must be 'triton' or 'reference', got {backend!r}")


# ---- the model -------------------------------------------------------------
class Transformer:
    """The step's operators as methods, so the profiler times exactly the
    functions ``step`` runs."""

    def __init__(self, geom: Geometry, weights: Weights, backend: Backend = "triton") -> None:
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
        if self.geom.opt_style:
            return h + F.embedding(positions, self.weights.positions), None
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]
        return h, (angles.cos().to(h.dtype), angles.sin().to(h.dtype))

    def norm(self, x: torch.Tensor, wb) -> torch.Tensor:
        weight, bias = wb
        if self.geom.opt_style:
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
        if self.geom.opt_style:
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
        kc, vc = cache.layer(layer)
        if cache.layout == "paged":
            self.ops.write_paged(k, v, kc, vc, inp.slot_mapping)
        else:
            self.ops.write_contiguous(k, v, kc, vc, inp.seq_ids, inp.write_positions)

    def attend(self, q, k, v, cache, layer: int, inp: StepInputs) -> torch.Tensor:
        """Attention output [T, Hq, D]: prefill chunks, then decode sequences."""
        out = torch.empty_like(q) if q.is_contiguous() else q.new_empty(q.shape)
        tp = inp.num_prefill_tokens
        if tp:
            kc, vc = cache.prefill_view(layer) if inp.prefill_block_tables is not None else (None, None)
            ctx = inp.prefill_context_lens if kc is not None else None
            self.ops.prefill(q[:tp], k[:tp], v[:tp], inp.cu_seqlens, inp.max_prefill_tokens,
                             kc, vc, inp.prefill_block_tables, ctx, out[:tp])
        if inp.num_decode_seqs:
            kc, vc = cache.layer(layer)
            if cache.layout == "paged":
                self.ops.paged_decode(q[tp:], kc, vc, inp.decode_block_tables,
                                      inp.decode_context_lens, out[tp:])
            else:
                rows = inp.decode_rows
                self.ops.contiguous_decode(q[tp:], kc[rows], vc[rows], inp.decode_context_lens,
                                           out[tp:])
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


def random_token_ids(geom: Geometry, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, geom.vocab_size, size=num_tokens, dtype=np.int64)
