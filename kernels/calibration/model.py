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

Its inputs are ``kernels.calibration.inputs`` (with the launch conventions
the profiler and the engine share) and its caches
``kernels.calibration.cache``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from kernels.calibration.inputs import StepInputs
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
                   device="cpu", seed: int = 0,
                   layer_cut: Callable[[LayerWeights], LayerWeights] | None = None) -> Weights:
    """Random weights scaled so activations stay O(1) through every layer.
    ``layer_cut`` (e.g. one rank's tensor shard) is applied to each layer as
    soon as it is drawn, so only one whole layer is ever in memory, and the
    values are those of the whole model's."""
    cut = layer_cut or (lambda layer: layer)
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
        cut(LayerWeights(norm(), linear(qkv_rows, h), linear(h, geom.num_heads * hd, residual_scale),
                         norm(), linear(up_rows, h), linear(h, geom.ffn_size, residual_scale)))
        for _ in range(num_sets or geom.num_layers))
    positions = rand(geom.max_context_tokens, h) if opt_style(geom) else None
    return Weights(rand(geom.vocab_size, h), positions, layers, norm(),
                   rand(geom.vocab_size, h, std=1.0 / math.sqrt(h)))


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
        h = self.lookup(token_ids)
        if opt_style(self.geom):
            return h + F.embedding(positions, self.weights.positions), None
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]
        return h, (angles.cos().to(h.dtype), angles.sin().to(h.dtype))

    def lookup(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings [T, H]."""
        return F.embedding(token_ids, self.weights.embed)

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
