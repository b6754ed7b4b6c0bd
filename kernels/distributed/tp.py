"""One rank of a tensor-parallel transformer step (Megatron-style, as vLLM
shards a Llama or an OPT).

Rank ``r`` of ``t`` holds ``sim.parallel.shard(geom, t)``'s weights, cut from
the full model's:

* QKV: its query heads ``[r Hq/t, (r+1) Hq/t)`` and their KV heads (split
  ``t`` ways, or, when ``t`` exceeds the KV heads, the one its query heads
  read: head ``r // (t / Hkv)``) -- column parallel, no communication;
* attention over those heads with the same kernels, into its own KV cache;
* output projection: the input columns of its heads -- row parallel, then
  an **all-reduce** of the ``[T, H]`` partial sums (bias added once, after);
* MLP: gate/up rows ``[r F/t, (r+1) F/t)`` (column parallel), down input
  columns likewise (row parallel), then an **all-reduce**;
* embedding and LM head by vocabulary rows ``[r V', (r+1) V')``, ``V' =
  ceil(V / t)`` (zero rows past ``V``): the embedding looks up only its own
  ids and **all-reduces**; the logits are **all-gathered** and cut to ``V``.

So every rank runs exactly the GEMM and attention shapes ``pagesim calibrate
--tp`` profiles on one GPU, and the collectives the analytic communication
model prices (``sim/parallel.py``): ``2 L + 1`` all-reduces and one gather a
step. ``tests/kernels/test_tp.py`` checks, on the CPU over a gloo process
group, that two ranks give the full model's logits.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kernels.calibration.model import Backend, LayerWeights, Transformer, Weights, opt_style, random_weights
from sim.parallel import shard
from sim.presets import ModelSpec


def shard_weights(full: Weights, geom: ModelSpec, rank: int, tensor: int) -> Weights:
    """Rank ``rank``'s part of ``full`` (the weights of ``geom``)."""
    layers = tuple(shard_layer(lw, geom, rank, tensor) for lw in full.layers)
    return _vocab_shard(Weights(full.embed, full.positions, layers, full.final_norm, full.lm_head),
                        geom, rank, tensor)


def random_shard_weights(geom: ModelSpec, rank: int, tensor: int, *, dtype=torch.bfloat16, device="cpu",
                         seed: int = 0) -> Weights:
    """Rank ``rank``'s part of ``random_weights(geom, seed=seed)``, drawn
    layer by layer on ``device`` (the whole model is never in memory, so a
    70B model's shard is drawn on one GPU); degree 1 is the whole model."""
    if tensor == 1:
        return random_weights(geom, dtype=dtype, device=device, seed=seed)
    full = random_weights(geom, dtype=dtype, device=device, seed=seed,
                          layer_cut=lambda lw: shard_layer(lw, geom, rank, tensor))
    return _vocab_shard(full, geom, rank, tensor)


def shard_layer(lw: LayerWeights, geom: ModelSpec, rank: int, tensor: int) -> LayerWeights:
    """Rank ``rank``'s part of one layer: new tensors, none a view of ``lw``'s."""
    s = shard(geom, tensor)
    d, hq, hkv = geom.head_dim, s.num_heads, s.num_kv_heads
    q_rows = slice(rank * hq * d, (rank + 1) * hq * d)
    kv_head0 = rank * hkv if geom.num_kv_heads >= tensor else rank // (tensor // geom.num_kv_heads)
    k_base, v_base = geom.num_heads * d, (geom.num_heads + geom.num_kv_heads) * d
    kv_rows = slice(kv_head0 * d, (kv_head0 + hkv) * d)
    f = s.ffn_size

    def rows(t: torch.Tensor | None, *parts: slice):
        return None if t is None else torch.cat([t[p] for p in parts])

    def qkv(wb):
        w, b = wb
        parts = (q_rows, _shift(kv_rows, k_base), _shift(kv_rows, v_base))
        return rows(w, *parts), rows(b, *parts)

    def up(wb):
        w, b = wb
        mine = slice(rank * f, (rank + 1) * f)
        parts = (mine,) if opt_style(geom) else (mine, _shift(mine, geom.ffn_size))   # gate, then up
        return rows(w, *parts), rows(b, *parts)

    def columns(wb, width: int):
        w, b = wb
        return w[:, rank * width: (rank + 1) * width].contiguous(), b     # bias added after the reduce

    return LayerWeights(lw.attn_norm, qkv(lw.qkv), columns(lw.out, hq * d), lw.mlp_norm, up(lw.up),
                        columns(lw.down, f))


def _vocab_shard(w: Weights, geom: ModelSpec, rank: int, tensor: int) -> Weights:
    """``w`` with the embedding and the LM head cut to the rank's vocabulary rows."""
    per = shard(geom, tensor).vocab_size
    return Weights(_vocab_rows(w.embed, rank, per), w.positions, w.layers, w.final_norm,
                   _vocab_rows(w.lm_head, rank, per))


def _shift(s: slice, by: int) -> slice:
    return slice(s.start + by, s.stop + by)


def _vocab_rows(matrix: torch.Tensor, rank: int, per_rank: int) -> torch.Tensor:
    """Rows ``[rank per_rank, (rank+1) per_rank)``, zero-padded past the vocabulary."""
    part = matrix[rank * per_rank: (rank + 1) * per_rank]
    if part.shape[0] < per_rank:
        return torch.cat([part, part.new_zeros(per_rank - part.shape[0], matrix.shape[1])])
    return part.clone()          # not a view that keeps the whole matrix alive


class TensorParallelTransformer(Transformer):
    """``Transformer`` on one rank's shard, with the step's collectives."""

    def __init__(self, geom: ModelSpec, weights: Weights, rank: int, tensor: int,
                 backend: Backend = "triton", group=None) -> None:
        super().__init__(shard(geom, tensor), weights, backend)
        self.full_geom, self.rank, self.tensor, self.group = geom, rank, tensor, group

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x, group=self.group)
        return x

    def lookup(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary parallel: each rank looks up its own ids, the sum is the embedding."""
        per = self.geom.vocab_size
        local = token_ids - self.rank * per
        mine = (local >= 0) & (local < per)
        h = F.embedding(torch.where(mine, local, torch.zeros_like(local)), self.weights.embed)
        return self._all_reduce(h * mine[:, None].to(h.dtype))

    def _row_parallel(self, x: torch.Tensor, wb) -> torch.Tensor:
        w, b = wb
        y = self._all_reduce(F.linear(x, w))
        return y if b is None else y + b

    def layer(self, h: torch.Tensor, layer: int, cache, inp, rope) -> torch.Tensor:
        w = self.weights.layers[layer % len(self.weights.layers)]
        q, k, v = self.split_heads(self.project(self.norm(h, w.attn_norm), w.qkv), rope)
        self.write_kv(k, v, cache, layer, inp)
        o = self.attend(q, k, v, cache, layer, inp)
        h = self.residual(h, self._row_parallel(o.view(o.shape[0], -1), w.out))
        x = self.project(self.norm(h, w.mlp_norm), w.up)
        return self.residual(h, self._row_parallel(self.activation(x), w.down))

    def step(self, inp, cache) -> tuple[torch.Tensor, torch.Tensor]:
        h, rope = self.embed(inp.token_ids, inp.positions)
        for i in range(self.geom.num_layers):
            h = self.layer(h, i, cache, inp, rope)
        local = self.project(self.final_hidden(h, inp.last_token_index), (self.weights.lm_head, None))
        parts = [torch.empty_like(local) for _ in range(self.tensor)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        logits = torch.cat(parts, dim=-1)[:, : self.full_geom.vocab_size]
        return logits, self.sample(logits)

