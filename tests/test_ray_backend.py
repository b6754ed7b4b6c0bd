"""--backend ray: a local Ray instance gives the same sweep and capacity
answers as the local process pool."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from experiments.capacity import Search, parse_objective, plan  # noqa: E402
from experiments.config import validate  # noqa: E402
from experiments.sweep import run_sweep  # noqa: E402
from tests.test_capacity import RAW  # noqa: E402

WALL = ["sim_wall_s", "sim_events"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_sweep_on_ray_matches_the_local_pool(tmp_path, local_ray):
    raw = copy.deepcopy(RAW)
    raw["workload"]["num_requests"] = 120
    raw["sweep"] = {"engine.memory.layout": ["paged", "contiguous"], "workload.arrival.rate_rps": [1.0, 4.0]}
    cfg = validate(raw)
    local = run_sweep(raw, cfg, tmp_path / "local", jobs=2, plots=False, progress=False)
    remote = run_sweep(raw, cfg, tmp_path / "ray", jobs=2, plots=False, progress=False, backend="ray")
    keep = [c for c in local.columns if c != "sim_wall_s"]
    pd.testing.assert_frame_equal(local[keep], remote[keep])
    # the parent wrote every point (a Ray task may run where these files are not)
    for pid in remote["point_id"]:
        summary = json.loads((tmp_path / "ray" / "points" / pid / "summary.json").read_text())
        assert summary["counts"]["arrived"] == 120


def test_a_capacity_search_on_ray_matches_the_local_pool(tmp_path, local_ray):
    raw = copy.deepcopy(RAW)
    raw["workload"]["num_requests"] = 150
    raw["sweep"] = {"engine.memory.layout": ["paged", "contiguous"]}
    cfg = validate(raw)
    search = Search((parse_objective("ttft_s_p99<=0.5"),), seeds=2, tolerance=0.1)
    local = plan(raw, cfg, tmp_path / "local", search, workers=2, quiet=True)
    remote = plan(raw, cfg, tmp_path / "ray", search, workers=2, quiet=True, backend="ray")
    pd.testing.assert_frame_equal(local, remote)
    assert sorted(p.name for p in (tmp_path / "ray" / "probes").glob("*.json")) == \
        sorted(p.name for p in (tmp_path / "local" / "probes").glob("*.json"))
