"""The profiled cost model on a tiny synthetic profile with exact tables.

Synthetic profile (2 layers, prefill tile of 4 tokens):

* tokens: qkv GEMM 1/2/5 ms at T = 1/4/16; norm (2 calls) 10/10/40 us; KV write
  1 -> 16 us (paged) and 2 -> 32 us (contiguous) at T = 1/16; embedding
  10 -> 25 us (once per step);
* sequences: LM head 0.1 ms at S = 1, 0.8 ms at S = 8;
* decode attention: contiguous ``U(B, c) = (10 + B c / 100) us`` on B in {1, 4},
  c in {100, 300} (bilinear, so interpolation and extrapolation are exact);
  paged = 1.25 x contiguous; one skewed batch per layout at B = 4 whose time
  is halfway between U(4, mean) and U(4, max) -> skew weight 0.5;
* prefill attention: exactly ``coef . features`` with ``TRUE_COEF``;
* overhead: 5 us graph launch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.batch import Batch
from sim.cost.base import CostModel, decode_run_times_by_steps
from sim.cost.profiled import (
    PiecewiseLinear, ProfiledCostModel, default_profile_dir, has_profiles, prefill_features,
)
from sim.presets import HARDWARE, MODELS, ModelSpec

TINY = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16,
                 ffn_size=128, vocab_size=100, max_context_tokens=1024)
H100 = HARDWARE["h100-sxm"]
TRUE_COEF = np.array([2e-6, 1e-6, 1e-8, 2e-8, 1e-8])
MIXES = [([4], [0]), ([8], [0]), ([5, 3], [0, 0]), ([16], [0]), ([2, 9], [5, 0]), ([4], [8]),
         ([6], [2]), ([12], [30])]


def _u(b, c):
    return 1e-6 * (10 + b * c / 100)


def _op(op, scope, axis, layout, calls, points):
    return [dict(op=op, scope=scope, axis=axis, layout=layout, calls=calls, count=c, seconds=s)
            for c, s in points]


def write_profile(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(_op("qkv", "layer", "tokens", "any", 1, [(1, 1e-3), (4, 2e-3), (16, 5e-3)])
                 + _op("lm_head", "step", "seqs", "any", 1, [(1, 1e-4), (8, 8e-4)])).to_csv(root / "gemm.csv", index=False)
    pd.DataFrame(_op("norm", "layer", "tokens", "any", 2, [(1, 1e-5), (4, 1e-5), (16, 4e-5)])
                 + _op("kv_write", "layer", "tokens", "paged", 1, [(1, 1e-6), (16, 1.6e-5)])
                 + _op("kv_write", "layer", "tokens", "contiguous", 1, [(1, 2e-6), (16, 3.2e-5)])
                 + _op("embed", "step", "tokens", "any", 1, [(1, 1e-5), (16, 2.5e-5)])).to_csv(
        root / "elementwise.csv", index=False)
    dec = []
    for layout, scale in (("contiguous", 1.0), ("paged", 1.25)):
        dec += [dict(layout=layout, kind="uniform", batch=b, mean_context_tokens=c, max_context_tokens=c,
                     contexts="", seconds=scale * _u(b, c)) for b in (1, 4) for c in (100, 300)]
        dec.append(dict(layout=layout, kind="skewed", batch=4, mean_context_tokens=150, max_context_tokens=300,
                        contexts="[300, 100, 100, 100]",
                        seconds=scale * (_u(4, 150) + 0.5 * (_u(4, 300) - _u(4, 150)))))
    pd.DataFrame(dec).to_csv(root / "decode_attention.csv", index=False)
    pre = []
    for new, ctx in MIXES:
        for layout in (("paged", "contiguous") if any(ctx) else ("any",)):
            pre.append(dict(layout=layout, new_tokens=json.dumps(new), context_tokens=json.dumps(ctx),
                            seconds=float(TRUE_COEF @ prefill_features(new, ctx, 4, 4, 8))))
    pd.DataFrame(pre).to_csv(root / "prefill_attention.csv", index=False)
    pd.DataFrame([dict(name="graph_launch_s", seconds=5e-6, note=""),
                  dict(name="eager_host_s", seconds=9.0, note="not used")]).to_csv(root / "overhead.csv", index=False)
    (root / "provenance.json").write_text(json.dumps({
        "model": "tiny", "prefill_block_m": 4, "num_sms": 8,
        "geometry": {k: getattr(TINY, k) for k in ("hidden_size", "num_heads", "num_kv_heads", "head_dim",
                                                    "ffn_size", "vocab_size", "mlp")}}))
    return root


@pytest.fixture
def profile(tmp_path) -> Path:
    return write_profile(tmp_path / "tiny")


@pytest.fixture
def cost(profile) -> ProfiledCostModel:
    return ProfiledCostModel.from_dir(profile, TINY, H100)


def test_piecewise_linear_interpolates_extrapolates_and_clamps():
    f = PiecewiseLinear([1, 4, 16], [1.0, 2.0, 5.0])
    assert f(4) == 2.0
    assert f(2) == pytest.approx(1 + 1 / 3, rel=1e-15)
    assert f(32) == pytest.approx(5 + 16 * 3 / 12, rel=1e-15)   # last segment's slope
    assert f(0.5) == 1.0                                          # clamped below
    np.testing.assert_array_equal(f.many(np.array([0.5, 2, 4, 32])), [f(0.5), f(2), f(4), f(32)])
    flat = PiecewiseLinear([2, 8], [0.2, 0.8], extrapolate=False)
    assert (flat(1), flat(5), flat(100)) == (0.2, pytest.approx(0.5), 0.8)


def test_prefill_features_count_programs_and_keys():
    # 6 new tokens on 10 cached, tiles of 4, 2 heads, 4 SMs: two tiles per head streaming
    # 10 context keys each, and 4 then 6 causal keys
    assert prefill_features([6], [10], 4, 2, 4).tolist() == [1, 2 * 2, 2 * (4 + 6), 2 * 2 * 10,
                                                             max(16, 2 * (10 + 20) / 4)]
    # a full grid: the per-SM share of the keys beats the longest sequence
    assert prefill_features([64] * 8, [0] * 8, 4, 2, 4)[4] == 2 * 8 * sum(range(4, 68, 4)) / 4


def test_is_a_cost_model_with_profile_helpers(cost, profile, tmp_path):
    assert isinstance(cost, CostModel) and cost.name == "profiled"
    assert has_profiles(profile) and not has_profiles(tmp_path / "nowhere")
    assert default_profile_dir("h100-sxm", "llama-2-7b").parts[-4:] == ("kernels", "profiles", "h100-sxm",
                                                                        "llama-2-7b")


def test_single_decode_step_sums_operators(cost):
    # T = S = 1: 2 layers x (qkv 1 ms + 2 x norm 10 us + kv write 2 us + attention U(1, 200) = 12 us)
    #            + embedding 10 us + LM head 0.1 ms + launch 5 us
    expected = 2 * (1e-3 + 2e-5 + 2e-6 + _u(1, 200)) + 1e-5 + 1e-4 + 5e-6
    assert cost.step_time(Batch(decode_context_tokens=(200,), kv_layout="contiguous")) == pytest.approx(
        expected, rel=1e-12)


def test_token_and_sequence_tables_interpolate_and_extrapolate(cost):
    def tokens_only(t):   # T decode rows of context 100 minus everything but the token operators
        b = Batch(decode_context_tokens=(100,) * t, kv_layout="contiguous")
        seqs = 1e-4 + (min(t, 8) - 1) * 1e-4 + max(t - 8, 0) * 1e-4   # LM head 0.1 ms per sequence
        return cost.step_time(b) - seqs - 5e-6 - 2 * _u(t, 100)
    # T = 10: qkv 2 + 6 x 0.25 = 3.5 ms, norm 10 + 6 x 2.5 = 25 us, write 2 + 9 x 2 = 20 us, embed 19 us
    assert tokens_only(10) == pytest.approx(2 * (3.5e-3 + 2 * 2.5e-5 + 2e-5) + 1.9e-5, rel=1e-9)
    # T = 32 (beyond the grid): qkv 5 + 16 x 0.25 = 9 ms, norm 80 us, write 64 us, embed 41 us
    assert tokens_only(32) == pytest.approx(2 * (9e-3 + 2 * 8e-5 + 6.4e-5) + 4.1e-5, rel=1e-9)


def test_a_slow_grid_point_is_lowered_to_the_next_larger_count(profile, cost):
    gemm = pd.read_csv(profile / "gemm.csv")
    gemm.loc[(gemm["op"] == "qkv") & (gemm["count"] == 4), "seconds"] = 6e-3   # above the 5 ms at T = 16
    gemm.to_csv(profile / "gemm.csv", index=False)
    spiked = ProfiledCostModel.from_dir(profile, TINY, H100)
    batch = Batch(decode_context_tokens=(100,) * 4, kv_layout="paged")
    # qkv(4) becomes 5 ms instead of the original 2 ms, in each of the 2 layers
    assert spiked.step_time(batch) - cost.step_time(batch) == pytest.approx(2 * 3e-3, rel=1e-9)


def test_skewed_batch_costs_more_than_uniform_with_same_mean(cost):
    uniform = Batch(decode_context_tokens=(200,) * 4, kv_layout="contiguous")
    skewed = Batch(decode_context_tokens=(100, 100, 100, 500), kv_layout="contiguous")
    # attention per layer: U(4, 200) + 0.5 x (U(4, 500) - U(4, 200)) = 18 + 0.5 x 12 us
    assert cost.step_time(skewed) - cost.step_time(uniform) == pytest.approx(2 * 0.5 * 12e-6, rel=1e-9)


def test_paged_vs_contiguous_and_overhead_ratio(cost, profile):
    batch = dict(decode_context_tokens=(100, 300))
    paged, contiguous = (cost.step_time(Batch(**batch, kv_layout=k)) for k in ("paged", "contiguous"))
    attn = _u(2, 200) + 0.5 * (_u(2, 300) - _u(2, 200))
    write_diff = (1e-6 + 1e-6) - (2e-6 + 2e-6)      # KV write of 2 tokens, paged minus contiguous
    assert paged - contiguous == pytest.approx(2 * (0.25 * attn + write_diff), rel=1e-9)
    doubled = ProfiledCostModel.from_dir(profile, TINY, H100, paged_attention_overhead=2.0)
    assert doubled.step_time(Batch(**batch, kv_layout="paged")) - contiguous == pytest.approx(
        2 * (attn + write_diff), rel=1e-9)


def test_prefill_attention_fit_recovers_exact_coefficients(cost):
    fresh = Batch(prefill_new_tokens=(7,), prefill_context_tokens=(0,), kv_layout="contiguous")
    chunk = Batch(prefill_new_tokens=(7,), prefill_context_tokens=(40,), kv_layout="paged")
    for batch in (fresh, chunk):
        attn = cost.prefill[batch.kv_layout](batch.prefill_new_tokens, batch.prefill_context_tokens)
        assert attn == pytest.approx(float(TRUE_COEF @ prefill_features([7], [batch.prefill_context_tokens[0]], 4, 4, 8)),
                                     rel=1e-6)
    assert cost.step_time(chunk) > cost.step_time(Batch(prefill_new_tokens=(7,), prefill_context_tokens=(0,)))


def test_static_batches_are_priced_by_their_padded_shapes(cost):
    padded = Batch(prefill_new_tokens=(8, 8), prefill_context_tokens=(0, 0), kv_layout="contiguous")
    ragged = Batch(prefill_new_tokens=(3, 8), prefill_context_tokens=(0, 0), kv_layout="contiguous")
    assert cost.step_time(padded) > cost.step_time(ragged)
    # T = 16 and S = 2 exactly as any batch of those shapes
    attn = float(TRUE_COEF @ prefill_features([8, 8], [0, 0], 4, 4, 8))
    expected = 2 * (5e-3 + 2 * 4e-5 + 3.2e-5 + attn) + 2.5e-5 + 2e-4 + 5e-6
    assert cost.step_time(padded) == pytest.approx(expected, rel=1e-6)


def test_decode_run_times_equal_the_per_step_fallback(cost):
    for layout in ("paged", "contiguous"):
        batch = Batch(decode_context_tokens=(50, 90, 280, 7), kv_layout=layout)
        np.testing.assert_array_equal(cost.decode_run_times(batch, 300),
                                      decode_run_times_by_steps(cost, batch, 300))
        for steps, first in ((1, 0), (2, 7), (4, 300), (12, 3)):     # a short run is priced in Python floats
            np.testing.assert_array_equal(cost.decode_run_times(batch, steps, first),
                                          decode_run_times_by_steps(cost, batch, steps, first))
    mixed = Batch(prefill_new_tokens=(5,), prefill_context_tokens=(0,), decode_context_tokens=(9,))
    np.testing.assert_array_equal(cost.decode_run_times(mixed, 3), decode_run_times_by_steps(cost, mixed, 3))


def test_a_scaled_paged_attention_prices_short_runs_as_long_ones(profile):
    """``paged_attention_overhead`` scales the contiguous kernel's times."""
    scaled = ProfiledCostModel.from_dir(profile, TINY, H100, paged_attention_overhead=1.37)
    assert scaled.decode["paged"].scale == 1.37
    batch = Batch(decode_context_tokens=(50, 90, 280, 7), kv_layout="paged")
    for steps, first in ((1, 0), (3, 5), (40, 0)):
        np.testing.assert_array_equal(scaled.decode_run_times(batch, steps, first),
                                      decode_run_times_by_steps(scaled, batch, steps, first))


def test_empty_and_swap_only_steps(cost):
    assert cost.step_time(Batch()) == 0.0
    swap = cost.step_time(Batch(swap_in_tokens=1000))
    assert swap == pytest.approx(1000 * TINY.kv_bytes_per_token / H100.pcie_bandwidth_Bps)


@pytest.mark.parametrize("file_name, edit, message", [
    ("gemm.csv", None, "gemm.csv: missing profile file"),
    ("elementwise.csv", lambda df: df.assign(seconds=df["seconds"].astype(object).where(df.index != 1, "abc")),
     "elementwise.csv: row 3: seconds"),
    ("decode_attention.csv", lambda df: df.drop(columns=["batch"]), "decode_attention.csv: missing column"),
    ("decode_attention.csv", lambda df: df[df["kind"] == "uniform"], "needs uniform rows"),
    ("prefill_attention.csv", lambda df: df.assign(new_tokens="[4,"), "prefill_attention.csv: row 2: new_tokens"),
    ("gemm.csv", lambda df: df.assign(scope="block"), "gemm.csv: row 2: scope 'block'"),
])
def test_missing_or_malformed_files_name_the_file(profile, file_name, edit, message):
    path = profile / file_name
    if edit is None:
        path.unlink()
    else:
        edit(pd.read_csv(path, keep_default_na=False)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ProfiledCostModel.from_dir(profile, TINY, H100)


def test_bad_provenance_and_mismatched_geometry(profile):
    with pytest.raises(ValueError, match="has hidden_size 64, model llama-2-7b has 4096"):
        ProfiledCostModel.from_dir(profile, MODELS["llama-2-7b"], H100)
    (profile / "provenance.json").write_text("{not json")
    with pytest.raises(ValueError, match="provenance.json: not valid JSON"):
        ProfiledCostModel.from_dir(profile, TINY, H100)
    with pytest.raises(ValueError, match="paged_attention_overhead"):
        ProfiledCostModel.from_dir(profile, TINY, H100, paged_attention_overhead=-1.0)


COMMITTED = default_profile_dir("h100-sxm", "llama-2-7b")


@pytest.mark.skipif(not has_profiles(COMMITTED), reason="no committed h100-sxm/llama-2-7b profiles")
def test_committed_profiles_predict_a_sane_llama_2_7b_decode_step():
    cost = ProfiledCostModel.from_dir(COMMITTED, MODELS["llama-2-7b"], H100)
    step = cost.step_time(Batch(decode_context_tokens=(512,) * 32))
    # at least the 13.5 GB of weights at 3.35 TB/s (4 ms), well under 40 ms
    assert 4e-3 < step < 4e-2
    assert cost.step_time(Batch(decode_context_tokens=(2048,) * 32)) > step


def test_step_time_is_fast(cost):
    batch = Batch(decode_context_tokens=tuple(range(100, 164)), kv_layout="paged")
    start = time.perf_counter()
    for _ in range(2000):
        cost.step_time(batch)
    per_call_s = (time.perf_counter() - start) / 2000
    assert per_call_s < 100e-6    # ~10 us on a laptop core; loose for loaded CI machines


def test_check_reports_held_out_errors_and_fits_only_calibration_steps(tmp_path, capsys):
    from experiments.cli import main
    from kernels.calibration.cli import check

    folder = write_profile(tmp_path / "h100-sxm" / "llama-2-7b")
    prov = json.loads((folder / "provenance.json").read_text())
    prov.pop("geometry")                      # a tiny profile filed under a preset's name
    (folder / "provenance.json").write_text(json.dumps(prov))
    spec = MODELS["llama-2-7b"]
    raw = ProfiledCostModel.from_dir(folder, spec, H100)
    rows = []
    for kind, batch in (("decode", Batch(decode_context_tokens=(150,) * 3, kv_layout="paged")),
                        ("mixed", Batch((7,), (0,), (200,), kv_layout="contiguous"))):
        fitted_s = raw.step_time(batch) + 1e-4        # calibration steps: 0.1 ms above the operators
        for split, measured in (("calibration", fitted_s), ("heldout", fitted_s / 1.04)):
            rows.append(dict(step_id=len(rows), split=split, kind=kind, layout=batch.kv_layout,
                             prefill_new_tokens=json.dumps(batch.prefill_new_tokens),
                             prefill_context_tokens=json.dumps(batch.prefill_context_tokens),
                             decode_context_tokens=json.dumps(batch.decode_context_tokens),
                             num_tokens=batch.num_tokens, num_seqs=batch.num_seqs, measured_s=measured, eager_s=0.0))
    pd.DataFrame(rows).to_csv(folder / "steps.csv", index=False)
    fitted = ProfiledCostModel.from_dir(folder, spec, H100)
    assert fitted.fixed_s - raw.fixed_s == pytest.approx(1e-4, rel=1e-6)   # held-out rows not used
    report = check(tmp_path, "h100-sxm")
    assert "| decode | 1 | 4.0% | 4.0% |" in report
    assert "profiled meets the target: mean 4.0%, p95 4.0%" in report
    _engine_steps(raw, 16).to_csv(folder / "engine_steps.csv", index=False)
    assert check(tmp_path, "h100-sxm") == report    # the check compares GPU time: engine terms stay out
    assert main(["calibrate", "--check", "--hardware", "h100-sxm", "--profiles", str(tmp_path),
                 "--results", "-"]) == 0
    assert "## llama-2-7b on h100-sxm" in capsys.readouterr().out
    assert main(["calibrate", "--profiles", str(tmp_path)]) == 2            # profiling needs --model
    assert "--model is required" in capsys.readouterr().err


# ---- the real engine's launch terms (engine_steps.csv) -------------------------
TRUE_HOST = (1e-4, 2e-6, 1e-7, 5e-5)        # 1, sequence rows, prefill tokens, graph replayed
TRUE_ISSUE = (3e-3, 1e-3, 5e-4)             # 1, has prefills, has decodes
GRAPH_RES, EAGER_RES = 2e-5, 1e-5


def _engine_steps(cost: ProfiledCostModel, max_batch_size: int) -> pd.DataFrame:
    """Noise-free steps of a pretend engine that follows the documented model."""
    from sim.cost.graphs import bucket_for, graph_batch_sizes

    sizes = graph_batch_sizes(max_batch_size)
    shapes = [((), (), [60] * n) for n in (1, 3, 5, 7, 9, 12, 16, 20, 24)]
    shapes += [((8,), (0,), [40] * n) for n in (0, 2, 6)] + [((3, 12), (0, 0), []), ((16,), (0,), [90, 30])]
    rows = []
    for i, (new, ctx, dec) in enumerate(shapes):
        layout = ("paged", "contiguous")[i % 2]
        graph = 0 if new else (bucket_for(sizes, len(dec)) or 0)
        n_rows = sum(new) + len(dec)
        seqs = len(new) + len(dec)
        gpu = cost.gpu_s(layout, graph or n_rows, list(new), list(ctx), len(dec), sum(dec), max(dec, default=0))
        issue = TRUE_ISSUE[0] + TRUE_ISSUE[1] * bool(new) + TRUE_ISSUE[2] * bool(dec)
        device = gpu + GRAPH_RES if graph else max(gpu, issue) + EAGER_RES
        launch = 1e-5 if graph else issue
        host = TRUE_HOST[0] + TRUE_HOST[1] * seqs + TRUE_HOST[2] * sum(new) + TRUE_HOST[3] * bool(graph)
        rows.append(dict(layout=layout, batch_rows=seqs, graph_batch=graph, step_s=device + host,
                         launch_s=launch, wait_s=device - launch, prefill_new_tokens=json.dumps(list(new)),
                         prefill_context_tokens=json.dumps(list(ctx)), decode_seqs=len(dec),
                         decode_context_sum=sum(dec), decode_context_max=max(dec, default=0)))
    return pd.DataFrame(rows)


@pytest.fixture
def engine_cost(profile, cost) -> ProfiledCostModel:
    _engine_steps(cost, 16).to_csv(profile / "engine_steps.csv", index=False)
    return ProfiledCostModel.from_dir(profile, TINY, H100, max_batch_size=16)


def test_engine_terms_are_fitted_from_the_calibration_serving_steps(engine_cost):
    e = engine_cost.engine
    np.testing.assert_allclose(e.host_coef, TRUE_HOST, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(e.issue_coef, TRUE_ISSUE, rtol=1e-6, atol=1e-12)
    assert e.graph_residual_s == pytest.approx(GRAPH_RES, rel=1e-6)
    assert e.eager_residual_s == pytest.approx(EAGER_RES, rel=1e-6)
    assert e.graph_sizes == (1, 2, 4, 8, 16)


def test_a_decode_batch_costs_its_graph_bucket(engine_cost):
    """5 sequences replay the 8-row graph: GEMMs and LM head on 8 rows,
    attention over the 5 real contexts; 20 sequences (past the largest
    graph) run eagerly and cost at least the issue time."""
    e = engine_cost.engine
    five = Batch(decode_context_tokens=(50, 60, 70, 80, 90), kv_layout="paged")
    expect = engine_cost.gpu_s("paged", 8, [], [], 5, 350, 90) + e.graph_residual_s + e.host_s(5, 0, True)
    assert engine_cost.step_time(five) == pytest.approx(expect, rel=1e-12)
    eight = Batch(decode_context_tokens=(50, 60, 70, 80, 90, 1, 1, 1), kv_layout="paged")
    assert engine_cost.step_time(eight) > engine_cost.step_time(five)     # same rows, more attention
    twenty = Batch(decode_context_tokens=(40,) * 20, kv_layout="contiguous")
    assert engine_cost.step_time(twenty) >= e.issue_s(False, True) + e.host_s(20, 0, False)


def test_engine_decode_runs_equal_the_per_step_fallback(engine_cost):
    for dec in ((50, 90, 280, 7), (40,) * 20):
        for layout in ("paged", "contiguous"):
            batch = Batch(decode_context_tokens=dec, kv_layout=layout)
            np.testing.assert_array_equal(engine_cost.decode_run_times(batch, 50),
                                          decode_run_times_by_steps(engine_cost, batch, 50))
            for steps, first in ((1, 0), (3, 11)):
                np.testing.assert_array_equal(engine_cost.decode_run_times(batch, steps, first),
                                              decode_run_times_by_steps(engine_cost, batch, steps, first))


def test_mixed_steps_are_eager_max_of_gpu_and_issue_time(engine_cost):
    e = engine_cost.engine
    mixed = Batch(prefill_new_tokens=(8,), prefill_context_tokens=(0,), decode_context_tokens=(40, 40))
    gpu = engine_cost.gpu_s("paged", 10, [8], [0], 2, 80, 40)
    expect = max(gpu, e.issue_s(True, True)) + e.eager_residual_s + e.host_s(3, 8, False)
    assert engine_cost.step_time(mixed) == pytest.approx(expect, rel=1e-12)


def test_a_bilinear_row_is_the_surface_at_that_batch_size_extrapolation_included():
    """``Bilinear.row(b)`` (what decode pricing interpolates with
    ``np.interp``) agrees with the surface itself between grid points,
    clamped below the grid and extrapolated above it along the last segment."""
    from sim.cost.interpolation import Bilinear

    surface = Bilinear([1.0, 8.0, 32.0], [16.0, 256.0, 1024.0],
                       np.array([[1.0, 2.0, 5.0], [2.0, 4.0, 9.0], [5.0, 9.0, 20.0]]))
    for b in (1.0, 3.0, 8.0, 20.0, 32.0, 64.0):
        xs, ys = surface.row(b)
        for c in (0.0, 16.0, 100.0, 256.0, 700.0, 1024.0, 3000.0, 1e6):
            assert np.interp(c, xs, ys) == pytest.approx(surface(b, c), rel=1e-12), (b, c)
        assert surface.row(b) is surface.row(b)           # cached


def test_engine_terms_false_prices_gpu_time_only():
    """The committed H200 llama-2-7b profile has engine terms; with
    ``engine_terms: false`` a step costs exactly its GPU time, and the note
    says so."""
    from sim.batch import Batch
    from sim.cost import build_cost_model
    from sim.cost.spec import ProfiledCostSpec
    from sim.presets import resolve_hardware, resolve_model

    model, hw = resolve_model("llama-2-7b"), resolve_hardware("h200")
    full, note_full = build_cost_model(ProfiledCostSpec(), model, hw)
    gpu, note_gpu = build_cost_model(ProfiledCostSpec(engine_terms=False), model, hw)
    assert full.engine is not None and gpu.engine is None
    assert note_gpu.endswith("(GPU time only)") and not note_full.endswith("(GPU time only)")
    mixed = Batch(prefill_new_tokens=(300,), prefill_context_tokens=(0,), decode_context_tokens=(500,) * 7)
    dec = mixed.decode_context_tokens
    assert gpu.step_time(mixed) == gpu.gpu_s("paged", 307, (300,), (0,), 7, sum(dec), max(dec))
    assert full.step_time(mixed) > gpu.step_time(mixed)       # the engine's issue floor and host time
