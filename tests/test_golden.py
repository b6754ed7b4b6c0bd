"""One small experiment end to end: its summary against a committed golden,
and its run directory against DESIGN.md's output contract.

The golden run (tests/golden/small.yaml) is continuous batching with paged
KV, 200 Poisson requests at 20 req/s into a 300-block cache, priced by the
linear cost model so that recalibrating the roofline or profiled models
does not move it. Why its numbers are plausible, checked by hand when the
golden was written:

- all 200 requests finish; arrivals span ~10.3 s (200 / 20 req/s ~ 10 s) and
  the last one finishes at 12.06 s, so throughput_rps = 200 / 12.06 = 16.6
  and throughput_tokens_per_s = 24,049 output tokens / 12.06 s = 1,994;
- TPOT p50 6.3 ms ~ the linear step time at the mean batch of 12.5 sequences:
  4 ms base + 12.5 x 0.1 ms per sequence + ~0.4 ms of context, plus the
  prefills that join each step; TTFT p50 13.6 ms is about one mixed step
  with a ~180-token prefill, and the tail (p99 0.41 s) is queueing while the
  cache is full (76% of slots in use on average, 22 recompute preemptions).

Regenerate after an intended behaviour change, and say why in the commit:
``PAGESIM_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` or
``python -m tests.test_golden --update``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.cli import main
from experiments.config import load_config, resolved_dict, validate
from sim.metrics import WALL_TIME_FIELDS

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_CONFIG = GOLDEN_DIR / "small.yaml"
GOLDEN_SUMMARY = GOLDEN_DIR / "small_summary.json"
UPDATE_ENV = "PAGESIM_UPDATE_GOLDEN"
REL_TOL = 1e-9
HOW_TO_UPDATE = (f"if the change is intended, regenerate with `{UPDATE_ENV}=1 python -m pytest "
                 f"tests/test_golden.py` or `python -m tests.test_golden --update` and commit "
                 f"{GOLDEN_SUMMARY.name} with the reason")

# DESIGN.md, "Output contract of pagesim run CONFIG --out DIR".
REQUEST_COLUMNS = [
    "request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "reason",
    "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "normalized_latency_s_per_token",
    "preemptions", "replica", "cached_tokens",
]
TIMELINE_COLUMNS = {"t_s", "replica", "running", "waiting", "batch_tokens", "kv_token_slots_used",
                    "kv_token_slots_reserved", "kv_total_slots"}
LATENCY_FIELDS = ("ttft_s", "tpot_s", "e2e_s", "normalized_latency_s_per_token")
SUMMARY_FIELDS = {"throughput_rps", "throughput_tokens_per_s", *LATENCY_FIELDS, "kv_utilization_mean",
                  "kv_waste", "mean_batch_size", "preemptions", "counts", "sim_wall_s", "sim_events"}


def run_golden(out_dir: Path, *flags: str) -> Path:
    assert main(["run", str(GOLDEN_CONFIG), "--out", str(out_dir), "--quiet", *flags]) == 0
    return out_dir


def comparable(summary: dict) -> dict:
    """The summary without its wall-time fields, which differ from run to run."""
    return {key: value for key, value in summary.items() if key not in WALL_TIME_FIELDS}


def write_golden(summary: dict) -> None:
    GOLDEN_SUMMARY.write_text(json.dumps(comparable(summary), indent=2, sort_keys=True) + "\n")


def differences(expected, actual, path: str = "summary") -> list[str]:
    """Where ``actual`` departs from ``expected``: floats within REL_TOL, all else exactly."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}.{key}: missing" for key in sorted(expected.keys() - actual.keys())]
        out += [f"{path}.{key}: not in the golden" for key in sorted(actual.keys() - expected.keys())]
        for key in sorted(expected.keys() & actual.keys()):
            out += differences(expected[key], actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, float) and isinstance(actual, float):
        if math.isclose(expected, actual, rel_tol=REL_TOL, abs_tol=0.0):
            return []
    elif type(expected) is type(actual) and expected == actual:
        return []
    return [f"{path}: golden {expected!r}, got {actual!r}"]


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory) -> Path:
    """The golden experiment, with the optional outputs (CSV, plots) switched on."""
    return run_golden(tmp_path_factory.mktemp("golden") / "run", "--csv")


def test_summary_matches_golden(golden_run):
    actual = json.loads((golden_run / "summary.json").read_text())
    if os.environ.get(UPDATE_ENV) == "1":
        write_golden(actual)
    expected = json.loads(GOLDEN_SUMMARY.read_text())
    diffs = differences(expected, comparable(actual))
    assert not diffs, (f"{GOLDEN_CONFIG.name} no longer reproduces {GOLDEN_SUMMARY.name} "
                       f"(rel. tol. {REL_TOL:g}):\n  " + "\n  ".join(diffs) + f"\n{HOW_TO_UPDATE}")


def test_golden_comparison_catches_small_changes():
    golden = json.loads(GOLDEN_SUMMARY.read_text())
    nudged = json.loads(GOLDEN_SUMMARY.read_text())
    nudged["ttft_s"]["p99"] *= 1 + 1e-7
    nudged["counts"]["finished"] -= 1
    nudged["config_label"] = "static+paged"
    assert differences(golden, golden) == []
    assert [d.split(":")[0] for d in differences(golden, nudged)] == [
        "summary.config_label", "summary.counts.finished", "summary.ttft_s.p99"]


def test_run_directory_follows_the_output_contract(golden_run):
    assert sorted(p.name for p in golden_run.iterdir()) == [
        ".pagesim", "config.yaml", "plots", "requests.csv", "requests.parquet", "summary.json", "timeline.parquet"]
    plots = sorted(golden_run.glob("plots/*"))
    assert plots and all(p.suffix == ".png" and p.stat().st_size > 0 for p in plots)

    requests = pd.read_parquet(golden_run / "requests.parquet")
    assert list(requests.columns) == REQUEST_COLUMNS
    assert list(pd.read_csv(golden_run / "requests.csv").columns) == REQUEST_COLUMNS
    assert len(pd.read_csv(golden_run / "requests.csv")) == len(requests) == 200
    assert TIMELINE_COLUMNS <= set(pd.read_parquet(golden_run / "timeline.parquet").columns)

    summary = json.loads((golden_run / "summary.json").read_text())
    assert SUMMARY_FIELDS <= summary.keys()
    for name in LATENCY_FIELDS:
        assert set(summary[name]) == {"mean", "p50", "p90", "p99"}, name
    assert set(summary["kv_waste"]) == {"internal", "reserved_unused", "external"}
    assert set(summary["counts"]) == {"arrived", "finished", "rejected", "unfinished"}


def test_written_config_reloads_to_the_same_config(golden_run):
    written = yaml.safe_load((golden_run / "config.yaml").read_text())
    reloaded = validate(written, "config.yaml")
    assert reloaded == load_config(GOLDEN_CONFIG)[0]
    assert resolved_dict(reloaded) == written       # fully resolved: nothing left to fill in


def test_summary_agrees_with_the_requests_table(golden_run):
    summary = json.loads((golden_run / "summary.json").read_text())
    requests = pd.read_parquet(golden_run / "requests.parquet")
    finished = requests[requests["status"] == "finished"]
    counts = summary["counts"]
    assert counts["arrived"] == len(requests) == counts["finished"] + counts["rejected"] + counts["unfinished"]
    assert counts["finished"] == len(finished)
    duration_s = finished["finish_s"].max() - requests["arrival_s"].min()
    assert summary["duration_s"] == pytest.approx(duration_s, rel=REL_TOL)
    assert summary["throughput_rps"] == pytest.approx(len(finished) / duration_s, rel=REL_TOL)
    assert summary["throughput_tokens_per_s"] == pytest.approx(
        finished["output_tokens"].sum() / duration_s, rel=REL_TOL)
    assert summary["ttft_s"]["mean"] == pytest.approx(finished["ttft_s"].mean(), rel=REL_TOL)
    assert summary["preemptions"] == requests["preemptions"].sum()


def _update_from_command_line(argv: list[str]) -> int:
    if argv != ["--update"]:
        print("usage: python -m tests.test_golden --update", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        summary = json.loads((run_golden(Path(tmp) / "run", "--no-plots") / "summary.json").read_text())
    write_golden(summary)
    print(f"wrote {GOLDEN_SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(_update_from_command_line(sys.argv[1:]))
