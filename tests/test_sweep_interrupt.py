"""Ctrl-C on a running sweep: the workers stop at once, every finished point
survives, and running the same command again computes only the rest.

The sweep runs as a real process in its own process group, and SIGINT goes
to the whole group -- what a terminal does on Ctrl-C, so the worker
processes receive it too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "name": "interrupt",
    "model": "llama-2-7b",
    "hardware": "h100-sxm",
    "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate_rps": 50.0},
                 "lengths": {"preset": "alpaca"}},
    "engine": {"cost_model": {"kind": "roofline"}},
    # two points of a moment, then two that take minutes: the interrupt lands while those run
    "sweep": {"workload.num_requests": [20, 30, 400_000, 400_001]},
}


def sweep_command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", "sweep", str(config), "--out", str(out),
            "--jobs", "2", "--no-plots", "--quiet"]


def finished(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "points").glob("*/summary.json")}


def test_interrupted_sweep_keeps_finished_points_and_resumes(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(sweep_command(config, out), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(finished(out) if out.exists() else {}) < 2:
            assert proc.poll() is None, f"sweep ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the quick points did not finish in 120 s"
            time.sleep(0.1)
        time.sleep(0.5)                          # the slow points are running now
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        stopped_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "pagesim: interrupted"
    assert stopped_s < 10, f"workers took {stopped_s:.1f} s to stop"
    kept = finished(out)
    assert len(kept) == 2                                         # both quick points survive
    assert [p.name for p in (out / "points").iterdir() if p.name.startswith(".")] == []   # no partial point
    assert (out / ".pagesim").is_file() and not (out / "sweep.csv").exists()

    # resume with the slow points made quick: the kept points are reused as they are
    CONFIG_RESUMED = {**CONFIG, "sweep": {"workload.num_requests": [20, 30, 40]}}
    config.write_text(yaml.safe_dump(CONFIG_RESUMED, sort_keys=False))
    done = subprocess.run(sweep_command(config, out), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = finished(out)
    assert {k: after[k] for k in kept} == kept                    # not recomputed
    assert len(after) == 3
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["workload.num_requests"]) == [20, 30, 40]
    assert set(kept) <= set(table["point_id"])
