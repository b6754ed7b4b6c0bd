"""RooflineCostModel on hand-computed batches, its vectorised decode run, and
how build_cost_model picks it.

Most tests use a tiny model on a toy device with round numbers, so that
every part can be written out by hand:

    tiny: 2 layers, hidden 8, 2 heads x head_dim 4 (q_size 8), 2 KV heads
          (kv_size 8), ReLU MLP with ffn 16, vocab 32, fp16 (2 bytes)
    toy:  1000 FLOP/s and 1000 B/s achieved (fractions 1.0), PCIe 16 B/s

    params_per_layer = 8*(8+16) + 8*8 + 2*8*16 = 512; linear params 1024
    GEMM activation elements per row and layer: QKV 8+24, O 8+8,
      up 8+16, down 16+8 = 96; x 2 layers x 2 B = 384 B
    linear(rows)  = max(rows * 2*1024/1000, 1024*2/1000 + rows * 0.384)
                  = max(2.048 rows, 2.048 + 0.384 rows)
    head(seqs)    = max(seqs * 2*256/1000, 256*2/1000 + seqs * (8+32)*2/1000)
                  = max(0.512 seqs, 0.512 + 0.080 seqs)
    per row: embedding 2*8*2/1000 = 0.032, KV write 64/1000 = 0.064 -> 0.096
    attention of n queries on k keys:
      pair = 2 layers * 4 * 8 / 1000 = 0.064 s per query-key pair
      key = 64 B / 1000 = 0.064 s, query (read q + write o) = 2*2*8*2/1000 = 0.064 s
      att(n, k) = max(0.064 * n * (k - (n-1)/2), 0.064 * k + 0.064 * n)
    swap: 64 B per token / 16 B/s = 4 s per token
"""
from __future__ import annotations

from dataclasses import replace
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.batch import Batch
from sim.cost import (
    AutoCostSpec,
    LinearCostModel,
    ProfiledCostSpec,
    RooflineCostModel,
    RooflineCostSpec,
    build_cost_model,
    parse_cost_model_spec,
)
from sim.cost.base import CostModel, decode_run_times_by_steps
from sim.presets import HARDWARE, MODELS, HardwareSpec, ModelSpec

TINY = ModelSpec(name="tiny", num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=2, head_dim=4,
                 ffn_size=16, vocab_size=32, mlp="relu", dtype="fp16")
TOY = HardwareSpec(name="toy", memory_bytes=10**6, peak_flops=1000.0, mem_bandwidth_Bps=1000.0,
                   achievable_bandwidth_frac=1.0, achievable_flops_frac=1.0, pcie_bandwidth_Bps=16.0)
# Reading a key (0.016 s) is cheaper than multiplying it (0.064 s): decode is compute-bound.
TOY_FAST_MEMORY = replace(TOY, name="toy-fast-memory", mem_bandwidth_Bps=4000.0)


def tiny_cost(overhead: float = 1.1, step_overhead_s: float = 0.0) -> RooflineCostModel:
    return RooflineCostModel(TINY, TOY, paged_attention_overhead=overhead, step_overhead_s=step_overhead_s)


def prefill(*new: int, context: tuple[int, ...] | None = None, **kw) -> Batch:
    return Batch(prefill_new_tokens=new, prefill_context_tokens=context or (0,) * len(new), **kw)


def decode(*context: int, **kw) -> Batch:
    return Batch(decode_context_tokens=context, **kw)


def test_implements_the_cost_model_protocol():
    assert isinstance(tiny_cost(), CostModel)
    assert tiny_cost().name == "roofline"


def test_pure_decode_one_sequence():
    # linear(1) = max(2.048, 2.432) = 2.432; head(1) = max(0.512, 0.592) = 0.592
    # rows 0.096; att(1, 10) = max(0.64, 0.64 + 0.064) = 0.704 -> 3.824
    assert tiny_cost().step_time(decode(10, kv_layout="contiguous")) == pytest.approx(3.824, rel=1e-12)


def test_pure_decode_two_sequences():
    # linear(2) = max(4.096, 2.816) = 4.096; head(2) = max(1.024, 0.672) = 1.024; rows 0.192
    # att(1, 10) + att(1, 20) = 0.704 + 1.344 = 2.048 -> 7.36
    assert tiny_cost().step_time(decode(10, 20, kv_layout="contiguous")) == pytest.approx(7.36, rel=1e-12)


def test_pure_prefill_fresh_prompt():
    # linear(4) = 8.192; head(1) = 0.592; rows 4 * 0.096 = 0.384
    # att(4, 4) = max(0.064 * 4 * 2.5 = 0.64, 0.256 + 0.256) = 0.64 (compute-bound) -> 9.808
    assert tiny_cost().step_time(prefill(4, kv_layout="contiguous")) == pytest.approx(9.808, rel=1e-12)


def test_prefill_chunk_on_cached_context():
    # 2 new tokens after 6 cached: att(2, 8) = max(0.064 * 2 * 7.5 = 0.96, 0.512 + 0.128) = 0.96
    # linear(2) 4.096 + head(1) 0.592 + rows 0.192 + 0.96 = 5.84
    batch = prefill(2, context=(6,), kv_layout="contiguous")
    assert tiny_cost().step_time(batch) == pytest.approx(5.84, rel=1e-12)


def test_mixed_prefill_and_decode():
    # rows 5: linear max(10.24, 3.968) = 10.24; seqs 2: head 1.024; rows 0.48
    # att(4, 4) + att(1, 10) = 0.64 + 0.704 = 1.344 -> 13.088
    batch = Batch(prefill_new_tokens=(4,), prefill_context_tokens=(0,), decode_context_tokens=(10,),
                  kv_layout="contiguous")
    assert tiny_cost().step_time(batch) == pytest.approx(13.088, rel=1e-12)


def test_paged_layout_scales_only_attention():
    # attention of the mixed batch is 1.344 s; paged adds 10% of it: 13.088 + 0.1344
    mixed = dict(prefill_new_tokens=(4,), prefill_context_tokens=(0,), decode_context_tokens=(10,))
    cost = tiny_cost(overhead=1.1)
    paged = cost.step_time(Batch(**mixed, kv_layout="paged"))
    contiguous = cost.step_time(Batch(**mixed, kv_layout="contiguous"))
    assert paged == pytest.approx(13.2224, rel=1e-12)
    assert (paged - contiguous) / 1.344 == pytest.approx(0.1, rel=1e-9)


def test_step_overhead_is_added_once_per_step():
    base = tiny_cost().step_time(decode(10, 20, kv_layout="contiguous"))
    assert tiny_cost(step_overhead_s=0.5).step_time(decode(10, 20, kv_layout="contiguous")) == \
        pytest.approx(base + 0.5, rel=1e-12)


def test_static_padded_prefill_costs_more_than_unpadded():
    # unpadded (2, 4): linear(6) 12.288 + head(2) 1.024 + rows 0.576
    #   + att(2, 2) = max(0.064 * 3, 0.128 + 0.128) = 0.256, + att(4, 4) 0.64 -> 14.784
    # padded (4, 4): linear(8) 16.384 + head(2) 1.024 + rows 0.768 + 2 * 0.64 -> 19.456
    cost = tiny_cost()
    assert cost.step_time(prefill(2, 4, kv_layout="contiguous")) == pytest.approx(14.784, rel=1e-12)
    assert cost.step_time(prefill(4, 4, kv_layout="contiguous")) == pytest.approx(19.456, rel=1e-12)


def test_static_padded_decode_costs_more_than_unpadded():
    # padding context 5 up to 20 reads 15 more keys: 15 * 0.064 = 0.96 s
    cost = tiny_cost()
    padded = cost.step_time(decode(20, 20, kv_layout="contiguous"))
    unpadded = cost.step_time(decode(5, 20, kv_layout="contiguous"))
    assert padded - unpadded == pytest.approx(0.96, rel=1e-9)


def test_decode_skew_costs_the_same_when_memory_bound():
    # Each decode sequence is memory-bound at every length, so its time is
    # linear in its context and the sums match: sum 8 keys either way.
    cost = tiny_cost()
    assert cost.step_time(decode(1, 7)) == pytest.approx(cost.step_time(decode(4, 4)), rel=1e-12)
    llama = RooflineCostModel(MODELS["llama-2-7b"], HARDWARE["h100-sxm"])
    assert llama.step_time(decode(100, 3900)) == pytest.approx(llama.step_time(decode(2000, 2000)), rel=1e-12)


def test_prefill_skew_costs_its_long_member():
    # att(1, 1) = max(0.064, 0.128) = 0.128; att(7, 7) = max(0.064 * 28, 0.896) = 1.792
    # skewed 1.92 vs even 2 * att(4, 4) = 1.28: 0.64 s more, all other parts equal
    cost = tiny_cost()
    skewed = cost.step_time(prefill(1, 7, kv_layout="contiguous"))
    even = cost.step_time(prefill(4, 4, kv_layout="contiguous"))
    assert skewed - even == pytest.approx(0.64, rel=1e-9)


def test_prefill_skew_on_llama_follows_the_quadratic_term():
    # Causal pairs: 100*101/2 + 3900*3901/2 = 7,612,000 vs 2 * 2000*2001/2 = 4,002,000.
    # The 3900-token prompt is compute-bound, so the skewed batch costs more.
    model, hw = MODELS["llama-2-7b"], HARDWARE["h100-sxm"]
    cost = RooflineCostModel(model, hw)
    flops_per_s = hw.peak_flops * hw.achievable_flops_frac
    bytes_per_s = hw.mem_bandwidth_Bps * hw.achievable_bandwidth_frac

    def attention_s(n: int) -> float:
        flops = model.num_layers * 4 * model.q_size * n * (n + 1) / 2
        nbytes = n * model.kv_bytes_per_token + model.num_layers * 2 * n * model.q_size * model.dtype_bytes
        return max(flops / flops_per_s, nbytes / bytes_per_s)

    skewed = cost.step_time(prefill(100, 3900))
    even = cost.step_time(prefill(2000, 2000))
    expected = 1.1 * (attention_s(100) + attention_s(3900) - 2 * attention_s(2000))
    assert skewed > even
    assert skewed - even == pytest.approx(expected, rel=1e-9)


def test_swap_traffic_is_added_over_pcie():
    # swap-only step runs no layers: (3 + 5) tokens * 4 s = 32 s
    cost = tiny_cost()
    assert cost.step_time(Batch(swap_in_tokens=3, swap_out_tokens=5)) == pytest.approx(32.0, rel=1e-12)
    # decode step 3.824 + 2 tokens swapped in * 4 s
    with_swap = decode(10, kv_layout="contiguous", swap_in_tokens=2)
    assert cost.step_time(with_swap) == pytest.approx(11.824, rel=1e-12)


def test_empty_batch_costs_nothing():
    assert tiny_cost(step_overhead_s=1.0).step_time(Batch()) == 0.0
    assert tiny_cost().decode_run_times(Batch(), 3).tolist() == [0.0, 0.0, 0.0]


def test_compute_bound_decode():
    # toy-fast-memory: key 0.016 s, query 0.016 s, pair 0.064 s
    # att(1, 10) = max(0.64, 0.16 + 0.016) = 0.64; linear(1) = max(2.048, 0.512 + 0.096) = 2.048
    # head(1) = max(0.512, 0.128 + 0.020) = 0.512; rows 0.024 -> 3.224
    cost = RooflineCostModel(TINY, TOY_FAST_MEMORY, step_overhead_s=0.0)
    assert cost.step_time(decode(10, kv_layout="contiguous")) == pytest.approx(3.224, rel=1e-12)


RUN_BATCHES = [
    decode(10),
    decode(1, 7, 300, 2, kv_layout="contiguous"),
    decode(5, 5, 5, swap_out_tokens=4),
    Batch(prefill_new_tokens=(4, 9), prefill_context_tokens=(0, 30), decode_context_tokens=(3, 100)),
    prefill(6),
]


@pytest.mark.parametrize("hardware", [TOY, TOY_FAST_MEMORY, HARDWARE["h100-sxm"]], ids=lambda h: h.name)
@pytest.mark.parametrize("batch", RUN_BATCHES)
def test_decode_run_times_match_per_step(hardware, batch):
    for model in (TINY, MODELS["llama-3-8b"]):
        cost = RooflineCostModel(model, hardware)
        fast = cost.decode_run_times(batch, 40)
        slow = decode_run_times_by_steps(cost, batch, 40)
        assert fast.shape == (40,)
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)


@settings(max_examples=60, deadline=None)
@given(contexts=st.lists(st.integers(1, 5000), min_size=1, max_size=40),
       num_steps=st.integers(0, 64), paged=st.booleans(), fast_memory=st.booleans())
def test_decode_run_times_match_per_step_on_random_batches(contexts, num_steps, paged, fast_memory):
    cost = RooflineCostModel(MODELS["llama-2-7b"], TOY_FAST_MEMORY if fast_memory else HARDWARE["h100-sxm"])
    batch = decode(*contexts, kv_layout="paged" if paged else "contiguous")
    np.testing.assert_allclose(cost.decode_run_times(batch, num_steps),
                               decode_run_times_by_steps(cost, batch, num_steps), rtol=1e-12, atol=0)


def test_decode_run_grows_by_one_key_per_sequence_per_step():
    # each step adds 2 keys, 0.064 s each, on a contiguous tiny run
    times = tiny_cost().decode_run_times(decode(10, 20, kv_layout="contiguous"), 3)
    np.testing.assert_allclose(times, [7.36, 7.488, 7.616], rtol=1e-12)


def test_llama_2_7b_single_decode_is_weight_bound():
    # 13.5 GB of weights / (3.35 TB/s * 0.9) ~ 4.5 ms, + 0.27 GB of KV, + 1.5 ms step overhead
    cost = RooflineCostModel(MODELS["llama-2-7b"], HARDWARE["h100-sxm"])
    assert 4e-3 < cost.step_time(decode(512)) < 8e-3


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="paged_attention_overhead"):
        RooflineCostModel(TINY, TOY, paged_attention_overhead=0.0)
    with pytest.raises(ValueError, match="step_overhead_s"):
        RooflineCostModel(TINY, TOY, step_overhead_s=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        tiny_cost().decode_run_times(decode(3), -1)


# --- build_cost_model -------------------------------------------------------

def fake_profiled_module(monkeypatch, tmp_path: Path, has_profiles: bool) -> list:
    """Install a stand-in ``sim.cost.profiled``; returns the from_dir calls."""
    calls: list = []
    module = types.ModuleType("sim.cost.profiled")
    module.default_profile_dir = lambda hardware_name, model_name: tmp_path / hardware_name / model_name
    module.has_profiles = lambda path: has_profiles
    module.measured_step_overhead_s = lambda hardware_name: None if not has_profiles else (3e-4, "measured")

    class ProfiledCostModel:
        name = "profiled"

        @classmethod
        def from_dir(cls, path, model, hardware, paged_attention_overhead, max_batch_size=256, engine=True):
            calls.append((path, model.name, hardware.name, paged_attention_overhead))
            return cls()

    module.ProfiledCostModel = ProfiledCostModel
    monkeypatch.setitem(sys.modules, "sim.cost.profiled", module)
    return calls


def test_build_roofline_from_spec():
    cost, note = build_cost_model(RooflineCostSpec(paged_attention_overhead=1.25, step_overhead_s=0.002),
                                  TINY, TOY)
    assert isinstance(cost, RooflineCostModel)
    assert (cost.paged_attention_overhead, cost.step_overhead_s) == (1.25, 0.002)
    assert note == "cost model: roofline (toy/tiny; paged attention x1.25, step overhead 2 ms)"


def test_build_linear_from_spec():
    spec = parse_cost_model_spec({"kind": "linear", "base_s": 0.01, "per_prefill_token_s": 1e-4,
                                  "per_decode_seq_s": 2e-4, "per_context_token_s": 0.0})
    cost, note = build_cost_model(spec, TINY, TOY)
    assert isinstance(cost, LinearCostModel)
    assert note.startswith("cost model: linear (base 0.01 s")


def test_auto_falls_back_to_roofline_without_profiles(monkeypatch, tmp_path):
    calls = fake_profiled_module(monkeypatch, tmp_path, has_profiles=False)
    cost, note = build_cost_model(AutoCostSpec(), TINY, TOY)
    assert isinstance(cost, RooflineCostModel) and calls == []
    # "as measured" (None) means the documented 1.1 and 1.5 ms without profiles
    assert (cost.paged_attention_overhead, cost.step_overhead_s) == (1.1, 0.0015)
    assert note == (f"cost model: roofline (no profiles for toy/tiny at {tmp_path / 'toy' / 'tiny'}; "
                    f"run `pagesim calibrate`)")


def test_auto_falls_back_to_roofline_when_profiled_is_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "sim.cost.profiled", None)   # import raises ImportError
    cost, note = build_cost_model(AutoCostSpec(step_overhead_s=0.0), TINY, TOY)
    assert isinstance(cost, RooflineCostModel) and cost.step_overhead_s == 0.0
    assert note.startswith("cost model: roofline (toy/tiny; profiled cost model unavailable:")


def test_auto_uses_profiles_when_present(monkeypatch, tmp_path):
    calls = fake_profiled_module(monkeypatch, tmp_path, has_profiles=True)
    cost, note = build_cost_model(AutoCostSpec(paged_attention_overhead=1.05), TINY, TOY)
    assert cost.name == "profiled"
    assert calls == [(tmp_path / "toy" / "tiny", "tiny", "toy", 1.05)]
    assert note == f"cost model: profiled from {tmp_path / 'toy' / 'tiny'}"


def test_explicit_profile_dir_overrides_the_default(monkeypatch, tmp_path):
    # no paged_attention_overhead given: None, the profiled paged kernels as measured
    calls = fake_profiled_module(monkeypatch, tmp_path, has_profiles=True)
    build_cost_model(ProfiledCostSpec(profile_dir=tmp_path / "mine"), TINY, TOY)
    assert calls == [(tmp_path / "mine", "tiny", "toy", None)]


def test_profiled_without_profiles_is_an_error_naming_the_path(monkeypatch, tmp_path):
    fake_profiled_module(monkeypatch, tmp_path, has_profiles=False)
    with pytest.raises(ValueError, match=r"no kernel profiles for toy/tiny at .*toy/tiny.*pagesim calibrate"):
        build_cost_model(ProfiledCostSpec(), TINY, TOY)


def test_profiled_when_not_importable_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sim.cost.profiled", None)
    with pytest.raises(ValueError, match="profiled is not available"):
        build_cost_model(ProfiledCostSpec(), TINY, TOY)


def test_roofline_step_overhead_defaults_to_the_profiles_measurement(monkeypatch, tmp_path):
    fake_profiled_module(monkeypatch, tmp_path, has_profiles=True)
    cost, note = build_cost_model(RooflineCostSpec(), TINY, TOY)
    assert cost.step_overhead_s == 3e-4
    assert note == "cost model: roofline (toy/tiny; paged attention x1.1, step overhead 0.3 ms (measured))"


def test_measured_step_overhead_of_the_committed_profiles():
    """GPU fixed term plus the engine's host time of a one-sequence step,
    median over the profiled models; a GPU without profiles borrows all."""
    from sim.cost.profiled import measured_step_overhead_s

    h200, where = measured_step_overhead_s("h200")
    assert where == "median of 4 profiled models on h200" and 2e-4 < h200 < 1e-3
    h100, _ = measured_step_overhead_s("h100-sxm")
    assert 5e-5 < h100 < h200          # no engine host terms in the H100 profiles
    _, where = measured_step_overhead_s("a100-40gb")
    assert where == "median of 8 profiled models on h100-sxm, h200"
