"""``bench_sim --against``: alternating pairs of runs in two checkouts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import bench_sim

ROOT = Path(__file__).resolve().parents[1]


def test_against_a_checkout_runs_alternating_pairs_and_writes_their_ratios(tmp_path, capsys):
    """Against this very checkout: every pair simulates the same thing on
    both sides (same steps), each pair's ratio is its two simulation times."""
    out = tmp_path / "ab.json"
    assert bench_sim.main(["--scale", "150", "--against", str(ROOT), "--pairs", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    comparison = record["results"][0]
    assert len(comparison["this"]) == len(comparison["other"]) == len(comparison["ratios"]) == 2
    for a, b, ratio in zip(comparison["this"], comparison["other"], comparison["ratios"]):
        assert a["requests"] == b["requests"] == 150 and a["sim_steps"] == b["sim_steps"]
        assert ratio == pytest.approx(a["sim_wall_s"] / b["sim_wall_s"])
    assert comparison["median_ratio"] == pytest.approx(sum(comparison["ratios"]) / 2)
    assert "median" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--against", "/no/such/checkout"], "--against: /no/such/checkout is not a pagesim checkout"),
    (["--against", str(ROOT), "--pairs", "0"], "--pairs: 0; allowed: 1 or more"),
    (["--against", str(ROOT), "--scale", "100,200"], "--scale: '100,200' with --against; allowed: one size"),
])
def test_against_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "ab.json"
    assert bench_sim.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()
