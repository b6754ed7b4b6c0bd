"""Step time from first principles: FLOPs and bytes against the hardware's roofs.

Every part of a step costs ``max(FLOPs / achieved FLOP/s, bytes / achieved
bytes/s)``, and a step is the sum of its parts:

* linear layers (QKV, output projection, MLP) over every row of the batch:
  ``2 x rows x params`` FLOPs; the weights read once plus each GEMM's
  activations read and written;
* the LM head, one row per sequence (a prefill entry's last token, a decode
  sequence) -- the rows that need logits;
* the embedding lookup (memory only);
* attention, bounded *per sequence* from its own lengths and then summed, so
  a skewed batch costs what its members cost rather than what its mean
  would; multiplied by ``paged_attention_overhead`` on a paged KV layout;
* writing the new tokens' K and V into the cache (memory only);
* a fixed ``step_overhead_s`` (CPU scheduling, input preparation, launches);
* swap traffic over PCIe, added after the roofs.

Formulas, defaults and their sources: docs/cost-models.md.
"""
from __future__ import annotations

import numpy as np

from sim.batch import Batch
from sim.presets import HardwareSpec, ModelSpec

FloatOrArray = float | np.ndarray

DEFAULT_PAGED_ATTENTION_OVERHEAD = 1.1
"""Paged over contiguous attention time. A guess until calibration: the vLLM
paper measured its paged kernel 20-26% slower than a contiguous one; pagesim's
own kernels target at most 10%."""

DEFAULT_STEP_OVERHEAD_S = 1.5e-3
"""Used only where no kernel profiles are installed: by default the fixed
term is what the committed profiles measured (``step_overhead_s: null``, see
``sim.cost.profiled.measured_step_overhead_s``: 0.17 ms on the H100, whose
profiles have no engine host terms, 0.5 ms on the H200 where they do).
CPU work around each forward pass (scheduling, input preparation, sampling,
kernel launches). vLLM's v0.6.0 profile of Llama-3-8B on one H100 found its
HTTP server and scheduler taking 33% and 29% of execution time, against ~5 ms
of GPU time per step; 1.5 ms sits between an engine that overlaps this work
(a few hundred us) and one that does not (several ms)."""


class RooflineCostModel:
    """``step_time(batch)`` from model geometry and hardware peaks.

    All per-model constants are folded into seconds-per-unit coefficients in
    ``__init__`` so that ``step_time`` is a handful of float operations plus
    one pass over the batch's tuples.
    """

    name = "roofline"

    def __init__(self, model: ModelSpec, hardware: HardwareSpec,
                 paged_attention_overhead: float = DEFAULT_PAGED_ATTENTION_OVERHEAD,
                 step_overhead_s: float = DEFAULT_STEP_OVERHEAD_S, step_overhead_source: str = "given") -> None:
        if not paged_attention_overhead > 0:
            raise ValueError(f"paged_attention_overhead must be > 0, got {paged_attention_overhead!r}")
        if not step_overhead_s >= 0:
            raise ValueError(f"step_overhead_s must be >= 0, got {step_overhead_s!r}")
        self.model = model
        self.hardware = hardware
        self.paged_attention_overhead = float(paged_attention_overhead)
        self.step_overhead_s = float(step_overhead_s)
        self.step_overhead_source = step_overhead_source   # "given", "default" or what measured it

        flops_per_s = hardware.peak_flops * hardware.achievable_flops_frac
        bytes_per_s = hardware.mem_bandwidth_Bps * hardware.achievable_bandwidth_frac
        num_layers = model.num_layers
        dtype_bytes = model.dtype_bytes
        hidden = model.hidden_size

        # Linear layers: max(rows * compute_s, weight_s + rows * act_s).
        linear_params = num_layers * model.params_per_layer
        self._linear_compute_s_per_row = 2 * linear_params / flops_per_s
        self._linear_weight_s = linear_params * dtype_bytes / bytes_per_s
        self._linear_act_s_per_row = (
            num_layers * _gemm_activation_elems_per_row(model) * dtype_bytes / bytes_per_s)

        # LM head over the rows that need logits: max(seqs * compute_s, weight_s + seqs * act_s).
        head_params = model.vocab_size * hidden
        self._head_compute_s_per_seq = 2 * head_params / flops_per_s
        self._head_weight_s = head_params * dtype_bytes / bytes_per_s
        self._head_act_s_per_seq = (hidden + model.vocab_size) * dtype_bytes / bytes_per_s

        # Memory-only per-row parts: embedding gather (read + write a row) and KV write.
        self._embed_s_per_row = 2 * hidden * dtype_bytes / bytes_per_s
        self._kv_write_s_per_row = model.kv_bytes_per_token / bytes_per_s

        # Attention of one sequence over all layers, n queries on k keys:
        # max(pair_s * n * (k - (n - 1) / 2), key_s * k + query_s * n).
        self._attn_pair_s = num_layers * 4 * model.q_size / flops_per_s
        self._attn_key_s = model.kv_bytes_per_token / bytes_per_s
        self._attn_query_s = num_layers * 2 * model.q_size * dtype_bytes / bytes_per_s
        # Decode (n = 1) is memory-bound at every context length when a key
        # costs more to read than to multiply; then its sum is linear in sum(ctx).
        self._decode_memory_bound = self._attn_pair_s <= self._attn_key_s

        self._swap_s_per_token = model.kv_bytes_per_token / hardware.pcie_bandwidth_Bps

    def __repr__(self) -> str:
        return (f"RooflineCostModel({self.model.name!r} on {self.hardware.name!r}, "
                f"paged_attention_overhead={self.paged_attention_overhead}, "
                f"step_overhead_s={self.step_overhead_s})")

    def step_time(self, batch: Batch) -> float:
        if batch.is_empty:
            return 0.0
        decode_ctx = batch.decode_context_tokens
        if self._decode_memory_bound:
            decode_s = self._attn_key_s * sum(decode_ctx) + self._attn_query_s * len(decode_ctx)
        else:
            pair_s, key_s, query_s = self._attn_pair_s, self._attn_key_s, self._attn_query_s
            decode_s = sum([max(pair_s * c, key_s * c + query_s) for c in decode_ctx])
        return self._step_s(batch, decode_s)

    def decode_run_times(self, batch: Batch, num_steps: int, first_step: int = 0) -> np.ndarray:
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if batch.is_empty:
            return np.zeros(num_steps, dtype=np.float64)
        ctx = np.asarray(batch.decode_context_tokens, dtype=np.int64)
        steps = np.arange(first_step, first_step + num_steps, dtype=np.int64)
        if self._decode_memory_bound:
            total_ctx = int(ctx.sum()) + len(ctx) * steps
            decode_s = self._attn_key_s * total_ctx.astype(np.float64) + self._attn_query_s * len(ctx)
        else:
            grid = (ctx[None, :] + steps[:, None]).astype(np.float64)
            per_seq = np.maximum(self._attn_pair_s * grid, self._attn_key_s * grid + self._attn_query_s)
            decode_s = per_seq.sum(axis=1)
        return self._step_s(batch, decode_s)

    def _step_s(self, batch: Batch, decode_attention_s: FloatOrArray) -> FloatOrArray:
        """The whole step, given its decode attention time (a float, or one per step of a run)."""
        new_tokens = batch.prefill_new_tokens
        num_seqs = len(new_tokens) + len(batch.decode_context_tokens)
        rows = sum(new_tokens) + len(batch.decode_context_tokens)
        linear_s = head_s = 0.0
        if rows:   # a swap-only step runs no layers
            linear_s = max(rows * self._linear_compute_s_per_row,
                           self._linear_weight_s + rows * self._linear_act_s_per_row)
            head_s = max(num_seqs * self._head_compute_s_per_seq,
                         self._head_weight_s + num_seqs * self._head_act_s_per_seq)
        memory_s = rows * (self._embed_s_per_row + self._kv_write_s_per_row)
        attention_s = 0.0
        for new, context in zip(new_tokens, batch.prefill_context_tokens):
            attention_s += self._prefill_attention_s(new, context + new)
        attention_s = attention_s + decode_attention_s
        if batch.kv_layout == "paged":
            attention_s = attention_s * self.paged_attention_overhead
        swap_s = (batch.swap_in_tokens + batch.swap_out_tokens) * self._swap_s_per_token
        return linear_s + head_s + memory_s + attention_s + self.step_overhead_s + swap_s

    def _prefill_attention_s(self, num_queries: int, num_keys: int) -> float:
        """Causal attention of ``num_queries`` new tokens, the last ones of
        ``num_keys``: query j (0-based) sees ``num_keys - num_queries + j + 1`` keys."""
        pairs = num_queries * (num_keys - (num_queries - 1) / 2)
        return max(self._attn_pair_s * pairs,
                   self._attn_key_s * num_keys + self._attn_query_s * num_queries)


def _gemm_activation_elems_per_row(model: ModelSpec) -> int:
    """Elements each GEMM of one layer reads and writes for one row."""
    hidden, q_size, kv_size, ffn = model.hidden_size, model.q_size, model.kv_size, model.ffn_size
    qkv = hidden + (q_size + 2 * kv_size)
    out_proj = q_size + hidden
    num_up = 2 if model.mlp == "gated_silu" else 1   # gate and up, or up alone
    mlp = num_up * (hidden + ffn) + (ffn + hidden)
    return qkv + out_proj + mlp
