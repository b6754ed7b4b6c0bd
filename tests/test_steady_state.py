"""The measurement window and the stable/saturated verdict (sim/steady.py):
exact small cases, then the quickstart's own workload at a rate the
configuration sustains and at one it cannot."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.analysis import SLO, capacity
from experiments.config import validate
from experiments.runner import run_experiment
from sim.metrics import _stats
from sim.steady import SteadyStateSpec, steady_state


def frame(arrivals, finishes, statuses=None) -> pd.DataFrame:
    n = len(arrivals)
    statuses = statuses or ["finished"] * n
    arrival, finish = np.asarray(arrivals, float), np.asarray(finishes, float)
    return pd.DataFrame({
        "arrival_s": arrival, "finish_s": finish, "status": statuses,
        "ttft_s": finish - arrival, "tpot_s": np.full(n, 0.01), "e2e_s": finish - arrival,
        "normalized_latency_s_per_token": (finish - arrival) / 10,
    })


def test_a_server_that_keeps_up_is_stable_and_its_window_drops_warmup_and_drain():
    # one request a second, each done 0.5 s later: the backlog never grows
    arrivals = np.arange(100.0)
    out = steady_state(frame(arrivals, arrivals + 0.5), SteadyStateSpec(), _stats)
    assert out["verdict"] == "stable"
    assert (out["window_start_s"], out["window_end_s"], out["requests"]) == (10.0, 89.0, 80)
    assert out["arrival_rate_rps"] == pytest.approx(1.0)
    assert out["completion_rate_rps"] == pytest.approx(79 / 79)
    assert abs(out["backlog_slope_rps"]) < 0.01
    assert out["e2e_s"]["p99"] == pytest.approx(0.5)


def test_a_server_at_half_the_arrival_rate_is_saturated():
    # arrivals 2/s, completions 1/s in order: the backlog grows by 1 request a second
    arrivals = np.arange(200) * 0.5
    finishes = np.arange(1, 201) * 1.0
    out = steady_state(frame(arrivals, finishes), SteadyStateSpec(), _stats)
    assert out["verdict"] == "saturated"
    assert out["backlog_slope_rps"] == pytest.approx(1.0, rel=0.02)
    assert out["arrival_rate_rps"] == pytest.approx(2.0)
    assert out["completion_rate_rps"] == pytest.approx(1.0, rel=0.05)


def test_rejected_requests_leave_at_once_and_unfinished_ones_never():
    arrivals = np.arange(100.0)
    rejected = steady_state(frame(arrivals, np.full(100, np.nan), ["rejected"] * 100), SteadyStateSpec(), _stats)
    assert rejected["verdict"] == "stable" and rejected["completion_rate_rps"] == 0.0
    stuck = steady_state(frame(arrivals, np.full(100, np.nan), ["unfinished"] * 100), SteadyStateSpec(), _stats)
    assert stuck["verdict"] == "saturated" and stuck["backlog_slope_rps"] == pytest.approx(1.0, rel=0.02)


def test_everything_at_once_has_no_rate_to_sustain():
    out = steady_state(frame(np.zeros(50), np.arange(1.0, 51.0)), SteadyStateSpec(), _stats)
    assert out["verdict"] == "n/a" and out["requests"] == 40 and out["arrival_rate_rps"] is None


def test_the_window_is_configurable():
    arrivals = np.arange(100.0)
    out = steady_state(frame(arrivals, arrivals + 0.5),
                       SteadyStateSpec(warmup_fraction=0.0, cooldown_fraction=0.25), _stats)
    assert (out["window_start_s"], out["window_end_s"], out["requests"]) == (0.0, 74.0, 75)


QUICK = {
    "name": "steady", "seed": 0, "model": "llama-2-7b", "hardware": "h100-sxm",
    "workload": {"num_requests": 1500, "arrival": {"process": "poisson", "rate_rps": 4.0},
                 "lengths": {"preset": "sharegpt"}},
    "engine": {"batching": {"policy": "continuous"}, "memory": {"layout": "contiguous"},
               "cost_model": {"kind": "roofline"}},
}


@pytest.mark.parametrize(("rate", "verdict"), [(4.0, "stable"), (40.0, "saturated")])
def test_continuous_contiguous_sustains_4_not_40_requests_per_second(rate, verdict):
    """About 9 req/s is this configuration's capacity (docs/results.md §1)."""
    cfg = dict(QUICK, workload={**QUICK["workload"], "arrival": {"process": "poisson", "rate_rps": rate}})
    summary = run_experiment(validate(cfg)).summary
    assert summary["steady_state"]["verdict"] == verdict


def test_capacity_never_credits_a_saturated_point():
    table = pd.DataFrame({
        "config_label": ["a"] * 3, "rate": [1.0, 2.0, 4.0], "ttft_s_p99": [0.1, 0.2, 0.3],
        "steady_state_verdict": ["stable", "stable", "saturated"],
    })
    row = capacity(table, "rate", [SLO("ttft_s_p99", 1.0)]).iloc[0]
    assert (row["highest_load_passing"], row["first_failing"], row["interpolated"]) == (2.0, 4.0, 2.0)
    assert not row["at_least"]
    stable = capacity(table.assign(steady_state_verdict="stable"), "rate", [SLO("ttft_s_p99", 1.0)]).iloc[0]
    assert stable["highest_load_passing"] == 4.0 and stable["at_least"]      # the same point, once stable, counts
