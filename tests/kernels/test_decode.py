"""Paged and contiguous decode attention under the Triton CPU interpreter."""
import math
import re

import pytest
import torch

from kernels.ops.decode_common import DecodeTiles, choose_num_splits
from kernels.ops.contiguous_decode import contiguous_decode_attention, contiguous_decode_with_tiles
from kernels.ops.paged_decode import paged_decode_attention, paged_decode_with_tiles
from kernels.ops.reference import contiguous_decode_ref, paged_decode_ref
from kernels.harness.validate import TOLERANCE, relative_error
from kernels.harness.validate_cases import DecodeCase, build_decode_inputs


def _nan_like(t):
    return torch.full_like(t, float("nan"))


def _run_both(x, splits, scale=None):
    paged = paged_decode_attention(x.q, x.k_pool, x.v_pool, x.block_tables, x.context_lens,
                                   scale=scale, num_splits=splits, out=_nan_like(x.q))
    contig = contiguous_decode_attention(x.q, x.k_contig, x.v_contig, x.context_lens,
                                         scale=scale, num_splits=splits, out=_nan_like(x.q))
    return paged, contig


CASES = [
    # group 1, 3, 4, 8, 6 (non-powers of two included); block sizes 8..128;
    # lengths 1, block multiples and +-1, partial last blocks.
    DecodeCase("g1 bs8", "float32", 2, 2, 32, 8, (1, 8, 9)),
    DecodeCase("g3 bs16", "float16", 6, 2, 32, 16, (15, 16, 17)),
    DecodeCase("g4 bs32", "float32", 4, 1, 64, 32, (31, 33)),
    DecodeCase("g8 bs64", "float16", 8, 1, 16, 64, (64, 65)),
    DecodeCase("g6 bs128", "float32", 6, 1, 32, 128, (127, 129)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_matches_reference_with_poisoned_memory(case):
    """Free blocks, unused slots and table entries past the context are NaN, and
    so is the output before launch: any NaN after means an unwritten output or a
    forbidden read."""
    x = build_decode_inputs(case, seed=1, device="cpu")
    ref = paged_decode_ref(x.q, x.k_pool, x.v_pool, x.block_tables, x.context_lens)
    for out in _run_both(x, splits=2):
        assert not out.isnan().any()
        assert relative_error(out, ref) <= TOLERANCE[case.dtype]


def test_split_k_gives_the_same_output():
    case = DecodeCase("splits", "float32", 4, 2, 32, 8, (70, 5, 33))
    x = build_decode_inputs(case, seed=2, device="cpu")
    one_paged, one_contig = _run_both(x, splits=1)
    for splits in (2, 3, 8):   # 8 splits of 16-token tiles: some splits are empty
        paged, contig = _run_both(x, splits)
        assert relative_error(paged, one_paged) < 1e-6
        assert relative_error(contig, one_contig) < 1e-6
    assert torch.equal(one_paged, one_contig)   # same body, same tiles: bit-identical


def test_single_token_context_returns_its_value_row():
    """Softmax over one key is exactly 1, so head h gets V of kv head h // group."""
    case = DecodeCase("ctx1", "float32", 6, 2, 32, 16, (1, 1))
    x = build_decode_inputs(case, seed=3, device="cpu")
    for out in _run_both(x, splits=None):
        for b in range(2):
            slot = int(x.block_tables[b, 0]) * 16
            values = x.v_pool.view(-1, 2, 32)[slot]
            assert torch.equal(out[b], values.repeat_interleave(3, dim=0))


def test_identical_keys_average_the_values():
    """Equal scores -> uniform weights: the output is the mean of the values."""
    q = torch.randn(1, 2, 16)
    k = torch.randn(1, 1, 1, 16).expand(1, 40, 1, 16).contiguous()
    v = torch.randn(1, 40, 1, 16)
    lens = torch.tensor([37], dtype=torch.int32)
    out = contiguous_decode_attention(q, k, v, lens, num_splits=3)
    expected = v[0, :37, 0].mean(0)
    torch.testing.assert_close(out[0], expected.expand(2, 16), rtol=1e-5, atol=1e-6)


def test_zero_length_sequence_gives_zeros():
    case = DecodeCase("zero", "float32", 2, 1, 16, 8, (0, 9))
    x = build_decode_inputs(case, seed=4, device="cpu")
    for splits in (1, 3):
        for out in _run_both(x, splits):
            assert torch.equal(out[0], torch.zeros_like(out[0]))
            assert not out.isnan().any()


def test_custom_scale_and_strided_query():
    """A q view with a head stride of 2 * D and an explicit scale."""
    case = DecodeCase("scale", "float32", 4, 2, 32, 16, (20, 3))
    x = build_decode_inputs(case, seed=5, device="cpu")
    q = torch.randn(2, 8, 32)[:, ::2]
    ref = paged_decode_ref(q, x.k_pool, x.v_pool, x.block_tables, x.context_lens, scale=0.3)
    out = paged_decode_attention(q, x.k_pool, x.v_pool, x.block_tables, x.context_lens, scale=0.3)
    assert relative_error(out, ref) < 1e-6


def test_tiles_that_span_several_blocks_and_parts_of_one():
    """block_n 32 over 8-token blocks (4 blocks a tile) and over 64-token blocks."""
    for block_size in (8, 64):
        case = DecodeCase("tiles", "float32", 2, 1, 16, block_size, (100, 64))
        x = build_decode_inputs(case, seed=6, device="cpu")
        ref = paged_decode_ref(x.q, x.k_pool, x.v_pool, x.block_tables, x.context_lens)
        tiles = DecodeTiles(block_n=32, num_warps=4, num_stages=1)
        out = paged_decode_with_tiles(x.q, x.k_pool, x.v_pool, x.block_tables, x.context_lens,
                                      num_splits=2, tiles=tiles)
        assert relative_error(out, ref) < 1e-6
        out = contiguous_decode_with_tiles(x.q, x.k_contig, x.v_contig, x.context_lens,
                                           num_splits=1, tiles=tiles)
        assert relative_error(out, ref) < 1e-6


@pytest.mark.parametrize("args, expected", [
    ((1, 8, 32768, 132), 33),    # one long sequence: fill 2 programs per SM
    ((64, 8, 4096, 132), 1),     # 512 programs already cover 132 SMs
    ((1, 8, 300, 132), 1),       # too short for a second 256-token split
    ((2, 8, 1024, 132), 4),      # length-bound: 1024 // 256
    ((1, 1, 10**6, 132), 256),   # capped at MAX_SPLITS
    ((0, 8, 4096, 132), 1),
])
def test_num_splits_heuristic(args, expected):
    assert choose_num_splits(*args) == expected


def _inputs():
    x = build_decode_inputs(DecodeCase("err", "float32", 4, 2, 32, 8, (5, 9)), 7, "cpu")
    return dict(q=x.q, k_cache=x.k_pool, v_cache=x.v_pool, block_tables=x.block_tables,
                context_lens=x.context_lens)


BAD_INPUTS = [
    (dict(q=torch.randn(2, 4)), "q must be a 3-d tensor"),
    (dict(q=torch.randn(2, 4, 32).to(torch.float64)), "q.dtype is torch.float64"),
    (dict(q=torch.randn(2, 4, 48)), "head_dim 48 must be a power of two"),
    (dict(q=torch.randn(2, 3, 32)), "q heads (3) must be a multiple of kv heads (2)"),
    (dict(q=torch.randn(2, 4, 64)[..., ::2]), "q must be contiguous in head_dim"),
    (dict(q=torch.randn(2, 4, 32).half()), "k_cache.dtype torch.float32 differs from q.dtype"),
    (dict(block_tables=torch.zeros(2, 3, dtype=torch.int64)), "block_tables must be a 2-d int32"),
    (dict(block_tables=torch.zeros(3, 3, dtype=torch.int32)), "block_tables has 3 rows for batch 2"),
    (dict(context_lens=torch.tensor([5, 9])), "context_lens must be a 1-d int32 tensor"),
    (dict(context_lens=torch.tensor([5], dtype=torch.int32)), "context_lens has 1 entries"),
    (dict(v_cache=torch.zeros(3, 8, 2, 32)), "differ in shape"),
    (dict(out=torch.zeros(2, 4, 16)), "out must match q"),
    (dict(num_splits=0), "num_splits must be an int in [1, 256]"),
    (dict(num_splits=True), "num_splits must be an int"),
    (dict(scale=-1.0), "scale must be a positive finite number"),
    (dict(scale=math.inf), "scale must be a positive finite number"),
]


@pytest.mark.parametrize("override, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_paged_wrapper_rejects_bad_input(override, message):
    args = _inputs() | override
    with pytest.raises(ValueError, match="^paged_decode_attention: .*" + re.escape(message)):
        paged_decode_attention(**args)


def test_contiguous_wrapper_rejects_cache_of_other_batch():
    x = _inputs()
    caches = torch.zeros(3, 16, 2, 32)
    with pytest.raises(ValueError, match=r"contiguous_decode_attention: k_cache \(3, 16, 2, 32\) "
                                         r"must be \[2, max_len"):
        contiguous_decode_attention(x["q"], caches, caches, x["context_lens"])


def test_linear_buffer_at_reservation_offsets_matches_reference():
    """The engine's contiguous layout: one buffer of 40 token slots, three
    reservations at slots 21, 0 and 9 (not in batch order), every unreserved or
    unfilled slot NaN."""
    gen = torch.Generator().manual_seed(7)
    heads, kv_heads, dim = 4, 2, 32
    q = torch.randn(3, heads, dim, generator=gen)
    k = torch.full((40, kv_heads, dim), float("nan"))
    v = torch.full_like(k, float("nan"))
    starts, lens = [21, 0, 9], [17, 9, 12]
    for s, n in zip(starts, lens):
        k[s:s + n] = torch.randn(n, kv_heads, dim, generator=gen)
        v[s:s + n] = torch.randn(n, kv_heads, dim, generator=gen)
    seq_starts = torch.tensor(starts, dtype=torch.int64)
    context_lens = torch.tensor(lens, dtype=torch.int32)
    ref = contiguous_decode_ref(q, k, v, context_lens, seq_starts=seq_starts)
    for splits in (1, 3):
        out = contiguous_decode_attention(q, k, v, context_lens, num_splits=splits, out=_nan_like(q),
                                          seq_starts=seq_starts, max_context_tokens=64)
        assert not out.isnan().any()
        assert relative_error(out, ref) < 1e-5
    # the same sequences as slabs: identical to the linear buffer
    slabs = torch.stack([k[s:s + 17] for s in starts]), torch.stack([v[s:s + 17] for s in starts])
    slab_ref = contiguous_decode_ref(q, *slabs, context_lens)
    assert relative_error(slab_ref, ref) < 1e-6


def test_linear_buffer_needs_a_context_bound():
    q, k = torch.randn(1, 4, 32), torch.zeros(8, 2, 32)
    with pytest.raises(ValueError, match="max_context_tokens must be an int >= 1"):
        contiguous_decode_attention(q, k, k, torch.ones(1, dtype=torch.int32),
                                    seq_starts=torch.zeros(1, dtype=torch.int64))


def test_cpu_tensors_rejected_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need a CUDA device"):
        paged_decode_attention(**_inputs())


def test_empty_batch_returns_empty_output():
    q = torch.randn(0, 4, 32)
    caches = torch.zeros(0, 8, 2, 32)
    out = contiguous_decode_attention(q, caches, caches, torch.zeros(0, dtype=torch.int32))
    assert out.shape == (0, 4, 32)
