"""``bench_sim --against``: alternating pairs of runs in two checkouts;
``--instructions``: counted runs."""
from __future__ import annotations

import json
import shutil
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


def test_instructions_per_request_are_the_difference_between_two_sizes(tmp_path, capsys, monkeypatch):
    """Each checkout is counted at half the size and at the size; what a
    request costs is the difference over the requests between them, and
    with --against the ratio of the two."""
    counts = {("this", 50): 7_000, ("this", 100): 12_000, ("other", 50): 6_000, ("other", 100): 16_000}

    def counted(checkout, call):
        n = int(call.split("(")[1].split(",")[0])
        return {"requests": n}, counts[("this" if checkout == bench_sim.ROOT else "other", n)]

    monkeypatch.setattr(bench_sim, "_counted_in", counted)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    other = tmp_path / "other"
    (other / "experiments").mkdir(parents=True)
    (other / "experiments" / "bench_sim.py").write_text("")
    out = tmp_path / "i.json"
    assert bench_sim.main(["--instructions", "--scale", "100", "--against", str(other), "--out", str(out)]) == 0
    this, that, ratio = json.loads(out.read_text())["results"]
    assert (this["instructions_per_request"], that["instructions_per_request"]) == (100, 200)
    assert ratio["ratio_this_over_other"] == 0.5
    assert "this / other: 0.5000" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--scale", "100,200"], "--scale: '100,200' with --instructions; allowed: one size"),
    (["--limit", "50"], "--limit: 50 with --instructions; allowed: more than 100 rows"),
    (["--against", "/no/such/checkout"], "--against: /no/such/checkout is not a pagesim checkout"),
])
def test_instructions_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "i.json"
    assert bench_sim.main(["--instructions", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_instructions_without_valgrind_say_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert bench_sim.main(["--instructions", "--scale", "100", "--out", str(tmp_path / "i.json")]) == 2
    assert "needs valgrind on PATH" in capsys.readouterr().err


def test_a_counted_run_has_fixed_hashes_and_no_idle_blas_threads(monkeypatch):
    """What makes two counts of the same run agree: ``_counted_in`` runs
    under callgrind with the hash seed fixed and BLAS on one thread."""
    seen = {}

    def run_in(checkout, call, wrapper=(), **env):
        seen.update(wrapper=wrapper, env=env)
        return {"requests": 1}, "==1== Collected : 1,234"

    monkeypatch.setattr(bench_sim, "_run_in", run_in)
    assert bench_sim._counted_in(ROOT, "call()") == ({"requests": 1}, 1234)
    assert seen["wrapper"][:2] == ("valgrind", "--tool=callgrind")
    assert {k: seen["env"].get(k) for k in ("PYTHONHASHSEED", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")} == \
        {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_are_counted_under_valgrind(tmp_path):
    out = tmp_path / "i.json"
    # 100 requests more: some 50 million instructions, well above the run-to-run variation
    # of a count (606 instructions in 3.7 billion; ``COUNTED_ENV``)
    assert bench_sim.main(["--instructions", "--scale", "200", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["requests"] == [100, 200] and row["instructions"][1] > row["instructions"][0] > 10**8
    assert row["instructions_per_request"] == round((row["instructions"][1] - row["instructions"][0]) / 100)
