"""Contiguous decode attention: one new query token per sequence against a KV
cache reserved as one slab per sequence, ``[B, max_len, Hkv, D]``
(FasterTransformer / HF ``generate`` layout).

Same kernel body, tiles, split-K and GQA handling as ``kernels.paged_decode``
(see ``kernels._decode_common``); only the row address differs. The torch
reference is ``kernels.reference.contiguous_decode_ref``.
"""
from __future__ import annotations

import torch

from kernels._decode_common import (
    DecodeTiles,
    check_decode_inputs,
    launch_decode,
    pick_tiles,
    invalid,
    resolve_num_splits,
    resolve_scale,
)

_WHERE = "contiguous_decode_attention"


def contiguous_decode_attention(q, k_cache, v_cache, context_lens, scale=None,
                                num_splits=None, out=None):
    """Attention of ``q [B, Hq, D]`` over ``k_cache/v_cache [B, max_len, Hkv, D]``,
    sequence b using its first ``context_lens[b]`` (<= max_len) positions.
    ``num_splits=None`` picks split-K from batch, heads and SM count. Returns
    ``out`` (allocated if not given), dtype of q."""
    return contiguous_decode_with_tiles(q, k_cache, v_cache, context_lens, scale, num_splits,
                                        out, tiles=None)


def contiguous_decode_with_tiles(q, k_cache, v_cache, context_lens, scale=None,
                                 num_splits=None, out=None, tiles: DecodeTiles | None = None):
    """``contiguous_decode_attention`` with an explicit launch shape (tests, tuning)."""
    check_decode_inputs(_WHERE, q, k_cache, v_cache, context_lens, out)
    batch, _, head_dim = q.shape
    if k_cache.shape[0] != batch:
        raise invalid(_WHERE, f"k_cache {tuple(k_cache.shape)} must be [{batch}, max_len, "
                              f"num_kv_heads, {head_dim}] (one slab per sequence of q)")
    scale = resolve_scale(_WHERE, scale, head_dim)
    num_splits = resolve_num_splits(_WHERE, num_splits, batch, k_cache.shape[2],
                                    k_cache.shape[1], q.device)
    out = torch.empty_like(q) if out is None else out
    return launch_decode(q, k_cache, v_cache, context_lens, context_lens, paged=False,
                         scale=scale, num_splits=num_splits, out=out,
                         tiles=tiles or pick_tiles(head_dim))
