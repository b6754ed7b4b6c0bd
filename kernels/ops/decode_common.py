"""The decode-attention kernel body shared by the paged and contiguous layouts.

One query token per sequence. A program handles one (split, kv head, sequence):
it loads the ``group`` query heads that read this KV head as one
``[GROUP_PAD, HEAD_DIM]`` tile, then streams the split's key/value tokens in
tiles of ``BLOCK_N``. Each K/V tile is loaded once and used by every head of
the group through two ``tl.dot`` products (``[GROUP_PAD, D] x [D, BLOCK_N]``
for the scores, ``[GROUP_PAD, BLOCK_N] x [BLOCK_N, D]`` for the values), with
an online softmax in fp32.

The two layouts differ only in how a token's row is addressed (``PAGED``):

* paged: ``block_tables[b, tok // PAGE_SIZE] * stride_block + (tok % PAGE_SIZE) * stride_slot``
  -- a tile gathers the block id of each of its tokens, so it may span several
  blocks (small pages) or part of one (large pages). The ids of tile i + 1 are
  loaded during tile i, so no K/V load waits on a table load of its own
  iteration and the loop pipelines like the contiguous one;
* contiguous: ``(first_slot[b] + tok) * stride_tok`` -- the cache is one
  linear buffer of token slots and each sequence starts where its reservation
  does (a ``[B, max_len]`` slab is the special case ``first_slot[b] = b * max_len``).

Offsets that multiply a block id or a sequence index are int64: a pool of a
few hundred thousand blocks already passes 2**31 elements.

Split-K ("flash-decoding"): with few sequences the (kv head, sequence) grid
leaves most SMs idle, so each sequence's tokens are cut into ``num_splits``
ranges (a whole number of tiles each, sized from that sequence's own length).
Each split writes its normalised partial output and its log-sum-exp (base 2)
in fp32; ``_combine_splits_kernel`` then weights the partials by
``2**(lse_s - max lse)``. With one split the first kernel writes the output
directly and no partials exist.

A sequence of length 0 gets an all-zero output (what the reference's empty
softmax-weighted sum gives); a split with no tokens gets lse = -inf and a zero
partial, so it carries no weight.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_SPLITS = 256
# Smallest share of one sequence worth a split of its own: below this the
# partial write + combine costs more than the extra parallelism buys.
MIN_TOKENS_PER_SPLIT = 256
# Programs per SM the heuristic aims for (H100 sweeps, kernels/NOTES.md).
TARGET_PROGRAMS_PER_SM = 2
INTERPRETER_NUM_SMS = 4


@dataclass(frozen=True)
class DecodeTiles:
    """Launch shape of the split kernel: tokens per tile, warps, pipeline depth."""

    block_n: int
    num_warps: int
    num_stages: int


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pick_tiles(head_dim: int) -> DecodeTiles:
    """The launch shape measured over the whole H100 grid
    (kernels/results/h100/, kernels/NOTES.md); tiny tiles under the CPU
    interpreter so small tests still cross tile and page boundaries."""
    if interpreting():
        return DecodeTiles(block_n=16, num_warps=4, num_stages=1)
    if head_dim <= 128:
        return DecodeTiles(block_n=64, num_warps=4, num_stages=2)
    return DecodeTiles(block_n=32, num_warps=4, num_stages=2)


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_NUM_SMS
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    """SM count of a CUDA device (a fixed property; cached because the wrappers
    ask on every launch)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_num_splits(batch: int, num_kv_heads: int, max_context_tokens: int,
                      sm_count: int) -> int:
    """Splits per sequence so that about ``TARGET_PROGRAMS_PER_SM`` programs run
    on every SM, never cutting a sequence into pieces under
    ``MIN_TOKENS_PER_SPLIT`` tokens (the bound uses the longest possible
    context: block-table width x block size, or the cache's max_len).

    Examples on 132 SMs: batch 1 x 8 kv heads x 32k tokens -> 33 splits;
    batch 64 x 8 kv heads -> 1 split (512 programs already cover the chip)."""
    programs = batch * num_kv_heads
    target = TARGET_PROGRAMS_PER_SM * sm_count
    if programs == 0 or programs >= target:
        return 1
    by_occupancy = -(-target // programs)
    by_length = max(1, max_context_tokens // MIN_TOKENS_PER_SPLIT)
    return max(1, min(by_occupancy, by_length, MAX_SPLITS))


@triton.jit
def _split_kv_kernel(
    Q, K, V, OUT, PART_O, PART_LSE, BLOCK_TABLES, CONTEXT_LENS,
    stride_qb, stride_qh,
    stride_k0, stride_k1, stride_kh,
    stride_v0, stride_v1, stride_vh,
    stride_ob, stride_oh, stride_bt,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
    group, num_splits, qk_scale,
    GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.program_id(2)
    context_len = tl.load(CONTEXT_LENS + seq)
    tiles_per_split = tl.cdiv(tl.cdiv(context_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, context_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * group + offs_g
    head_ok = offs_g < group
    q = tl.load(Q + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=head_ok[:, None], other=0.0)

    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh
    if not PAGED:
        # contiguous: BLOCK_TABLES holds each sequence's first token slot
        first = tl.load(BLOCK_TABLES + seq).to(tl.int64)
        k_base += first * stride_k1
        v_base += first * stride_v1
    table = BLOCK_TABLES + seq.to(tl.int64) * stride_bt

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    # Paged: the block ids of tile i + 1 are loaded during tile i, so a K/V load
    # never waits on a block-table load issued in its own iteration.
    if PAGED:
        next_blocks = tl.load(table + (start + offs_n) // PAGE_SIZE, mask=start + offs_n < end,
                              other=0)
    else:
        next_blocks = tl.zeros([BLOCK_N], tl.int32)
    for tile_start in range(start, end, BLOCK_N):
        toks = tile_start + offs_n
        valid = toks < end
        if PAGED:
            block = next_blocks.to(tl.int64)
            ahead = toks + BLOCK_N
            next_blocks = tl.load(table + ahead // PAGE_SIZE, mask=ahead < end, other=0)
            slot = toks % PAGE_SIZE
            k_rows = block * stride_k0 + slot * stride_k1
            v_rows = block * stride_v0 + slot * stride_v1
        else:
            k_rows = toks.to(tl.int64) * stride_k1
            v_rows = toks.to(tl.int64) * stride_v1
        k = tl.load(k_base + k_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + v_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_tokens = l_i > 0.0
    out = acc / tl.where(has_tokens, l_i, 1.0)[:, None]
    if SPLIT:
        lse = tl.where(has_tokens, m_i + tl.math.log2(tl.where(has_tokens, l_i, 1.0)),
                       float("-inf"))
        part = PART_O + seq * stride_pb + split * stride_ps
        tl.store(part + heads[:, None] * stride_ph + offs_d[None, :], out, mask=head_ok[:, None])
        tl.store(PART_LSE + seq * stride_lb + heads * stride_lh + split, lse, mask=head_ok)
    else:
        tl.store(OUT + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=head_ok[:, None])


@triton.jit
def _combine_splits_kernel(
    PART_O, PART_LSE, OUT,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    num_splits,
    HEAD_DIM: tl.constexpr, SPLIT_TILE: tl.constexpr,
):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    offs_s = tl.arange(0, SPLIT_TILE)
    offs_d = tl.arange(0, HEAD_DIM)
    lse_row = PART_LSE + seq * stride_lb + head * stride_lh
    part_row = PART_O + seq * stride_pb + head * stride_ph

    m = tl.full([SPLIT_TILE], float("-inf"), tl.float32)
    for s0 in range(0, num_splits, SPLIT_TILE):
        lse = tl.load(lse_row + s0 + offs_s, mask=s0 + offs_s < num_splits, other=float("-inf"))
        m = tl.maximum(m, lse)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)

    acc = tl.zeros([HEAD_DIM], tl.float32)
    denom = tl.zeros([SPLIT_TILE], tl.float32)
    for s0 in range(0, num_splits, SPLIT_TILE):
        in_range = s0 + offs_s < num_splits
        lse = tl.load(lse_row + s0 + offs_s, mask=in_range, other=float("-inf"))
        weight = tl.math.exp2(lse - m_max)
        part = tl.load(part_row + (s0 + offs_s)[:, None] * stride_ps + offs_d[None, :],
                       mask=in_range[:, None], other=0.0)
        acc += tl.sum(weight[:, None] * part, 0)
        denom += weight
    total = tl.sum(denom, 0)
    out = acc / tl.where(total > 0.0, total, 1.0)
    tl.store(OUT + seq * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty))


def launch_decode(q, k_cache, v_cache, context_lens, block_tables, *, paged: bool,
                  scale: float, num_splits: int, out, tiles: DecodeTiles):
    """Run the split kernel (and the combine kernel when ``num_splits > 1``).
    Inputs are already checked by the layout's wrapper. Paged: ``k_cache`` is
    ``[num_blocks, block_size, Hkv, D]`` and ``block_tables`` int32
    ``[B, max_blocks]``. Contiguous: ``k_cache`` is ``[1, num_slots, Hkv, D]``
    and ``block_tables`` holds each sequence's first slot (int64 ``[B]``)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if batch == 0 or num_heads == 0:
        return out
    group = num_heads // num_kv_heads
    split = num_splits > 1
    part_o = part_lse = out
    if split:
        part_o = torch.empty(batch, num_heads, num_splits, head_dim,
                             dtype=torch.float32, device=q.device)
        part_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    part_strides = (part_o.stride(0), part_o.stride(1), part_o.stride(2),
                    part_lse.stride(0), part_lse.stride(1)) if split else (0, 0, 0, 0, 0)
    _split_kv_kernel[(num_splits, num_kv_heads, batch)](
        q, k_cache, v_cache, out, part_o, part_lse, block_tables, context_lens,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), block_tables.stride(0) if paged else 0,
        *part_strides,
        group, num_splits, scale * math.log2(math.e),
        GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        PAGE_SIZE=k_cache.shape[1] if paged else 1, PAGED=paged, SPLIT=split,
        BLOCK_N=tiles.block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    if split:
        _combine_splits_kernel[(num_heads, batch)](
            part_o, part_lse, out, *part_strides, out.stride(0), out.stride(1), num_splits,
            HEAD_DIM=head_dim, SPLIT_TILE=min(16, triton.next_power_of_2(num_splits)),
            num_warps=4,
        )
    return out


def checked_launch(where: str, q, k_cache, v_cache, context_lens, index, *, paged: bool, scale,
                   num_splits, max_context_tokens: int, out, tiles: DecodeTiles | None):
    """What both wrappers do once their layout's own inputs are checked:
    resolve scale and split-K (bounded by ``max_context_tokens``), allocate
    ``out`` if not given, launch."""
    batch, _, head_dim = q.shape
    scale = resolve_scale(where, scale, head_dim)
    num_splits = resolve_num_splits(where, num_splits, batch, k_cache.shape[2], max_context_tokens, q.device)
    out = torch.empty_like(q) if out is None else out
    return launch_decode(q, k_cache, v_cache, context_lens, index, paged=paged, scale=scale,
                         num_splits=num_splits, out=out, tiles=tiles or pick_tiles(head_dim))


def invalid(where: str, message: str) -> ValueError:
    """The error a wrapper raises for bad input (messages are built only on failure:
    the checks run on every launch)."""
    return ValueError(f"{where}: {message}")


def _describe(t) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def check_dtype_device_head_dim(where: str, name: str, t: torch.Tensor) -> int:
    """``t`` (the tensor the others must match) has a dtype the kernels take,
    lives where they run, and ends in a power-of-two head_dim in [16, 256];
    returns that head_dim. Shared by the attention and cache-write kernels."""
    if t.dtype not in SUPPORTED_DTYPES:
        raise invalid(where, f"{name}.dtype is {t.dtype}; allowed: float16, bfloat16, float32")
    if not (t.device.type == "cuda" or interpreting()):
        raise invalid(where, f"tensors are on {t.device}; the Triton kernels need a CUDA device "
                             "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    head_dim = t.shape[-1]
    if not (16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0):
        raise invalid(where, f"head_dim {head_dim} must be a power of two in [16, 256]")
    return head_dim


def check_decode_inputs(where: str, q, k_cache, v_cache, context_lens, out) -> None:
    """Checks common to both layouts: q ``[B, Hq, D]``, 4-d caches with q's
    dtype, device and head_dim, int32 ``context_lens [B]``, optional ``out``."""
    if not (isinstance(q, torch.Tensor) and q.dim() == 3):
        raise invalid(where, "q must be a 3-d tensor [batch, num_heads, head_dim], got "
                             f"{_describe(q)}")
    head_dim = check_dtype_device_head_dim(where, "q", q)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not (isinstance(t, torch.Tensor) and t.dim() == 4):
            raise invalid(where, f"{name} must be a 4-d tensor, got {_describe(t)}")
        if t.dtype != q.dtype:
            raise invalid(where, f"{name}.dtype {t.dtype} differs from q.dtype {q.dtype}")
        if t.device != q.device:
            raise invalid(where, f"{name} is on {t.device}, q on {q.device}")
        if t.shape[3] != head_dim:
            raise invalid(where, f"{name} head_dim {t.shape[3]} differs from q's {head_dim}")
    if k_cache.shape != v_cache.shape:
        raise invalid(where, f"k_cache {tuple(k_cache.shape)} and v_cache "
                             f"{tuple(v_cache.shape)} differ in shape")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise invalid(where, f"{name} must be contiguous in head_dim (stride 1), "
                                 f"got stride {t.stride(-1)}")
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    if not (num_kv_heads > 0 and num_heads % num_kv_heads == 0):
        raise invalid(where, f"q heads ({num_heads}) must be a multiple of kv heads "
                             f"({num_kv_heads})")
    if not (isinstance(context_lens, torch.Tensor) and context_lens.dim() == 1
            and context_lens.dtype == torch.int32):
        raise invalid(where, f"context_lens must be a 1-d int32 tensor [batch], got "
                             f"{_describe(context_lens)} {getattr(context_lens, 'dtype', '')}".rstrip())
    if context_lens.shape[0] != q.shape[0]:
        raise invalid(where, f"context_lens has {context_lens.shape[0]} entries for batch "
                             f"{q.shape[0]}")
    if not (context_lens.device == q.device and context_lens.is_contiguous()):
        raise invalid(where, "context_lens must be contiguous and on q's device")
    if out is not None:
        if not (isinstance(out, torch.Tensor) and out.shape == q.shape and out.dtype == q.dtype
                and out.device == q.device and out.stride(-1) == 1):
            raise invalid(where, f"out must match q: shape {tuple(q.shape)}, dtype {q.dtype}, "
                                 f"device {q.device}, stride 1 in head_dim")


def resolve_scale(where: str, scale, head_dim: int) -> float:
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
            and math.isfinite(scale) and scale > 0):
        raise invalid(where, f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def resolve_num_splits(where: str, num_splits, batch: int, num_kv_heads: int,
                       max_context_tokens: int, device: torch.device) -> int:
    if num_splits is None:
        return choose_num_splits(batch, num_kv_heads, max_context_tokens, num_sms(device))
    if not (isinstance(num_splits, int) and not isinstance(num_splits, bool)
            and 1 <= num_splits <= MAX_SPLITS):
        raise invalid(where, f"num_splits must be an int in [1, {MAX_SPLITS}] or None, "
                             f"got {num_splits!r}")
    return num_splits
