"""pagesim capacity: objectives, the bracket-and-bisect search, goodput,
targets with pruning, outputs and resumption."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from experiments.capacity import (
    Probe, Search, attainment, max_rate, parse_objective, plan, vllm_flags, write_results,
    candidates, load_axis,
)
from experiments.cli import main
from experiments.config import validate
from experiments.plots.capacity import pareto_front
from sim.metrics import LATENCIES

# a small fast setup: linear clock, 300 requests per probe
RAW = {
    "name": "cap", "seed": 0, "model": "llama-2-7b", "hardware": "h100-sxm",
    "workload": {"num_requests": 300, "arrival": {"process": "poisson", "rate_rps": 2.0},
                 "lengths": {"prompt": {"dist": "uniform", "low": 20, "high": 200},
                             "output": {"dist": "uniform", "low": 10, "high": 100}}},
    "engine": {"batching": {"policy": "continuous", "max_batch_size": 16},
               "cost_model": {"kind": "linear", "base_s": 0.004, "per_prefill_token_s": 2e-5,
                              "per_decode_seq_s": 2e-4, "per_context_token_s": 1e-7}},
}


def test_objectives_are_summary_metrics_or_per_request_latencies():
    o = parse_objective("ttft_s_p99<=1")
    assert (o.metric, o.limit, o.per_request, o.column) == ("ttft_s_p99", 1.0, False, "steady_state_ttft_s_p99")
    assert parse_objective("throughput_rps<=5").column == "throughput_rps"        # not a latency: whole run
    assert parse_objective(" tpot_s <= 0.1 ").per_request
    assert {parse_objective(f"{m}<=1").per_request for m in LATENCIES} == {True}
    with pytest.raises(ValueError, match="unknown metric"):
        parse_objective("latency<=1")


class _Threshold:
    """A probe that passes below ``limit`` req/s: the search must find it."""

    def __init__(self, limit: float):
        self.limit, self.rates = limit, []

    def __call__(self, cand, load, rate, seed, what=""):
        self.rates.append(rate)
        return Probe(rate, seed, rate <= self.limit, "ok", {"rate": rate})


@pytest.mark.parametrize("limit,start", [(10.0, 1.0), (10.0, 300.0), (0.37, 5.0), (123.0, 123.0)])
def test_bracket_and_bisect_find_the_threshold_within_tolerance(limit, start):
    probe = _Threshold(limit)
    ans = max_rate(None, None, probe, 0, 0.02, start, 1.0)
    assert ans.rate_rps <= limit and ans.rate_rps >= limit / 1.02
    assert ans.probes == len(probe.rates) <= 2 + math.ceil(math.log2(max(limit, start) / min(limit, start))) + 7


def test_nothing_above_the_ceiling_is_simulated_or_credited():
    probe = _Threshold(50.0)
    ans = max_rate(None, None, probe, 0, 0.02, 4.0, 1.0, ceiling_rps=20.0)
    assert 20.0 / 1.02 <= ans.rate_rps <= 20.0 and max(probe.rates) <= 20.0


def test_a_load_nothing_meets_answers_none():
    ans = max_rate(None, None, _Threshold(0.0), 0, 0.02, 1.0, 1.0)
    assert ans.rate_rps is None and ans.at_rate is None


def test_attainment_counts_window_requests_meeting_every_objective():
    reqs = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0, 3.0, 4.0, 9.0], "status": ["finished"] * 5 + ["unfinished"],
                         "ttft_s": [0.1, 0.5, 2.0, 0.2, 0.3, np.nan], "tpot_s": [0.01, 0.01, 0.01, 0.5, np.nan, np.nan],
                         "e2e_s": [1.0] * 5 + [np.nan], "normalized_latency_s_per_token": [0.1] * 6})
    summary = {"steady_state": {"window_start_s": 1.0, "window_end_s": 9.0}}
    objs = (parse_objective("ttft_s<=1"), parse_objective("tpot_s<=0.1"))
    # window: requests 1..5; 1 ok, 2 misses TTFT, 3 misses TPOT, 4 a one-token answer, 5 unfinished
    assert attainment(reqs, summary, objs) == pytest.approx(2 / 5)


def test_pareto_front_keeps_the_undominated():
    x = np.array([1.0, 2.0, 0.5, 3.0])
    y = np.array([5.0, 6.0, 1.0, 4.0])
    assert pareto_front(x, y).tolist() == [True, True, True, False]


def test_capacity_of_tiny_configurations_resumes_and_writes_a_runnable_recommendation(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["sweep"] = {"engine.memory.layout": ["paged", "contiguous"], "workload.arrival.rate_rps": [1, 2]}
    cfg = validate(raw)
    search = Search((parse_objective("ttft_s_p99<=0.5"),), seeds=2, tolerance=0.05)
    out = tmp_path / "cap"
    table = plan(raw, cfg, out, search, workers=1, quiet=True)
    assert len(table) == 2 and table["max_rate_rps"].notna().all()
    cache = sorted((out / "probes").glob("*.json"))
    # every answer passes, and the next rate up (the bracket's failing end) does not
    for r in table.to_dict("records"):
        assert r["max_rate_min_rps"] <= r["max_rate_rps"] <= r["max_rate_max_rps"] <= r["saturated_rate_rps"]
        assert r["ttft_s_p99"] <= 0.5
    # paged holds more sequences than contiguous reservations: at least as much capacity
    paged, contiguous = table["max_rate_rps"].tolist()
    assert paged >= contiguous
    # a second run simulates nothing new and answers the same
    again = plan(raw, cfg, out, search, workers=1, quiet=True)
    assert sorted((out / "probes").glob("*.json")) == cache
    pd.testing.assert_frame_equal(table, again)
    # another version of the simulator probes afresh (same code in fact: the same answers)
    import experiments.capacity as capacity_module

    original = capacity_module.code_fingerprint
    capacity_module.code_fingerprint = lambda: "another-version"
    try:
        fresh = plan(raw, cfg, out, search, workers=1, quiet=True)
    finally:
        capacity_module.code_fingerprint = original
    assert len(list((out / "probes").glob("*.json"))) == 2 * len(cache)
    pd.testing.assert_frame_equal(table, fresh)
    cands = {c.cid: c for c in candidates(raw, cfg, load_axis(cfg))}
    paths = write_results(table, out, "cap", "pagesim capacity ...", search, None, None, cands)
    rec = yaml.safe_load(paths["yaml"].read_text())
    rec_cfg = validate(rec)
    assert rec_cfg.workload.arrival.rate_rps == pytest.approx(paged)
    assert "--max-num-seqs 16" in paths["yaml"].read_text()
    assert (out / "plots" / "pareto.png").is_file()
    assert "| continuous+paged |" in paths["md"].read_text()


def test_a_target_takes_the_replicas_it_needs_and_prunes_what_cannot_be_cheaper(tmp_path):
    raw = copy.deepcopy(RAW)
    # the same engine twice, at two prices: the dearer one's cost bound can never win
    raw["sweep"] = {"hardware": ["h100-sxm", "h200"]}
    cfg = validate(raw)
    search = Search((parse_objective("ttft_s_p99<=0.5"),), seeds=1, tolerance=0.05)
    single = plan(raw, cfg, tmp_path / "one", search, workers=1, quiet=True)
    per_replica = single["max_rate_rps"].min()
    target = 2.5 * per_replica
    table = plan(raw, cfg, tmp_path / "cap", search, target_rps=target, gpu_cost={"h100-sxm": 2.0, "h200": 50.0},
                 workers=1, quiet=True)
    by_hw = table.set_index("hardware")
    assert by_hw.loc["h200", "status"] == "pruned"
    h100 = by_hw.loc["h100-sxm"]
    assert h100["target_verified"] and h100["replicas_at_target"] >= 3
    assert h100["dollars_per_hour"] == pytest.approx(2.0 * h100["replicas_at_target"])
    assert h100["margin_at_target"] >= -0.02 * 2


def test_vllm_flags_name_parallelism_and_batch_limits():
    cfg = validate({**RAW, "model": "llama-3-70b", "hardware": "h200",
                    "engine": {**RAW["engine"], "parallel": {"tensor": 4, "pipeline": 2},
                               "memory": {"block_size": 32, "gpu_memory_utilization": 0.92}}})
    assert vllm_flags(cfg) == ("--tensor-parallel-size 4 --pipeline-parallel-size 2 --max-num-seqs 16 "
                               "--max-num-batched-tokens 8192 --block-size 32 --gpu-memory-utilization 0.92 "
                               "--no-enable-prefix-caching --no-enable-chunked-prefill")
    shared = validate({**RAW, "engine": {**RAW["engine"], "memory": {"layout": "paged", "prefix_caching": True},
                                         "batching": {"policy": "continuous", "chunked_prefill": True}}})
    assert vllm_flags(shared).endswith("--enable-prefix-caching --enable-chunked-prefill")


def test_a_trace_is_loaded_by_its_time_scale():
    cfg = validate({**RAW, "workload": {"trace": "azure_conv_2023", "num_requests": 200}})
    load = load_axis(cfg)
    assert load.key == "workload.arrival.time_scale" and load.base == 1.0
    point = load.apply({"workload": {"arrival": {"time_scale": 1.0}}}, 2 * load.native_rps)
    assert point["workload"]["arrival"]["time_scale"] == pytest.approx(0.5)


def test_the_command_prints_the_table_and_writes_its_files(tmp_path, capsys):
    raw = copy.deepcopy(RAW)
    raw["workload"]["num_requests"] = 150
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code = main(["capacity", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "cap"), "--seeds", "1",
                 "--tolerance", "0.1", "--slo", "ttft_s<=0.5", "--attainment", "0.9", "--jobs", "1"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "| continuous+paged |" in out and "pagesim capacity" in (tmp_path / "cap" / "capacity.md").read_text()
    assert "pagesim: capacity: continuous+paged seed 0 bracket:" in err    # a line per probe
    row = pd.read_csv(tmp_path / "cap" / "capacity.csv").iloc[0]
    probe_rows = [json.loads(p.read_text()) for p in (tmp_path / "cap" / "probes").glob("*.json")]
    assert all("ttft_s<=0.5" in p["attainment"] for p in probe_rows)
    assert row["max_rate_rps"] > 0


def test_the_recommendation_is_the_cheapest_verified_and_fewest_gpus_is_named_apart():
    from experiments.capacity import _fewest_gpus, recommend

    table = pd.DataFrame([
        dict(config="a", max_rate_rps=10.0, target_verified=True, gpus_at_target=12, dollars_per_hour=30.0,
             margin_at_target=0.1),
        dict(config="b", max_rate_rps=20.0, target_verified=True, gpus_at_target=8, dollars_per_hour=40.0,
             margin_at_target=0.2),
        dict(config="c", max_rate_rps=None, target_verified=False, gpus_at_target=None, dollars_per_hour=None,
             margin_at_target=None)])
    assert recommend(table, 50.0)["config"] == "a"
    assert _fewest_gpus(table)["config"] == "b"
    assert recommend(table.drop(columns="dollars_per_hour"), 50.0)["config"] == "b"   # no prices: GPUs rank
