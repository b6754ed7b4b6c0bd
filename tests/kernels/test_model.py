"""The real transformer step (kernels/calibration/model.py) on a tiny fp32
model: paged, contiguous and a plain cache-free torch forward give the same
logits and tokens for prefill, chunked prefill on cached context, and decode;
and the host arrays of a step (slots, tables, padding rows) are exact."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")

from kernels.calibration.cache import ContiguousKVCache, PagedKVCache, place  # noqa: E402
from kernels.calibration.inputs import Composition, Rows, host_step, prepare_step  # noqa: E402
from kernels.calibration.model import Transformer, dense_logits, random_weights  # noqa: E402
from sim.presets import ModelSpec  # noqa: E402

TINY_LLAMA = ModelSpec(name="tiny-llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                       head_dim=16, ffn_size=96, vocab_size=101, max_context_tokens=64)
TINY_OPT = ModelSpec(name="tiny-opt", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                     head_dim=16, ffn_size=128, vocab_size=97, max_context_tokens=64, mlp="relu")
PROMPTS = {"A": 5, "B": 7, "C": 3, "D": 6}   # D is prefilled in two chunks of 3
BLOCK = 4


def _caches(geom):
    paged = PagedKVCache(geom, num_blocks=12, block_size=BLOCK, dtype=torch.float32, seed=1)
    contiguous = ContiguousKVCache(geom, num_slots=40, block_size=BLOCK, dtype=torch.float32, seed=2)
    return paged, contiguous


def _two_steps(model, cache, prompts, backend_rng):
    """Step 1 prefills A, B, C and D's first half; step 2 prefills D's second
    half on its cached context and decodes A, B, C. Returns both steps' logits."""
    finals = [prompts[s].shape[0] + (0 if s == "D" else 1) for s in "ABCD"]
    where = place(cache, finals, backend_rng if cache.layout == "paged" else None)
    place1, place2 = where, [where[3], *where[:3]]
    step1 = Composition((5, 7, 3, 3), (0, 0, 0, 0))
    ids1 = torch.cat([prompts["A"], prompts["B"], prompts["C"], prompts["D"][:3]])
    g = model.geom
    logits1, next1 = model.step(prepare_step(step1, cache, place1, ids1.numpy(), "cpu", g), cache)
    step2 = Composition((3,), (3,), (6, 8, 4))
    ids2 = torch.cat([prompts["D"][3:], next1[:3]])
    logits2, next2 = model.step(prepare_step(step2, cache, place2, ids2.numpy(), "cpu", g), cache)
    return logits1, next1, logits2, next2


@pytest.mark.parametrize("geom", [TINY_LLAMA, TINY_OPT], ids=lambda g: g.name)
def test_paged_contiguous_and_dense_agree(geom):
    _check_against_dense(geom, "reference")


def test_triton_kernels_in_the_step_agree_with_dense():  # loop-bound patch: conftest.py
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton CPU interpreter")
    _check_against_dense(TINY_LLAMA, "triton")


def _check_against_dense(geom, backend):
    gen = torch.Generator().manual_seed(0)
    prompts = {s: torch.randint(0, geom.vocab_size, (n,), generator=gen) for s, n in PROMPTS.items()}
    model = Transformer(geom, random_weights(geom, dtype=torch.float32, seed=3), backend=backend)
    results = {c.layout: _two_steps(model, c, prompts, np.random.default_rng(4)) for c in _caches(geom)}

    logits1, next1, logits2, next2 = results["paged"]
    full = {s: prompts[s] for s in "ABCD"}
    dense1 = torch.stack([dense_logits(model, full[s][: (3 if s == "D" else None)])[-1] for s in "ABCD"])
    torch.testing.assert_close(logits1, dense1, rtol=1e-4, atol=1e-4)
    assert next1.tolist() == dense1.argmax(-1).tolist()
    grown = {s: torch.cat([full[s], next1[i : i + 1]]) for i, s in enumerate("ABC")}
    dense2 = torch.stack([dense_logits(model, x)[-1] for x in (full["D"], grown["A"], grown["B"], grown["C"])])
    torch.testing.assert_close(logits2, dense2, rtol=1e-4, atol=1e-4)
    assert next2.tolist() == dense2.argmax(-1).tolist()

    for mine, theirs in zip(results["contiguous"], results["paged"]):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_step_inputs_pack_prefills_then_decodes():
    cache = PagedKVCache(TINY_LLAMA, num_blocks=8, block_size=BLOCK, dtype=torch.float32)
    comp = Composition((3,), (5,), (2, 6))
    where = [np.array([7, 2], np.int32), np.array([0], np.int32), np.array([4, 5], np.int32)]
    inp = prepare_step(comp, cache, where, np.arange(5), "cpu", TINY_LLAMA)
    assert inp.positions.tolist() == [5, 6, 7, 1, 5]
    # token at position p of a sequence lands in block table[p // 4], slot p % 4
    assert inp.slot_mapping.tolist() == [2 * 4 + 1, 2 * 4 + 2, 2 * 4 + 3, 0 * 4 + 1, 5 * 4 + 1]
    assert inp.last_token_index.tolist() == [2, 3, 4]
    assert inp.cu_seqlens.tolist() == [0, 3]
    assert inp.prefill_context_lens.tolist() == [5]
    assert inp.prefill_block_tables.tolist() == [[7, 2]]
    assert inp.decode_context_lens.tolist() == [2, 6]
    # decode tables are always the model's whole context wide (64 / 4 = 16
    # blocks); entries past a sequence's own blocks point at block 0 (scratch)
    assert inp.decode_block_tables.shape == (2, 16)
    assert inp.decode_block_tables[:, :3].tolist() == [[0, 0, 0], [4, 5, 0]]
    assert inp.max_context_tokens == 64


def test_contiguous_starts_and_page_aligned_context():
    cache = ContiguousKVCache(TINY_LLAMA, num_slots=30, block_size=BLOCK, dtype=torch.float32)
    assert cache.num_slots == 32
    assert place(cache, [4, 2, 9]) == [0, 4, 8]          # page-aligned, packed in order
    inp = prepare_step(Composition((4,), (0,), (2, 9)), cache, [8, 0, 4], np.arange(6), "cpu", TINY_LLAMA)
    assert inp.decode_starts.tolist() == [0, 4]
    assert inp.slot_mapping.tolist() == [8, 9, 10, 11, 0 + 1, 4 + 8]
    assert inp.prefill_block_tables is None          # no cached context: no tables
    inp = prepare_step(Composition((2,), (5,), ()), cache, [8], np.arange(2), "cpu", TINY_LLAMA)
    assert inp.prefill_block_tables.tolist() == [[2, 3]]   # pages of 4 slots from slot 8
    with pytest.raises(ValueError, match="page boundary"):
        prepare_step(Composition((2,), (5,), ()), cache, [6], np.arange(2), "cpu", TINY_LLAMA)
    with pytest.raises(ValueError, match="slots"):
        place(cache, [40])
    with pytest.raises(ValueError, match="blocks"):
        place(PagedKVCache(TINY_LLAMA, num_blocks=2, block_size=BLOCK, dtype=torch.float32), [9])


def test_padding_rows_and_padded_prompts_write_nothing_extra():
    """A static batch: row 0 is a 3-token prompt padded to 5 (two pad tokens in
    front), row 1 a padding row; decode rows read a padded context of 7 keys
    but write at their real position."""
    blocks = [np.array([3, 1], np.int32), None]
    rows = Rows(2, new=np.array([5, 5]), cached=np.zeros(2, np.int64), skip=np.array([2, 5]),
                write_pos=np.zeros(2, np.int64), where=blocks)
    host = host_step(rows, np.arange(10), "paged", block_size=BLOCK, width=16, max_context_tokens=64, scratch=9)
    assert host.slot_mapping.tolist() == [-1, -1, 12, 13, 14, -1, -1, -1, -1, -1]
    assert host.positions.tolist() == [0, 1, 2, 3, 4] * 2
    rows = Rows(0, new=np.array([1, 1]), cached=np.array([6, 6]), skip=np.zeros(2, np.int64),
                write_pos=np.array([3, 0]), where=blocks)
    host = host_step(rows, np.arange(2), "paged", block_size=BLOCK, width=16, max_context_tokens=64, scratch=9)
    assert host.slot_mapping.tolist() == [3 * 4 + 3, -1]
    assert host.decode_context_lens.tolist() == [7, 7]
    assert host.decode_block_tables[:, :3].tolist() == [[3, 1, 9], [9, 9, 9]]
    host = host_step(Rows(0, np.array([1]), np.array([6]), np.zeros(1, np.int64), np.array([3]), [None]),
                     np.arange(1), "contiguous", block_size=BLOCK, width=16, max_context_tokens=64, scratch=28)
    assert host.decode_starts.tolist() == [28] and host.slot_mapping.tolist() == [-1]
