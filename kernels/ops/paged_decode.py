"""Paged decode attention: one new query token per sequence against a KV cache
stored in fixed-size blocks, gathered through a block table (vLLM's layout).

The kernel body lives in ``kernels.ops.decode_common`` and is shared with
``kernels.ops.contiguous_decode``; only the row addressing differs, so the
paged/contiguous time ratio measures the cost of paging alone. The torch
reference is ``kernels.ops.reference.paged_decode_ref``.
"""
from __future__ import annotations

import torch

from kernels.ops.decode_common import DecodeTiles, check_decode_inputs, checked_launch, invalid

_WHERE = "paged_decode_attention"


def _check_block_tables(q, k_cache, block_tables) -> None:
    if not (isinstance(block_tables, torch.Tensor) and block_tables.dim() == 2
            and block_tables.dtype == torch.int32):
        raise invalid(_WHERE, "block_tables must be a 2-d int32 tensor [batch, max_blocks_per_seq]")
    if block_tables.shape[0] != q.shape[0]:
        raise invalid(_WHERE, f"block_tables has {block_tables.shape[0]} rows for batch {q.shape[0]}")
    if block_tables.device != q.device:
        raise invalid(_WHERE, f"block_tables is on {block_tables.device}, q on {q.device}")
    if block_tables.stride(1) != 1 and block_tables.shape[1] > 1:
        raise invalid(_WHERE, "block_tables must be contiguous in its last dim")
    if k_cache.shape[1] < 1:
        raise invalid(_WHERE, "block_size (k_cache.shape[1]) must be >= 1")


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale=None,
                           num_splits=None, out=None):
    """Attention of ``q [B, Hq, D]`` over each sequence's first ``context_lens[b]``
    cached tokens.

    ``k_cache``/``v_cache`` are ``[num_blocks, block_size, Hkv, D]``;
    ``block_tables [B, max_blocks_per_seq]`` (int32) lists each sequence's
    blocks in order and must cover ``context_lens[b]`` tokens (entries past that
    are never read). ``num_splits=None`` picks split-K from batch, heads and SM
    count (``kernels.ops.decode_common.choose_num_splits``). Returns ``out``
    (allocated if not given), dtype of q."""
    return paged_decode_with_tiles(q, k_cache, v_cache, block_tables, context_lens, scale,
                                   num_splits, out, tiles=None)


def paged_decode_with_tiles(q, k_cache, v_cache, block_tables, context_lens, scale=None,
                            num_splits=None, out=None, tiles: DecodeTiles | None = None):
    """``paged_decode_attention`` with an explicit launch shape (tests, tuning)."""
    check_decode_inputs(_WHERE, q, k_cache, v_cache, context_lens, out)
    _check_block_tables(q, k_cache, block_tables)
    return checked_launch(_WHERE, q, k_cache, v_cache, context_lens, block_tables, paged=True, scale=scale,
                          num_splits=num_splits, max_context_tokens=block_tables.shape[1] * k_cache.shape[1],
                          out=out, tiles=tiles)
