"""Contiguous decode attention: one new query token per sequence against a KV
cache held as one linear buffer of token slots, each sequence in one range of
consecutive slots (an Orca / FasterTransformer reservation).

Two ways to give the cache:

* ``k_cache [num_slots, Hkv, D]`` with ``seq_starts`` (int64 ``[B]``, each
  sequence's first slot) -- the real engine's layout, addressed at the
  contiguous KV manager's own reservation offsets;
* ``k_cache [B, max_len, Hkv, D]``, one slab per sequence (``seq_starts``
  left out) -- the same buffer with ``seq_starts[b] = b * max_len``.

Same kernel body, tiles, split-K and GQA handling as ``kernels.ops.paged_decode``
(see ``kernels.ops.decode_common``); only the row address differs. The torch
reference is ``kernels.ops.reference.contiguous_decode_ref``.
"""
from __future__ import annotations

import torch

from kernels.ops.decode_common import DecodeTiles, check_decode_inputs, checked_launch, invalid

_WHERE = "contiguous_decode_attention"


def contiguous_decode_attention(q, k_cache, v_cache, context_lens, scale=None, num_splits=None,
                                out=None, seq_starts=None, max_context_tokens=None):
    """Attention of ``q [B, Hq, D]`` over each sequence's first ``context_lens[b]``
    cached tokens. With ``seq_starts`` the caches are ``[num_slots, Hkv, D]``
    and ``max_context_tokens`` (the longest context any sequence may reach)
    bounds the split-K choice, which then depends on nothing the data holds;
    without, they are ``[B, max_len, Hkv, D]``. ``num_splits=None`` picks
    split-K from batch, heads and SM count. Returns ``out`` (allocated if not
    given), dtype of q."""
    return contiguous_decode_with_tiles(q, k_cache, v_cache, context_lens, scale, num_splits,
                                        out, None, seq_starts, max_context_tokens)


def contiguous_decode_with_tiles(q, k_cache, v_cache, context_lens, scale=None,
                                 num_splits=None, out=None, tiles: DecodeTiles | None = None,
                                 seq_starts=None, max_context_tokens=None):
    """``contiguous_decode_attention`` with an explicit launch shape (tests, tuning)."""
    batch = q.shape[0] if isinstance(q, torch.Tensor) and q.dim() == 3 else None
    if seq_starts is None:
        if not (isinstance(k_cache, torch.Tensor) and k_cache.dim() == 4 and k_cache.shape[0] == batch):
            got = tuple(k_cache.shape) if isinstance(k_cache, torch.Tensor) else type(k_cache).__name__
            raise invalid(_WHERE, f"k_cache {got} must be [{batch}, max_len, num_kv_heads, head_dim] "
                                  f"(one slab per sequence of q), or pass seq_starts")
        if k_cache.stride(0) % k_cache.stride(1) or v_cache.stride(0) != k_cache.stride(0) \
                or v_cache.stride(1) != k_cache.stride(1):
            raise invalid(_WHERE, "k_cache and v_cache slabs must be views of one linear buffer each "
                                  "(sequence stride a multiple of the token stride, the same for both)")
        max_context_tokens = k_cache.shape[1]
        per_seq = k_cache.stride(0) // k_cache.stride(1)
        seq_starts = torch.arange(batch, device=k_cache.device, dtype=torch.int64) * per_seq
        k_lin, v_lin = (torch.as_strided(t, (1, batch * per_seq, *t.shape[2:]),
                                         (0, t.stride(1), t.stride(2), t.stride(3))) for t in (k_cache, v_cache))
    else:
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not (isinstance(t, torch.Tensor) and t.dim() == 3):
                raise invalid(_WHERE, f"with seq_starts, {name} must be [num_slots, num_kv_heads, head_dim]")
        if not (isinstance(seq_starts, torch.Tensor) and seq_starts.dim() == 1
                and seq_starts.dtype == torch.int64 and seq_starts.shape[0] == batch
                and seq_starts.device == q.device and seq_starts.is_contiguous()):
            raise invalid(_WHERE, f"seq_starts must be a contiguous 1-d int64 tensor [{batch}] on q's device")
        if not (isinstance(max_context_tokens, int) and max_context_tokens >= 1):
            raise invalid(_WHERE, f"with seq_starts, max_context_tokens must be an int >= 1, "
                                  f"got {max_context_tokens!r}")
        k_lin, v_lin = k_cache.unsqueeze(0), v_cache.unsqueeze(0)
    check_decode_inputs(_WHERE, q, k_lin, v_lin, context_lens, out)
    return checked_launch(_WHERE, q, k_lin, v_lin, context_lens, seq_starts, paged=False, scale=scale,
                          num_splits=num_splits, max_context_tokens=max_context_tokens, out=out, tiles=tiles)
