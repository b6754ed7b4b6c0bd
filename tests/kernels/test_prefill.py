"""Prefill attention kernel under the Triton CPU interpreter, against prefill_ref."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # harmless when conftest already set it

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels.ops.prefill import (  # noqa: E402
    PrefillTiles,
    pick_tiles,
    prefill_attention,
    prefill_with_tiles,
)
from kernels.ops.reference import prefill_ref  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _packed(lengths, num_heads, num_kv_heads, head_dim, dtype, gen):
    total = sum(lengths)
    q = torch.randn(total, num_heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def _paged_cache(context_lens, num_kv_heads, head_dim, block_size, dtype, gen):
    """Caches whose unused blocks and unused slots hold NaN, with shuffled tables."""
    need = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(need) + 3
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(context_lens), max(max(need), 1), dtype=torch.int32)
    used = 0
    for b, n in enumerate(context_lens):
        ids = perm[used : used + need[b]]
        used += need[b]
        tables[b, : need[b]] = ids.to(torch.int32)
        for j, blk in enumerate(ids.tolist()):
            filled = min(block_size, n - j * block_size)
            kv = torch.randn(2, filled, num_kv_heads, head_dim, generator=gen).to(dtype)
            k_cache[blk, :filled], v_cache[blk, :filled] = kv[0], kv[1]
    return k_cache, v_cache, tables, torch.tensor(context_lens, dtype=torch.int32)


def _rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


CASES = [(torch.float32, 2, 2), (torch.float32, 4, 1), (torch.float32, 3, 1),
         (torch.float16, 3, 1)]   # GQA groups 1, 4 and 3


@pytest.mark.parametrize("dtype,num_heads,num_kv_heads", CASES)
def test_varlen_matches_reference(dtype, num_heads, num_kv_heads):
    gen = torch.Generator().manual_seed(num_heads)
    lengths = [1, 31, 32, 33, 1, 70]   # default interpreter tiles are 32 x 32
    q, k, v, cu = _packed(lengths, num_heads, num_kv_heads, 32, dtype, gen)
    out = torch.full_like(q, float("nan"))
    got = prefill_attention(q, k, v, cu, max(lengths), out=out)
    assert got is out
    assert not torch.isnan(out).any()
    assert _rel_err(out, prefill_ref(q, k, v, cu)) < TOL[dtype]


@pytest.mark.parametrize("dtype,num_heads,num_kv_heads", CASES)
def test_paged_context_matches_reference(dtype, num_heads, num_kv_heads):
    gen = torch.Generator().manual_seed(7 + num_heads)
    lengths, contexts = [1, 17, 40, 5], [0, 13, 36, 1]   # 13 and 1: partial last block
    q, k, v, cu = _packed(lengths, num_heads, num_kv_heads, 32, dtype, gen)
    kc, vc, tables, ctx = _paged_cache(contexts, num_kv_heads, 32, 8, dtype, gen)
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, k, v, cu, max(lengths), k_cache=kc, v_cache=vc,
                      block_tables=tables, context_lens=ctx, out=out)
    assert not torch.isnan(out).any()
    ref = prefill_ref(q, k, v, cu, k_cache=kc, v_cache=vc, block_tables=tables,
                      context_lens=ctx)
    assert _rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("tiles", [PrefillTiles(16, 16, 4, 1), PrefillTiles(64, 32, 4, 1)])
def test_tile_shapes_and_head_dim_64(tiles):
    gen = torch.Generator().manual_seed(3)
    bm = tiles.block_m
    lengths, contexts = [bm - 1, bm, bm + 1, 2], [5, 0, bm, bm + 6]
    q, k, v, cu = _packed(lengths, 2, 1, 64, torch.float32, gen)
    kc, vc, tables, ctx = _paged_cache(contexts, 1, 64, 16, torch.float32, gen)
    out = prefill_with_tiles(q, k, v, cu, bm + 1, k_cache=kc, v_cache=vc, block_tables=tables,
                             context_lens=ctx, tiles=tiles)
    ref = prefill_ref(q, k, v, cu, k_cache=kc, v_cache=vc, block_tables=tables,
                      context_lens=ctx)
    assert _rel_err(out, ref) < TOL[torch.float32]


def test_constant_keys_give_running_mean_of_values():
    """Equal scores: token i of a prompt outputs the mean of values 0..i."""
    gen = torch.Generator().manual_seed(0)
    q, _, v, cu = _packed([3, 2], 2, 1, 16, torch.float32, gen)
    k = torch.zeros_like(v)
    out = prefill_attention(q, k, v, cu, 3, scale=0.5)
    expect = torch.cat([v[:3].cumsum(0) / torch.arange(1, 4)[:, None, None],
                        v[3:].cumsum(0) / torch.arange(1, 3)[:, None, None]])
    torch.testing.assert_close(out, expect.expand(-1, 2, -1), rtol=1e-6, atol=1e-6)
    assert torch.equal(out[0, 0], v[0, 0]) and torch.equal(out[3, 1], v[3, 0])


def test_strided_views_of_fused_qkv():
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(40, 8 + 2 + 2, 32, generator=gen)
    q, k, v = qkv[:, :8], qkv[:, 8:10], qkv[:, 10:]
    cu = torch.tensor([0, 25, 40], dtype=torch.int32)
    out = prefill_attention(q, k, v, cu, 25)
    assert _rel_err(out, prefill_ref(q, k, v, cu)) < TOL[torch.float32]


def test_empty_batch_returns_empty_output():
    q = torch.empty(0, 4, 32)
    kv = torch.empty(0, 2, 32)
    cu = torch.zeros(3, dtype=torch.int32)
    assert prefill_attention(q, kv, kv, cu, 0).shape == (0, 4, 32)


def _args():
    gen = torch.Generator().manual_seed(1)
    q, k, v, cu = _packed([3, 5], 4, 2, 32, torch.float32, gen)
    return dict(q=q, k=k, v=v, cu_seqlens=cu, max_seqlen=5)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(q=a["q"].half()), "k.dtype"),
    (lambda a: a.update(q=a["q"].to(torch.float64)), "allowed: float16, bfloat16, float32"),
    (lambda a: a.update(k=a["k"][:, :1].expand(-1, 3, -1)), "differ in shape"),
    (lambda a: a.update(k=a["k"].repeat(1, 3, 1)[:, :3], v=a["v"].repeat(1, 3, 1)[:, :3]),
     "multiple of kv heads"),
    (lambda a: a.update(q=a["q"][..., :24], k=a["k"][..., :24], v=a["v"][..., :24]),
     "power of two"),
    (lambda a: a.update(q=a["q"].transpose(1, 2).contiguous().transpose(1, 2)),
     "contiguous in head_dim"),
    (lambda a: a.update(cu_seqlens=a["cu_seqlens"].long()), "cu_seqlens"),
    (lambda a: a.update(max_seqlen=0), "max_seqlen"),
    (lambda a: a.update(max_seqlen=5.0), "max_seqlen"),
    (lambda a: a.update(out=torch.empty(8, 4, 16)), "out must match q"),
    (lambda a: a.update(k_cache=torch.zeros(4, 8, 2, 32)), "pass all four or none"),
    (lambda a: a.update(scale=float("nan")), "scale"),
])
def test_wrapper_rejects_bad_inputs(change, match):
    args = _args()
    change(args)
    with pytest.raises(ValueError, match=match):
        prefill_attention(**args)


def test_wrapper_rejects_bad_cache():
    args = _args()
    gen = torch.Generator().manual_seed(2)
    kc, vc, tables, ctx = _paged_cache([4, 9], 2, 32, 8, torch.float32, gen)
    with pytest.raises(ValueError, match=r"k_cache \(\d+, 8, 2, 16\)"):
        prefill_attention(**args, k_cache=kc[..., :16], v_cache=vc, block_tables=tables,
                          context_lens=ctx)
    with pytest.raises(ValueError, match="block_tables must be a 2-d int32"):
        prefill_attention(**args, k_cache=kc, v_cache=vc, block_tables=tables.long(),
                          context_lens=ctx)
    with pytest.raises(ValueError, match="block_tables has 1 rows for 2 sequences"):
        prefill_attention(**args, k_cache=kc, v_cache=vc, block_tables=tables[:1],
                          context_lens=ctx[:1])


def test_tile_rule_and_tile_shape_check():
    assert pick_tiles(128, interpret=False) == PrefillTiles(64, 64, 4, 3)
    assert pick_tiles(64, interpret=False) == PrefillTiles(128, 64, 8, 3)
    assert pick_tiles(128, interpret=True) == PrefillTiles(32, 32, 4, 1)
    with pytest.raises(ValueError, match="block_m must be a multiple of block_n"):
        prefill_with_tiles(**_args(), tiles=PrefillTiles(16, 32, 4, 1))
