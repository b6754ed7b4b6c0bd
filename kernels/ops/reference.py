"""Plain torch references for every kernel: fp32 math, explicit gathers.

Shapes (the contract every kernel module follows):

* paged cache ``[num_blocks, block_size, num_kv_heads, head_dim]`` for K and V;
  ``block_tables[b, j]`` (int32) is the j-th block of sequence b; ``context_lens[b]``
  (int32) the number of valid tokens of sequence b.
* contiguous cache ``[batch, max_len, num_kv_heads, head_dim]`` (one slab per
  sequence) or ``[num_slots, num_kv_heads, head_dim]`` with each sequence's
  first slot in ``seq_starts``; KV writes go through flat slots for both
  layouts (a linear buffer is a paged cache with one-token pages).
* decode query ``[batch, num_heads, head_dim]``; prefill tokens packed
  ``[total_tokens, heads, head_dim]`` with ``cu_seqlens`` (int32, ``batch + 1``).
* grouped-query attention: query head h reads KV head ``h // (num_heads // num_kv_heads)``.

These are slow and simple on purpose: they are what the kernels are checked
against.
"""
from __future__ import annotations

import math

import torch


def _expand_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., num_kv_heads, D] -> [..., num_heads, D] by repeating each KV head."""
    group = num_heads // x.shape[-2]
    return x.repeat_interleave(group, dim=-2)


def gather_paged(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` tokens of one sequence from a paged cache: [length, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    blocks = cache[block_table[:num_blocks].long()]          # [nb, bs, Hkv, D]
    return blocks.reshape(-1, *cache.shape[2:])[:length]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            causal_offset: int | None) -> torch.Tensor:
    """q [Tq, H, D], k/v [Tk, H, D] in fp32 -> [Tq, H, D]. With ``causal_offset``
    c, query i sees keys 0..c+i."""
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if causal_offset is not None:
        tq, tk = q.shape[0], k.shape[0]
        qi = torch.arange(tq, device=q.device)[:, None] + causal_offset
        ki = torch.arange(tk, device=q.device)[None, :]
        scores = scores.masked_fill(ki > qi, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def paged_decode_ref(q, k_cache, v_cache, block_tables, context_lens, scale=None):
    """q [B, H, D] -> out [B, H, D] (dtype of q)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        n = int(context_lens[b])
        k = _expand_kv(gather_paged(k_cache, block_tables[b], n).float(), q.shape[1])
        v = _expand_kv(gather_paged(v_cache, block_tables[b], n).float(), q.shape[1])
        out[b] = _attend(q[b : b + 1].float(), k, v, scale, None)[0].to(q.dtype)
    return out


def contiguous_decode_ref(q, k_cache, v_cache, context_lens, scale=None, seq_starts=None):
    """q [B, H, D] -> out [B, H, D]; caches [B, L, Hkv, D] (one slab per
    sequence), or [num_slots, Hkv, D] with each sequence's first slot in
    ``seq_starts``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        n = int(context_lens[b])
        if seq_starts is None:
            k, v = k_cache[b, :n], v_cache[b, :n]
        else:
            first = int(seq_starts[b])
            k, v = k_cache[first:first + n], v_cache[first:first + n]
        k, v = _expand_kv(k.float(), q.shape[1]), _expand_kv(v.float(), q.shape[1])
        out[b] = _attend(q[b : b + 1].float(), k, v, scale, None)[0].to(q.dtype)
    return out


def prefill_ref(q, k, v, cu_seqlens, scale=None, k_cache=None, v_cache=None,
                block_tables=None, context_lens=None):
    """Causal attention over packed prompts. q [T, H, D], k/v [T, Hkv, D].

    With a paged cache, sequence b first attends its ``context_lens[b]`` cached
    tokens (all visible), then its new tokens causally -- a prefill chunk on top
    of earlier context (chunked prefill, prefix reuse)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty_like(q)
    heads = q.shape[1]
    for b in range(len(cu_seqlens) - 1):
        s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        kb, vb = k[s:e].float(), v[s:e].float()
        ctx = 0
        if k_cache is not None and context_lens is not None and int(context_lens[b]) > 0:
            ctx = int(context_lens[b])
            kb = torch.cat([gather_paged(k_cache, block_tables[b], ctx).float(), kb])
            vb = torch.cat([gather_paged(v_cache, block_tables[b], ctx).float(), vb])
        out[s:e] = _attend(q[s:e].float(), _expand_kv(kb, heads), _expand_kv(vb, heads),
                           scale, ctx).to(q.dtype)
    return out


def write_paged_ref(k, v, k_cache, v_cache, slot_mapping):
    """Scatter k/v [T, Hkv, D] into paged caches at flat slots
    (``block * block_size + offset``); negative slots are skipped (padding)."""
    bs = k_cache.shape[1]
    for t in range(k.shape[0]):
        slot = int(slot_mapping[t])
        if slot < 0:
            continue
        k_cache[slot // bs, slot % bs] = k[t]
        v_cache[slot // bs, slot % bs] = v[t]

