"""Capacity at equal latency from a sweep table, exactly."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from experiments.analysis import SLO, capacity


def table():
    return pd.DataFrame({
        "config_label": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
        "rate": [1, 2, 4, 1, 2, 4, 1, 2],
        "lat": [0.1, 0.3, 0.9, 0.1, 0.2, 0.4, 0.6, 0.8],
        "ttft": [1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0],
    })


def test_crossing_is_interpolated_between_last_pass_and_first_miss():
    cap = capacity(table(), "rate", [SLO("lat", 0.5)]).set_index("config_label")
    # a: passes at 2 (ratio 0.6), misses at 4 (ratio 1.8): 2 + 2 * (1 - 0.6) / (1.8 - 0.6)
    assert cap.loc["a", "highest_load_passing"] == 2 and cap.loc["a", "first_failing"] == 4
    assert math.isclose(cap.loc["a", "interpolated"], 2 + 2 * 0.4 / 1.2)
    assert cap.loc["b", "highest_load_passing"] == 4 and bool(cap.loc["b", "at_least"])
    assert math.isnan(cap.loc["c", "highest_load_passing"]) and cap.loc["c", "first_failing"] == 1


def test_every_slo_must_hold():
    cap = capacity(table(), "rate", [SLO("lat", 0.5), SLO("ttft", 2.0)]).set_index("config_label")
    assert cap.loc["b", "highest_load_passing"] == 4      # b's ttft miss at 2 is below its last pass
    assert cap.loc["a", "highest_load_passing"] == 2


def test_slo_parsing_and_errors():
    assert SLO.parse("ttft_s_p99<=1.5") == SLO("ttft_s_p99", 1.5)
    with pytest.raises(ValueError, match="METRIC<=VALUE"):
        SLO.parse("ttft_s_p99<1")
    with pytest.raises(ValueError, match="no column 'nope'"):
        capacity(table(), "rate", [SLO("nope", 1.0)])


def test_other_swept_keys_split_a_configuration():
    t = pd.DataFrame({"config_label": ["p"] * 4, "replicas": [1, 1, 2, 2], "rate": [10, 20, 10, 20],
                      "ttft": [0.5, 3.0, 0.2, 0.6]})
    cap = capacity(t, "rate", [SLO("ttft", 1.0)], group_keys=["replicas", "rate"]).set_index("replicas")
    assert cap.loc[1, "highest_load_passing"] == 10 and cap.loc[1, "first_failing"] == 20
    assert cap.loc[2, "highest_load_passing"] == 20 and bool(cap.loc[2, "at_least"])


def test_a_time_scale_sweep_is_read_from_the_fast_end_and_dict_values_group():
    """A smaller time scale is more load: the answer is the smallest scale
    that passes. Swept mappings (a whole ``engine.memory``) are group keys."""
    cached, plain = {"layout": "paged", "prefix_caching": True}, {"layout": "paged"}
    t = pd.DataFrame({"config_label": ["p"] * 6, "engine.memory": [cached] * 3 + [plain] * 3,
                      "workload.arrival.time_scale": [1.0, 0.5, 0.25] * 2,
                      "ttft": [0.2, 0.6, 2.0, 0.4, 1.4, 5.0]})
    cap = capacity(t, "workload.arrival.time_scale", [SLO("ttft", 1.0)], group_keys=["engine.memory"])
    rows = {r["engine.memory"]: r for r in cap.to_dict("records")}
    assert set(rows) == {'{"layout": "paged", "prefix_caching": true}', '{"layout": "paged"}'}
    hit, miss = rows['{"layout": "paged", "prefix_caching": true}'], rows['{"layout": "paged"}']
    assert (hit["highest_load_passing"], hit["first_failing"]) == (0.5, 0.25)
    # the crossing lies between 0.5 (ratio 0.6) and 0.25 (ratio 2.0): 0.5 - 0.25 * 0.4 / 1.4
    assert math.isclose(hit["interpolated"], 0.5 - 0.25 * 0.4 / 1.4)
    assert (miss["highest_load_passing"], miss["first_failing"]) == (1.0, 0.5)


def test_the_known_sweep_metrics_are_exactly_a_runs_numeric_columns():
    """``--slo`` names are checked against ``summary_metrics()`` before a
    sweep runs; that list must not drift from what a run writes."""
    from experiments.config import validate
    from experiments.runner import run_experiment
    from sim.metrics import flatten, summary_metrics

    cfg = validate({"name": "metrics", "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate_rps": 5.0},
                                                    "lengths": {"preset": "alpaca"}},
                    "engine": {"cost_model": {"kind": "roofline"}}})
    columns = flatten(run_experiment(cfg).summary)
    numeric = {name for name, value in columns.items() if not isinstance(value, str)}
    assert numeric == set(summary_metrics())
