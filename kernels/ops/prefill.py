"""Prefill attention: causal flash attention over packed prompts, with optional
paged context, grouped-query heads, fp16/bf16 (fp32 for CPU checks).

One program computes one tile of ``BLOCK_M`` query tokens of one sequence for
one query head. It keeps its Q tile in registers, streams K/V tiles through an
online softmax in fp32, and walks three key ranges, each with only the masks it
needs:

1. the sequence's cached context (paged, gathered through the block table; all
   visible to every new token; only the last tile is partial),
2. new tokens strictly before the tile's first query (fully visible: no mask),
3. the diagonal tiles, masked causally; tiles past the diagonal are skipped.

GQA: a program per (q-tile, q-head) rather than per (q-tile, kv-head). Keeping
all heads of a group in one program would need ``group`` fp32 accumulators of
``BLOCK_M x D`` (4 x 64 KiB at llama-3-8b geometry) or stacking heads into the
M dimension, which shrinks the token extent of the tile and complicates the
causal masks. Prefill is compute-bound (each K/V byte fetched feeds
``BLOCK_M`` query rows), so instead the query heads of a group are launched
next to each other (grid axis 0) and their repeated K/V reads come from L2.
Heavy tiles (late in a prompt) launch first to shorten the tail.

The torch reference is ``kernels.ops.reference.prefill_ref``; run
``python -m kernels.ops.prefill --tune`` on a GPU to validate and time tile variants
(``kernels/results/prefill_tuning.md`` holds the numbers behind ``pick_tiles``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class PrefillTiles:
    """Launch shape of the kernel; ``block_m`` must be a multiple of ``block_n``."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def pick_tiles(head_dim: int, interpret: bool) -> PrefillTiles:
    """Tile rule from the H100 sweep (kernels/results/prefill_tuning.md): at
    8 x 2048 tokens, bf16, D 128 ran fastest as 64 x 64 tiles on 4 warps
    (0.738 ms; 128 x 128 on 8 warps 0.755, 128 x 64 on 8 warps 0.771) and D 64 as
    128 x 64 on 8 warps (0.397 ms). 128-row tiles on 4 warps spill at D 128.

    Under the CPU interpreter small tiles keep tests fast and exercise the
    multi-tile paths."""
    if interpret:
        return PrefillTiles(block_m=32, block_n=32, num_warps=4, num_stages=1)
    if head_dim <= 64:
        return PrefillTiles(block_m=128, block_n=64, num_warps=8, num_stages=3)
    return PrefillTiles(block_m=64, block_n=64, num_warps=4, num_stages=3)


@triton.jit
def _softmax_step(acc, m_i, l_i, qk, v, qk_scale):
    """Fold one tile of raw scores ``qk`` (masked = -inf) and its values into the
    running max ``m_i`` (log2 units), denominator ``l_i`` and accumulator ``acc``.
    Scaling happens inside the exponent's argument (one FMA per score)."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i


@triton.jit
def _attend_paged_context(acc, m_i, l_i, q, qk_scale, KC, VC, table, ctx_len, kv_head,
                          stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                          HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """Fold the ``ctx_len`` cached tokens of one sequence (all visible), gathered
    token by token through its block-table row ``table``; masked loads keep the
    unused slots of the last block (and any free block) out of the sums."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for n0 in range(0, ctx_len, BLOCK_N):
        pos = n0 + offs_n
        valid = pos < ctx_len
        block = tl.load(table + pos // PAGE_SIZE, mask=valid, other=0).to(tl.int64)
        slot = pos % PAGE_SIZE
        k_rows = block * stride_kcb + slot * stride_kct + kv_head * stride_kch
        v_rows = block * stride_vcb + slot * stride_vct + kv_head * stride_vch
        k = tl.load(KC + k_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(VC + v_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        qk = tl.where(valid[None, :], tl.dot(q, tl.trans(k)), float("-inf"))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, qk, v, qk_scale)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["num_m_tiles"])
def _prefill_kernel(
    Q, K, V, O, CU_SEQLENS,
    KC, VC, BLOCK_TABLES, CONTEXT_LENS,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch, stride_bt,
    qk_scale, num_m_tiles,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    HAS_CONTEXT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    tile = num_m_tiles - 1 - tl.program_id(2)
    start = tl.load(CU_SEQLENS + seq)
    seq_len = tl.load(CU_SEQLENS + seq + 1) - start
    m0 = tile * BLOCK_M
    if m0 >= seq_len:
        return
    kv_head = head // GROUP
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_q = (start + offs_m).to(tl.int64)
    q = tl.load(Q + row_q[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=offs_m[:, None] < seq_len, other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if HAS_CONTEXT:
        acc, m_i, l_i = _attend_paged_context(
            acc, m_i, l_i, q, qk_scale, KC, VC, BLOCK_TABLES + seq.to(tl.int64) * stride_bt,
            tl.load(CONTEXT_LENS + seq), kv_head, stride_kcb, stride_kct, stride_kch,
            stride_vcb, stride_vct, stride_vch, HEAD_DIM, PAGE_SIZE, BLOCK_N)

    k_base = K + kv_head * stride_kh + offs_d[None, :]
    v_base = V + kv_head * stride_vh + offs_d[None, :]
    for n0 in range(0, m0, BLOCK_N):
        rows = (start + n0 + offs_n).to(tl.int64)
        k = tl.load(k_base + rows[:, None] * stride_kt)
        v = tl.load(v_base + rows[:, None] * stride_vt)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, tl.dot(q, tl.trans(k)), v, qk_scale)

    for n0 in range(m0, tl.minimum(m0 + BLOCK_M, seq_len), BLOCK_N):
        pos = n0 + offs_n
        rows = (start + pos).to(tl.int64)
        in_seq = pos[:, None] < seq_len
        k = tl.load(k_base + rows[:, None] * stride_kt, mask=in_seq, other=0.0)
        v = tl.load(v_base + rows[:, None] * stride_vt, mask=in_seq, other=0.0)
        qk = tl.where(pos[None, :] <= offs_m[:, None], tl.dot(q, tl.trans(k)), float("-inf"))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, qk, v, qk_scale)

    out = acc / l_i[:, None]
    tl.store(O + row_q[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=offs_m[:, None] < seq_len)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"prefill_attention: {message}")


def _check_inputs(q, k, v, cu_seqlens, max_seqlen, out) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require(isinstance(t, torch.Tensor) and t.dim() == 3,
                 f"{name} must be a 3-d tensor [tokens, heads, head_dim], got "
                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        _require(t.dtype in SUPPORTED_DTYPES,
                 f"{name}.dtype is {t.dtype}; allowed: float16, bfloat16, float32")
        _require(t.dtype == q.dtype, f"{name}.dtype {t.dtype} differs from q.dtype {q.dtype}")
        _require(t.device == q.device, f"{name} is on {t.device}, q on {q.device}")
        _require(t.stride(2) == 1,
                 f"{name} must be contiguous in head_dim (stride 1), got {t.stride(2)}")
    num_tokens, num_heads, head_dim = q.shape
    _require(k.shape == v.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in shape")
    _require(k.shape[0] == num_tokens and k.shape[2] == head_dim,
             f"k/v {tuple(k.shape)} must be [{num_tokens}, num_kv_heads, {head_dim}] to match q")
    num_kv_heads = k.shape[1]
    _require(num_kv_heads > 0 and num_heads % num_kv_heads == 0,
             f"q heads ({num_heads}) must be a multiple of kv heads ({num_kv_heads})")
    _require(16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0,
             f"head_dim {head_dim} must be a power of two in [16, 256]")
    _require(isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1
             and cu_seqlens.dtype == torch.int32 and cu_seqlens.numel() >= 2,
             "cu_seqlens must be a 1-d int32 tensor [batch + 1]")
    _require(cu_seqlens.device == q.device and cu_seqlens.is_contiguous(),
             "cu_seqlens must be contiguous and on q's device")
    lowest = 1 if num_tokens else 0
    _require(isinstance(max_seqlen, int) and not isinstance(max_seqlen, bool)
             and lowest <= max_seqlen <= num_tokens,
             f"max_seqlen must be an int in [{lowest}, {num_tokens}] (total tokens), "
             f"got {max_seqlen!r}")
    if out is not None:
        _require(isinstance(out, torch.Tensor) and out.shape == q.shape and out.dtype == q.dtype
                 and out.device == q.device and out.stride(2) == 1,
                 f"out must match q: shape {tuple(q.shape)}, dtype {q.dtype}, stride 1 in head_dim")


def _check_cache(q, k, cu_seqlens, k_cache, v_cache, block_tables, context_lens) -> None:
    given = [x is not None for x in (k_cache, v_cache, block_tables, context_lens)]
    _require(all(given), "k_cache, v_cache, block_tables and context_lens go together: "
                         "pass all four or none")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _require(t.dim() == 4 and t.shape[2:] == k.shape[1:],
                 f"{name} {tuple(t.shape)} must be [num_blocks, block_size, "
                 f"{k.shape[1]}, {k.shape[2]}]")
        _require(t.dtype == q.dtype and t.device == q.device,
                 f"{name} must have q's dtype {q.dtype} and device {q.device}")
        _require(t.stride(3) == 1, f"{name} must be contiguous in head_dim")
    _require(k_cache.shape == v_cache.shape, "k_cache and v_cache differ in shape")
    batch = cu_seqlens.numel() - 1
    for name, t, dims in (("block_tables", block_tables, 2), ("context_lens", context_lens, 1)):
        _require(t.dtype == torch.int32 and t.dim() == dims and t.device == q.device,
                 f"{name} must be a {dims}-d int32 tensor on q's device")
        _require(t.shape[0] == batch, f"{name} has {t.shape[0]} rows for {batch} sequences")
    _require(block_tables.stride(1) == 1, "block_tables must be contiguous in its last dim")


def prefill_attention(q, k, v, cu_seqlens, max_seqlen, scale=None, k_cache=None,
                      v_cache=None, block_tables=None, context_lens=None, out=None):
    """Causal attention over packed prompts ``q [T, Hq, D]``, ``k/v [T, Hkv, D]``
    split by ``cu_seqlens`` (int32 ``[B + 1]``); ``max_seqlen`` is the longest new
    segment (the caller's promise; shorter values drop tiles). With a paged cache
    each sequence first sees its ``context_lens[b]`` cached tokens. Returns
    ``out`` (allocated if not given), dtype of q."""
    return prefill_with_tiles(q, k, v, cu_seqlens, max_seqlen, scale, k_cache, v_cache,
                              block_tables, context_lens, out, tiles=None)


def prefill_with_tiles(q, k, v, cu_seqlens, max_seqlen, scale=None, k_cache=None,
                       v_cache=None, block_tables=None, context_lens=None, out=None,
                       tiles: PrefillTiles | None = None):
    """``prefill_attention`` with an explicit launch shape (tests, tuning)."""
    _check_inputs(q, k, v, cu_seqlens, max_seqlen, out)
    cache_args = (k_cache, v_cache, block_tables, context_lens)
    has_context = any(x is not None for x in cache_args)
    if has_context:
        _check_cache(q, k, cu_seqlens, *cache_args)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else float(scale)
    _require(math.isfinite(scale) and scale > 0,
             f"scale must be a positive finite float, got {scale}")
    tiles = tiles or pick_tiles(q.shape[2], os.environ.get("TRITON_INTERPRET") == "1")
    _require(tiles.block_m % tiles.block_n == 0, f"block_m must be a multiple of block_n: {tiles}")
    out = torch.empty_like(q) if out is None else out
    if q.shape[0] == 0:
        return out
    # Without context the cache pointers are never read: pass any tensors.
    kc, vc, bt, cl = cache_args if has_context else (k, v, cu_seqlens, cu_seqlens)
    kcs = k_cache.stride()[:3] if has_context else (0, 0, 0)
    vcs = v_cache.stride()[:3] if has_context else (0, 0, 0)
    num_m_tiles = triton.cdiv(max_seqlen, tiles.block_m)
    grid = (q.shape[1], cu_seqlens.numel() - 1, num_m_tiles)
    _prefill_kernel[grid](
        q, k, v, out, cu_seqlens, kc, vc, bt, cl,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), *kcs, *vcs, bt.stride(0) if has_context else 0,
        scale * 1.4426950408889634, num_m_tiles,
        GROUP=q.shape[1] // k.shape[1], HEAD_DIM=q.shape[2],
        PAGE_SIZE=k_cache.shape[1] if has_context else 1, HAS_CONTEXT=has_context,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return out


# --- GPU validation and tile sweep: python -m kernels.ops.prefill --tune ---------------

SWEEP = [PrefillTiles(*t) for t in [
    (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2),
    (128, 128, 8, 3)]]
SWEEP_D64 = [PrefillTiles(*t) for t in [
    (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3)]]


def _inputs(lengths, contexts, num_heads, num_kv_heads, head_dim, dtype, page_size=16,
            dev="cuda"):
    """Random packed prompts and, with ``contexts``, a NaN-poisoned paged cache
    behind a shuffled block table."""
    total = sum(lengths)
    q = torch.randn(total, num_heads, head_dim, device=dev, dtype=dtype)
    k, v = (torch.randn(total, num_kv_heads, head_dim, device=dev, dtype=dtype) for _ in "kv")
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    if contexts is None:
        return q, k, v, cu, {}
    need = [-(-n // page_size) for n in contexts]
    shape = (sum(need) + 4, page_size, num_kv_heads, head_dim)
    k_cache, v_cache = (torch.full(shape, float("nan"), device=dev, dtype=dtype) for _ in "kv")
    ids = torch.randperm(shape[0], device=dev)
    tables = torch.zeros(len(contexts), max(max(need), 1), dtype=torch.int32, device=dev)
    for b, n in enumerate(contexts):
        blocks = ids[sum(need[:b]) : sum(need[: b + 1])]
        tables[b, : need[b]] = blocks.int()
        for cache in (k_cache, v_cache):
            fresh = torch.randn(need[b] * page_size, *shape[2:], device=dev, dtype=dtype)
            fresh[n:] = float("nan")
            cache[blocks] = fresh.view(need[b], *shape[1:])
    cache = dict(k_cache=k_cache, v_cache=v_cache, block_tables=tables,
                 context_lens=torch.tensor(contexts, dtype=torch.int32, device=dev))
    return q, k, v, cu, cache


def _rel_err(out, ref) -> float:
    if torch.isnan(out).any():
        return float("nan")
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _validate() -> bool:
    from kernels.ops.reference import prefill_ref

    cases = [  # (dtype, lengths, contexts, Hq, Hkv, D, page)
        (torch.float16, [1, 127, 128, 129, 1000, 2048], None, 32, 8, 128, 16),
        (torch.bfloat16, [1, 127, 128, 129, 1000, 2048], None, 32, 8, 128, 16),
        (torch.bfloat16, [1, 127, 129, 700], [0, 300, 17, 1500], 32, 8, 128, 16),
        (torch.float16, [64, 65, 777], [0, 33, 100], 8, 8, 64, 16),
        (torch.bfloat16, [1, 500, 63], [100, 0, 31], 12, 4, 64, 32),
        (torch.float16, [300, 5], [257, 1], 6, 2, 128, 8),
    ]
    ok = True
    for dtype, lengths, contexts, hq, hkv, d, page in cases:
        q, k, v, cu, cache = _inputs(lengths, contexts, hq, hkv, d, dtype, page)
        out = torch.full_like(q, float("nan"))
        prefill_attention(q, k, v, cu, max(lengths), out=out, **cache)
        torch.cuda.synchronize()
        err = _rel_err(out, prefill_ref(q, k, v, cu, **cache))
        passed = err < (1e-2 if dtype == torch.bfloat16 else 2e-3)
        ok &= passed
        print(f"validate {str(dtype)[6:]:8s} H {hq}/{hkv} D {d} lens {lengths} ctx {contexts}: "
              f"rel err {err:.2e} {'ok' if passed else 'FAIL'}")
    return ok


def _sdpa_times(q, k, v, batch, seqlen, bench) -> dict[str, float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def bhsd(x):
        return x.view(batch, seqlen, x.shape[1], x.shape[2]).transpose(1, 2).contiguous()

    qb, kb, vb = bhsd(q), bhsd(k), bhsd(v)
    group = q.shape[1] // k.shape[1]
    ke, ve = kb.repeat_interleave(group, 1), vb.repeat_interleave(group, 1)
    runs = {"sdpa flash, enable_gqa": (SDPBackend.FLASH_ATTENTION, kb, vb, True),
            "sdpa flash, expanded kv": (SDPBackend.FLASH_ATTENTION, ke, ve, False),
            "sdpa cudnn, expanded kv": (SDPBackend.CUDNN_ATTENTION, ke, ve, False)}
    times = {}
    for name, (backend, kk, vv, gqa) in runs.items():
        try:
            with sdpa_kernel(backend):
                times[name] = bench(lambda: sdpa(qb, kk, vv, is_causal=True, enable_gqa=gqa))
        except RuntimeError as err:
            print(f"{name}: unavailable ({str(err).splitlines()[0][:100]})")
    return times


def _last_compile_report() -> str:
    """Registers, spills and shared memory of the most recently compiled variant."""
    try:
        cache = _prefill_kernel.device_caches[torch.cuda.current_device()][0]
        kernel = list(cache.values())[-1]
        return f" regs {kernel.n_regs} spills {kernel.n_spills} smem {kernel.metadata.shared}"
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""


def _sweep(variants, head_dim, with_sdpa, batch=8, seqlen=2048, dev="cuda",
           dtype=torch.bfloat16):
    """[(label, median ms, GFLOP)] per run at llama-3-8b heads."""
    from triton.testing import do_bench

    from kernels.ops.reference import prefill_ref

    def bench(fn):
        return do_bench(fn, warmup=50, rep=300, return_mode="median")

    gflop = 4 * batch * 32 * head_dim * seqlen**2 / 2 / 1e9
    q, k, v, cu, _ = _inputs([seqlen] * batch, None, 32, 8, head_dim, dtype, dev=dev)
    ref = prefill_ref(q, k, v, cu)
    rows = []
    for tiles in variants:
        label = (f"triton D{head_dim} {tiles.block_m}x{tiles.block_n} "
                 f"w{tiles.num_warps} s{tiles.num_stages}")
        try:
            out = prefill_with_tiles(q, k, v, cu, seqlen, tiles=tiles)
            label += f" err {_rel_err(out, ref):.1e}{_last_compile_report()}"
            ms = bench(lambda: prefill_with_tiles(q, k, v, cu, seqlen, out=out, tiles=tiles))
            rows.append((label, ms, gflop))
        except Exception as exc:  # out of shared memory or registers: report, go on
            print(f"{label}: failed ({type(exc).__name__}: {str(exc)[:100]})")
    if with_sdpa:
        sdpa = _sdpa_times(q, k, v, batch, seqlen, bench)
        rows += [(name, ms, gflop) for name, ms in sdpa.items()]
        rows.append(("triton, default rule",
                     bench(lambda: prefill_attention(q, k, v, cu, seqlen)), gflop))
        new = seqlen // 4
        qc, kc, vc, cuc, cache = _inputs([new] * batch, [seqlen - new] * batch, 32, 8,
                                         head_dim, dtype, dev=dev)
        rows.append((f"triton, {new} new on {seqlen - new} paged ctx",
                     bench(lambda: prefill_attention(qc, kc, vc, cuc, new, **cache)),
                     gflop * 7 / 16))
    return rows


def _tune_main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Validate and time the prefill kernel on a GPU.")
    parser.add_argument("--tune", action="store_true", help="also time the tile sweep")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    rows = []
    if args.tune:  # first, so that each variant's compile report is its own
        rows = _sweep(SWEEP, 128, with_sdpa=True) + _sweep(SWEEP_D64, 64, with_sdpa=False)
    ok = _validate()
    if rows:
        print("\n8 x 2048-token causal prefill, 32 q / 8 kv heads, bf16 (D128: 275 GFLOP)")
        for name, ms, gflop in rows:
            print(f"{name:68s} {ms:7.3f} ms {gflop / ms:6.1f} TFLOP/s")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    _tune_main()
