"""KV-cache write kernels under the Triton CPU interpreter."""
import re

import pytest
import torch

from kernels.ops.cache_write import write_paged_kv
from kernels.ops.paged_decode import paged_decode_attention
from kernels.ops.reference import paged_decode_ref, write_paged_ref


def _same(a, b):
    """Equal element by element, NaN matching NaN."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _kv(tokens, heads=2, dim=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, heads, dim, generator=gen).to(dtype),
            torch.randn(tokens, heads, dim, generator=gen).to(dtype))


def _nan_cache(shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype), torch.full(shape, float("nan"), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_paged_write_matches_reference_and_skips_padding(dtype):
    k, v = _kv(6, dtype=dtype)
    slots = torch.tensor([13, -1, 0, 31, -1, 8], dtype=torch.int64)   # 4 blocks of 8 slots
    kc, vc = _nan_cache((4, 8, 2, 16), dtype)
    want_k, want_v = kc.clone(), vc.clone()
    write_paged_kv(k, v, kc, vc, slots)
    write_paged_ref(k, v, want_k, want_v, slots)
    assert _same(kc, want_k) and _same(vc, want_v)
    assert torch.equal(kc[1, 5], k[0]) and torch.equal(vc[3, 7], v[3])
    assert int((~kc.isnan()).sum()) == 4 * 2 * 16   # exactly the 4 real tokens written


def test_contiguous_buffer_is_written_as_one_token_pages():
    """A linear buffer of 24 slots viewed as [24, 1, Hkv, D]: three reservations
    starting at slots 0, 8 and 16; token (sequence s, position p) goes to
    slot start[s] + p."""
    k, v = _kv(5, heads=3, dim=32)
    starts = torch.tensor([0, 8, 16])
    seqs, positions = torch.tensor([2, 0, 1, 2, 0]), torch.tensor([0, 6, 3, 7, 0])
    slots = (starts[seqs] + positions).to(torch.int64)
    kc, vc = _nan_cache((24, 1, 3, 32))
    want_k, want_v = kc.clone(), vc.clone()
    write_paged_kv(k, v, kc, vc, slots)
    write_paged_ref(k, v, want_k, want_v, slots)
    assert _same(kc, want_k) and _same(vc, want_v)
    assert torch.equal(vc.view(3, 8, 3, 32)[2, 7], v[3])


def test_more_heads_than_one_program_takes():
    """20 KV heads: two programs per token (16 heads each, the second masked)."""
    k, v = _kv(3, heads=20, dim=16)
    slots = torch.tensor([5, 0, 2], dtype=torch.int64)
    kc, vc = _nan_cache((2, 4, 20, 16))
    write_paged_kv(k, v, kc, vc, slots)
    assert torch.equal(kc[1, 1], k[0]) and torch.equal(kc[0, 0], k[1]) and torch.equal(vc[0, 2], v[2])


def test_destinations_outside_the_cache_are_skipped():
    k, v = _kv(3)
    kc, vc = _nan_cache((2, 4, 2, 16))
    write_paged_kv(k, v, kc, vc, torch.tensor([8, 100, 7], dtype=torch.int64))   # 8 slots
    assert torch.equal(kc[1, 3], k[2])
    assert int((~kc.isnan()).sum()) == 2 * 16


def test_no_tokens_is_a_no_op():
    k, v = _kv(0)
    kc, vc = _nan_cache((2, 4, 2, 16))
    write_paged_kv(k, v, kc, vc, torch.zeros(0, dtype=torch.int64))
    assert kc.isnan().all()


def test_written_tokens_are_what_decode_reads():
    """Write a 21-token sequence token by token into shuffled blocks, then decode it."""
    block_size, blocks = 8, torch.tensor([5, 2, 7], dtype=torch.int32)
    k, v = _kv(21, seed=3)
    kc, vc = _nan_cache((9, block_size, 2, 16))
    positions = torch.arange(21)
    slots = blocks.long()[positions // block_size] * block_size + positions % block_size
    for t in range(21):   # one decode step per token
        write_paged_kv(k[t:t + 1], v[t:t + 1], kc, vc, slots[t:t + 1])
    q = torch.randn(1, 4, 16)
    tables, lens = blocks[None, :], torch.tensor([21], dtype=torch.int32)
    out = paged_decode_attention(q, kc, vc, tables, lens)
    torch.testing.assert_close(out, paged_decode_ref(q, kc, vc, tables, lens), rtol=1e-5, atol=1e-6)


BAD = [
    (dict(slot_mapping=torch.zeros(2, dtype=torch.int32)), "slot_mapping must be a 1-d int64"),
    (dict(slot_mapping=torch.zeros(3, dtype=torch.int64)), "slot_mapping has 3 entries for 2 tokens"),
    (dict(v=torch.zeros(2, 2, 32)), "k (2, 2, 16) and v (2, 2, 32) differ in shape"),
    (dict(k_cache=torch.zeros(4, 8, 2, 16, dtype=torch.float16)), "k_cache must have k's dtype"),
    (dict(k_cache=torch.zeros(4, 8, 3, 16)), "k_cache (4, 8, 3, 16) must end in [2, 16]"),
    (dict(k=torch.zeros(2, 2, 32)[..., ::2], v=torch.zeros(2, 2, 16)), "k must be contiguous"),
    (dict(k=torch.zeros(2, 2, 24), v=torch.zeros(2, 2, 24)), "head_dim 24 must be a power of two"),
    (dict(k=torch.zeros(2, 2, 16, dtype=torch.int32), v=torch.zeros(2, 2, 16, dtype=torch.int32)),
     "k.dtype is torch.int32"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[m for _, m in BAD])
def test_paged_write_rejects_bad_input(override, message):
    args = dict(k=torch.zeros(2, 2, 16), v=torch.zeros(2, 2, 16), k_cache=torch.zeros(4, 8, 2, 16),
                v_cache=torch.zeros(4, 8, 2, 16), slot_mapping=torch.zeros(2, dtype=torch.int64))
    args |= override
    with pytest.raises(ValueError, match="^write_paged_kv: .*" + re.escape(message)):
        write_paged_kv(**args)
