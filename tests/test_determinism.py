"""One config and seed give one result (DESIGN.md rule 5).

Each run goes through ``pagesim run`` in this process, so state leaking from
one run into the next (module-level counters, a shared generator) would show
up as a difference. ``summary.json`` must match byte for byte once the
wall-time lines are dropped; the request and timeline tables must be equal
value for value.
"""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.cli import main
from sim.metrics import WALL_TIME_FIELDS

POISSON = {
    "name": "determinism-poisson",
    "seed": 0,
    "model": "llama-2-7b",
    "hardware": "h100-sxm",
    "workload": {
        "num_requests": 60,
        "arrival": {"process": "poisson", "rate_rps": 6.0},
        "lengths": {"preset": "sharegpt"},
    },
    "engine": {
        "batching": {"policy": "continuous", "max_batch_size": 16},
        "memory": {"layout": "paged", "block_size": 16, "num_blocks": 256},
        "cost_model": {"kind": "roofline"},
    },
}

# The first 300 rows of the embedded Azure conversation trace, replayed as recorded.
TRACE = {
    "name": "determinism-trace",
    "seed": 0,
    "model": "llama-2-7b",
    "hardware": "h100-sxm",
    "workload": {"trace": {"path": "azure_conv_2023", "limit": 300}},
    "engine": {
        "batching": {"policy": "continuous", "max_batch_size": 64},
        "memory": {"layout": "paged", "block_size": 16},
        "cost_model": {"kind": "roofline"},
    },
}

WORKLOADS = [pytest.param(POISSON, id="poisson"), pytest.param(TRACE, id="azure-trace")]


def with_seed(config: dict, seed: int) -> dict:
    changed = copy.deepcopy(config)
    changed["seed"] = seed
    return changed


def run(config: dict, out_dir: Path) -> Path:
    """``pagesim run`` on ``config``; returns the run directory."""
    config_path = out_dir.with_suffix(".yaml")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(config_path), "--out", str(out_dir), "--quiet", "--no-plots"]) == 0
    return out_dir


def summary_bytes(run_dir: Path) -> bytes:
    """summary.json as written, without its wall-time lines (one line each)."""
    lines = (run_dir / "summary.json").read_bytes().splitlines(keepends=True)
    wall = tuple(f'  "{name}":'.encode() for name in WALL_TIME_FIELDS)
    kept = [line for line in lines if not line.startswith(wall)]
    assert len(lines) - len(kept) == len(WALL_TIME_FIELDS), "a wall-time field is missing or nested"
    return b"".join(kept)


def summary_without_wall(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in WALL_TIME_FIELDS:
        del summary[name]
    return summary


@pytest.mark.parametrize("config", WORKLOADS)
def test_same_config_and_seed_give_identical_outputs(tmp_path, config):
    first, second = run(config, tmp_path / "first"), run(config, tmp_path / "second")
    assert summary_bytes(first) == summary_bytes(second)
    for table in ("requests.parquet", "timeline.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / table), pd.read_parquet(second / table),
                                      check_exact=True)
    assert summary_without_wall(first)["counts"]["finished"] > 0


def test_poisson_summary_depends_on_the_seed(tmp_path):
    seed0 = run(with_seed(POISSON, 0), tmp_path / "seed0")
    seed1 = run(with_seed(POISSON, 1), tmp_path / "seed1")
    assert summary_without_wall(seed0) != summary_without_wall(seed1)
    arrivals0 = pd.read_parquet(seed0 / "requests.parquet")["arrival_s"]
    arrivals1 = pd.read_parquet(seed1 / "requests.parquet")["arrival_s"]
    assert not arrivals0.equals(arrivals1)


def test_trace_replay_draws_nothing_so_the_seed_does_not_matter(tmp_path):
    """Arrival times and lengths both come from the trace: no random draw is left."""
    seed0 = run(with_seed(TRACE, 0), tmp_path / "seed0")
    seed1 = run(with_seed(TRACE, 1), tmp_path / "seed1")
    assert summary_bytes(seed0) == summary_bytes(seed1)


def test_trace_lengths_with_poisson_arrivals_depend_on_the_seed(tmp_path):
    config = copy.deepcopy(TRACE)
    config["workload"]["arrival"] = {"process": "poisson", "rate_rps": 5.0}
    seed0 = run(with_seed(config, 0), tmp_path / "seed0")
    seed1 = run(with_seed(config, 1), tmp_path / "seed1")
    requests0 = pd.read_parquet(seed0 / "requests.parquet")
    requests1 = pd.read_parquet(seed1 / "requests.parquet")
    assert requests0["prompt_tokens"].equals(requests1["prompt_tokens"])   # from the trace
    assert not requests0["arrival_s"].equals(requests1["arrival_s"])       # drawn from the seed
    assert summary_without_wall(seed0) != summary_without_wall(seed1)


def test_sweep_points_in_worker_processes_match_direct_runs(tmp_path):
    """A sweep point run in a pool process writes the summary a direct run writes."""
    config = copy.deepcopy(POISSON)
    config["sweep"] = {"seed": [0, 1]}
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sweep_dir = tmp_path / "sweep"
    assert main(["sweep", str(config_path), "--out", str(sweep_dir), "--jobs", "2", "--quiet", "--no-plots"]) == 0
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert list(table["seed"]) == [0, 1]                       # grid order
    assert sorted(p.name for p in (sweep_dir / "points").iterdir()) == sorted(table["point_id"])
    for seed, pid in zip(table["seed"], table["point_id"]):
        direct = run(with_seed(POISSON, int(seed)), tmp_path / f"seed{seed}")
        assert summary_bytes(sweep_dir / "points" / pid) == summary_bytes(direct)


def test_sweep_resumes_finished_points_and_reruns_changed_ones(tmp_path):
    """A second run skips points already written with the same config (their
    files are not rewritten); a point whose config changed gets a new id and
    is computed."""
    config = copy.deepcopy(POISSON)
    config["sweep"] = {"seed": [0, 1]}
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config_path), "--out", str(sweep_dir), "--jobs", "1", "--quiet", "--no-plots"]
    assert main(args) == 0
    first = (sweep_dir / "sweep.csv").read_text()

    def written():
        return {p.name: p.stat().st_mtime_ns for p in (sweep_dir / "points").iterdir()}

    before = written()
    assert main(args) == 0
    assert written() == before and (sweep_dir / "sweep.csv").read_text() == first

    config["sweep"] = {"seed": [0, 2]}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(args) == 0
    after = written()
    new = set(after) - set(before)
    assert len(new) == 1
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert list(table["seed"]) == [0, 2] and table["point_id"].iloc[1] in new
    seed0 = table["point_id"].iloc[0]
    assert after[seed0] == before[seed0]                       # not recomputed


def test_a_point_computed_by_another_version_of_pagesim_is_computed_again(tmp_path, monkeypatch, capsys):
    """Each finished point records the simulator's code fingerprint; a point
    from another version (or from before points recorded one) is run again
    with one stderr line saying so, and the sweep then matches a fresh one."""
    import experiments.sweep as sweep

    config = copy.deepcopy(POISSON)
    config["sweep"] = {"seed": [0, 1]}
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config_path), "--out", str(sweep_dir), "--jobs", "1", "--no-plots"]
    assert main(args) == 0
    first = (sweep_dir / "sweep.csv").read_text()
    points = sorted((sweep_dir / "points").iterdir())
    assert all((p / sweep.CODE_FILE).read_text().strip() == sweep.code_fingerprint() for p in points)
    (points[0] / sweep.CODE_FILE).unlink()                      # as a point from before fingerprints
    monkeypatch.setattr(sweep, "code_fingerprint", lambda: "another-version")
    capsys.readouterr()
    assert main(args) == 0
    assert "2 finished point(s)" in capsys.readouterr().err      # both differ from "another-version"
    assert all((p / sweep.CODE_FILE).read_text().strip() == "another-version" for p in points)
    again = pd.read_csv(sweep_dir / "sweep.csv")                 # the same code, in fact: the same results
    before = pd.read_csv(io.StringIO(first))
    timing = [c for c in before.columns if "wall" in c]
    pd.testing.assert_frame_equal(again.drop(columns=timing), before.drop(columns=timing))


def test_sweep_reuses_points_when_the_grid_grows_or_is_reordered(tmp_path):
    """A point is its resolved config: adding a value computes only the new
    points, and reordering keys or values computes nothing."""
    config = copy.deepcopy(POISSON)
    config["workload"]["num_requests"] = 10
    config["sweep"] = {"seed": [0, 1], "workload.arrival.rate_rps": [2.0, 4.0]}
    config_path = tmp_path / "sweep.yaml"
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config_path), "--out", str(sweep_dir), "--jobs", "1", "--quiet", "--no-plots"]

    def sweep(grid: dict) -> dict[str, int]:
        config["sweep"] = grid
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        assert main(args) == 0
        return {p.name: p.stat().st_mtime_ns for p in (sweep_dir / "points").iterdir()}

    first = sweep({"seed": [0, 1], "workload.arrival.rate_rps": [2.0, 4.0]})
    grown = sweep({"seed": [0, 1], "workload.arrival.rate_rps": [2.0, 4.0, 8.0]})
    assert len(grown) == 6 and {k: grown[k] for k in first} == first      # two new points only
    reordered = sweep({"workload.arrival.rate_rps": [8.0, 4.0, 2.0], "seed": [1, 0]})
    assert reordered == grown
    table = pd.read_csv(sweep_dir / "sweep.csv")
    assert list(table["workload.arrival.rate_rps"]) == [8.0, 8.0, 4.0, 4.0, 2.0, 2.0]
    assert list(table["seed"]) == [1, 0, 1, 0, 1, 0]
