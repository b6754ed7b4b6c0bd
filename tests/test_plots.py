"""Plots of a run and of a sweep, drawn from tiny synthetic output files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.plots import (
    SweepAxis,
    bin_timeline,
    choose_x,
    kv_fractions,
    plot_run,
    plot_sweep,
    read_sweep,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_PLOTS = {"latency_cdf.png", "batch_and_kv.png", "queues.png"}
SWEEP_PLOTS = {"throughput.png", "normalized_latency.png", "ttft_tpot.png", "kv_waste.png",
               "timelines.png"}
RATE = "workload.arrival.rate_rps"


def _requests(num_finished: int = 3) -> pd.DataFrame:
    rows = []
    for i in range(num_finished):
        rows.append(dict(request_id=i, arrival_s=0.1 * i, prompt_tokens=10, output_tokens=4,
                         status="finished", reason="", first_token_s=0.2 * i + 0.1,
                         finish_s=0.2 * i + 0.5, ttft_s=0.1 + 0.1 * i, tpot_s=0.05 * (i + 1),
                         e2e_s=0.4 + 0.1 * i, normalized_latency_s_per_token=0.03 * (i + 1),
                         preemptions=0, replica=0))
    nan = float("nan")
    rows.append(dict(request_id=num_finished, arrival_s=0.0, prompt_tokens=5000,
                     output_tokens=4, status="rejected", reason="longer than context",
                     first_token_s=nan, finish_s=nan, ttft_s=nan, tpot_s=nan, e2e_s=nan,
                     normalized_latency_s_per_token=nan, preemptions=0, replica=-1))
    return pd.DataFrame(rows)


def _timeline(t_s: list[float], replica: int = 0, total_slots: int = 64) -> pd.DataFrame:
    """Unevenly spaced steps; every slot count adds up to ``total_slots``."""
    n = len(t_s)
    used = np.arange(n) % 16 + 8
    internal, reserved, external = np.full(n, 4), np.full(n, 8), np.full(n, 2)
    free = total_slots - used - internal - reserved
    return pd.DataFrame(dict(
        t_s=t_s, replica=replica, step_s=np.diff(t_s, append=t_s[-1] + 0.01),
        running=np.arange(n) % 5, waiting=np.arange(n) % 3, swapped=0,
        batch_seqs=np.arange(n) % 5, batch_tokens=np.arange(n) % 5 * 3,
        prefill_tokens=0, decode_seqs=np.arange(n) % 5, kv_token_slots_used=used,
        kv_token_slots_reserved=internal + reserved, kv_internal_slots=internal,
        kv_reserved_slots=reserved, kv_external_slots=external, kv_free_slots=free,
        kv_total_slots=total_slots))


def _write_run(run_dir: Path, requests: pd.DataFrame, timeline: pd.DataFrame) -> Path:
    run_dir.mkdir(parents=True)
    requests.to_parquet(run_dir / "requests.parquet")
    timeline.to_parquet(run_dir / "timeline.parquet")
    (run_dir / "summary.json").write_text(json.dumps({"config_label": "continuous+paged"}))
    return run_dir


def _assert_pngs(plots_dir: Path, written: list[Path], expected_names: set[str]) -> None:
    assert {path.name for path in written} == expected_names
    assert all(path.parent == plots_dir for path in written)
    assert {path.name for path in plots_dir.iterdir()} == expected_names  # no temp files left
    for path in written:
        data = path.read_bytes()
        assert len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


# ---------------------------------------------------------------------- run

def test_plot_run_writes_each_figure_as_png(tmp_path):
    run_dir = _write_run(tmp_path / "run", _requests(), _timeline([0.0, 0.1, 0.15, 0.9, 1.0]))
    written = plot_run(run_dir)
    _assert_pngs(run_dir / "plots", written, RUN_PLOTS)


def test_plot_run_with_replicas_and_no_finished_request(tmp_path):
    timeline = pd.concat([_timeline([0.0, 0.5, 2.0], replica=0),
                          _timeline([0.3, 0.4], replica=1, total_slots=128)])
    run_dir = _write_run(tmp_path / "run", _requests(num_finished=0), timeline)
    written = plot_run(run_dir)
    _assert_pngs(run_dir / "plots", written, RUN_PLOTS)


def test_plot_run_with_empty_timeline(tmp_path):
    run_dir = _write_run(tmp_path / "run", _requests(), _timeline([0.0]).iloc[:0])
    _assert_pngs(run_dir / "plots", plot_run(run_dir), RUN_PLOTS)


@pytest.mark.parametrize("file_name, column", [("requests.parquet", "ttft_s"),
                                               ("timeline.parquet", "step_s")])
def test_missing_column_names_column_and_file(tmp_path, file_name, column):
    requests, timeline = _requests(), _timeline([0.0, 1.0])
    if file_name == "requests.parquet":
        requests = requests.drop(columns=[column])
    else:
        timeline = timeline.drop(columns=[column])
    run_dir = _write_run(tmp_path / "run", requests, timeline)
    with pytest.raises(ValueError, match=rf"{file_name}: missing required column\(s\) '{column}'"):
        plot_run(run_dir)


def test_missing_or_corrupt_files_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="run directory not found"):
        plot_run(tmp_path / "nowhere")
    run_dir = _write_run(tmp_path / "run", _requests(), _timeline([0.0, 1.0]))
    (run_dir / "timeline.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="timeline.parquet: not a readable parquet file"):
        plot_run(run_dir)
    (run_dir / "requests.parquet").unlink()
    with pytest.raises(ValueError, match="requests.parquet: file not found"):
        plot_run(run_dir)


# ----------------------------------------------------------------- timeline

def _tiny_timeline() -> pd.DataFrame:
    return pd.DataFrame(dict(
        t_s=[0.0, 0.1, 0.5, 0.6], replica=[0, 0, 0, 1], step_s=[0.1, 0.3, 0.5, 0.0],
        batch_seqs=[2, 6, 0, 10], kv_total_slots=[50, 50, 50, 100]))


def test_bin_timeline_weights_by_step_time_and_sums_replicas():
    edges_s, binned = bin_timeline(_tiny_timeline(), num_bins=2)
    assert edges_s.tolist() == [0.0, 0.5, 1.0]  # up to the last step's end
    # replica 0: bin 0 = (2*0.1 + 6*0.3) / 0.4 = 5, bin 1 = 0; replica 1 (a 0 s
    # step, plain mean): nothing in bin 0, 10 in bin 1; its memory exists in bin 0.
    assert binned["batch_seqs"].tolist() == pytest.approx([5.0, 10.0])
    assert binned["kv_total_slots"].tolist() == [150.0, 150.0]


def test_bin_timeline_holds_values_over_empty_bins():
    timeline = pd.DataFrame(dict(t_s=[0.0, 0.5], replica=0, step_s=[0.5, 0.5],
                                 batch_seqs=[2, 0]))
    edges_s, binned = bin_timeline(timeline, num_bins=4)
    assert edges_s.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert binned["batch_seqs"].tolist() == [2.0, 2.0, 0.0, 0.0]


def test_kv_fractions_are_step_time_weighted():
    timeline = pd.DataFrame(dict(
        step_s=[1.0, 3.0], kv_token_slots_used=[10, 30], kv_internal_slots=[2, 6],
        kv_reserved_slots=[0, 20], kv_external_slots=[8, 4], kv_total_slots=[100, 100]))
    fractions = kv_fractions(timeline)
    assert fractions == pytest.approx({"kv_token_slots_used": 0.25, "kv_internal_slots": 0.05,
                                       "kv_reserved_slots": 0.15, "kv_external_slots": 0.05,
                                       "free": 0.5})


# -------------------------------------------------------------------- sweep

def _sweep_row(point_id: str, label: str, x, scale: float = 1.0) -> dict:
    return {"point_id": point_id, "config_label": label, RATE: x,
            "throughput_rps": 0.9 * scale, "throughput_tokens_per_s": 100.0 * scale,
            "normalized_latency_s_per_token_mean": 0.02 * scale, "ttft_s_p50": 0.1 * scale,
            "ttft_s_p99": 0.5 * scale, "tpot_s_p50": 0.02, "tpot_s_p99": 0.04,
            "kv_utilization_mean": 0.6, "kv_waste_internal": 0.01, "counts_finished": 10}


def _write_sweep(sweep_dir: Path, rows: list[dict], with_timeline: set[str]) -> Path:
    sweep_dir.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(sweep_dir / "sweep.csv", index=False)
    for row in rows:
        if row["point_id"] in with_timeline:
            point_dir = sweep_dir / "points" / row["point_id"]
            point_dir.mkdir(parents=True)
            _timeline([0.0, 0.2, 0.25, 1.5]).to_parquet(point_dir / "timeline.parquet")
    return sweep_dir


def _two_config_sweep(tmp_path: Path) -> Path:
    """Two configurations at rates 1, 2, 4; the paged point at rate 4 failed
    (no metrics, no timeline) and the contiguous one has no row there."""
    rows = [_sweep_row(f"{short}-{rate}", label, rate, scale=rate)
            for short, label in (("paged", "continuous+paged"), ("contig", "continuous+contiguous"))
            for rate in (1, 2, 4)]
    rows = [row for row in rows if row["point_id"] != "contig-4"]
    failed = next(row for row in rows if row["point_id"] == "paged-4")
    failed.update({k: float("nan") for k in failed if k.startswith(("throughput", "ttft"))})
    ids = {row["point_id"] for row in rows} - {"paged-4"}
    return _write_sweep(tmp_path / "sweep", rows, with_timeline=ids)


def test_choose_x_without_any_timeline_is_none():
    table = pd.DataFrame({"series": ["a", "a", "b", "b", "b"], "x": [1.0, 2.0, 1.0, 2.0, 4.0],
                          "point_id": ["a1", "a2", "b1", "b2", "b4"]})
    chosen, missing = choose_x(table, Path("/nonexistent"))
    assert (chosen, missing) == (None, ["a", "b"])


def test_plot_sweep_writes_each_figure_and_survives_missing_points(tmp_path):
    sweep_dir = _two_config_sweep(tmp_path)
    table, axis = read_sweep(sweep_dir, RATE)
    assert axis == SweepAxis(RATE)
    assert choose_x(table, sweep_dir) == (2.0, [])
    written = plot_sweep(sweep_dir, log_latency=True)
    _assert_pngs(sweep_dir / "plots", written, SWEEP_PLOTS)


def test_choose_x_falls_back_to_most_covered_value(tmp_path):
    rows = [_sweep_row("a1", "static+paged", 1), _sweep_row("a2", "static+paged", 2),
            _sweep_row("b1", "continuous+paged", 1)]
    sweep_dir = _write_sweep(tmp_path / "sweep", rows, with_timeline={"a2", "b1"})
    table, _ = read_sweep(sweep_dir, RATE)
    assert choose_x(table, sweep_dir) == (2.0, ["continuous+paged"])


def test_plot_sweep_with_single_value_and_no_timelines(tmp_path):
    rows = [_sweep_row("p", "continuous+paged", 3.0), _sweep_row("c", "static+contiguous", 3.0)]
    sweep_dir = _write_sweep(tmp_path / "sweep", rows, with_timeline=set())
    _assert_pngs(sweep_dir / "plots", plot_sweep(sweep_dir), SWEEP_PLOTS)


def test_non_numeric_x_becomes_ordered_categories(tmp_path):
    key = "engine.kv.reservation"
    rows = [{**_sweep_row(f"{policy}-{label}", label, None), key: policy}
            for label in ("continuous+contiguous", "static+contiguous")
            for policy in ("max", "pow2", "exact")]
    sweep_dir = _write_sweep(tmp_path / "sweep", rows, with_timeline={"pow2-static+contiguous"})
    table, axis = read_sweep(sweep_dir, key)
    assert axis == SweepAxis(key, ("max", "pow2", "exact"))
    assert sorted(set(table["x"])) == [0.0, 1.0, 2.0]
    assert choose_x(table, sweep_dir) == (1.0, ["continuous+contiguous"])
    _assert_pngs(sweep_dir / "plots", plot_sweep(sweep_dir, key), SWEEP_PLOTS)


def test_other_varying_swept_keys_split_series(tmp_path):
    rows = [{**_sweep_row(f"{model}-{seed}-{rate}", "continuous+paged", rate),
             "engine.model.name": model, "seed": seed, "duration_s": 10.0 * rate}
            for model in ("opt-13b", "llama-2-7b") for seed in (0, 1) for rate in (1, 2)]
    sweep_dir = _write_sweep(tmp_path / "sweep", rows, with_timeline=set())
    table, _ = read_sweep(sweep_dir, RATE)
    assert sorted(set(table["series"])) == [  # a varying summary column splits nothing
        "continuous+paged, name=llama-2-7b, seed=0", "continuous+paged, name=llama-2-7b, seed=1",
        "continuous+paged, name=opt-13b, seed=0", "continuous+paged, name=opt-13b, seed=1"]
    assert len(table) == 8


def test_a_swept_mapping_names_only_what_differs(tmp_path):
    """A sweep over whole ``engine.batching`` mappings labels its series by
    the entries that differ, not by the whole mapping."""
    variants = [{"policy": "continuous", "max_batch_tokens": 8192, "chunked_prefill": False},
                {"policy": "continuous", "max_batch_tokens": 512, "chunked_prefill": True}]
    rows = [{**_sweep_row(f"{i}-{rate}", "continuous+paged", rate), "engine.batching": str(v)}
            for i, v in enumerate(variants) for rate in (1, 2)]
    sweep_dir = _write_sweep(tmp_path / "sweep", rows, with_timeline=set())
    table, _ = read_sweep(sweep_dir, RATE)
    assert sorted(set(table["series"])) == [
        "continuous+paged, max_batch_tokens=512, chunked_prefill=True",
        "continuous+paged, max_batch_tokens=8192, chunked_prefill=False"]


@pytest.mark.parametrize("drop", [RATE, "ttft_s_p99"])
def test_sweep_missing_column_names_column_and_file(tmp_path, drop):
    rows = [{k: v for k, v in _sweep_row("p", "continuous+paged", 1).items() if k != drop}]
    sweep_dir = _write_sweep(tmp_path / "sweep", rows, with_timeline=set())
    with pytest.raises(ValueError, match=rf"sweep.csv: missing required column\(s\) '{drop}'"):
        plot_sweep(sweep_dir)


def test_sweep_without_any_x_value_raises(tmp_path):
    sweep_dir = _write_sweep(tmp_path / "sweep", [_sweep_row("p", "continuous+paged", None)],
                             with_timeline=set())
    with pytest.raises(ValueError, match=f"sweep.csv: no row has a value in column '{RATE}'"):
        plot_sweep(sweep_dir)
