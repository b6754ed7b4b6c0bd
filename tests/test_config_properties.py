"""Random valid configs on tiny workloads (hypothesis): every run ends,
accounts for every request and every KV slot, and is deterministic.

The configs span both axes (static/continuous x paged/contiguous), every
reservation and preemption mode, each arrival process, replicas and routers,
tight and roomy caches, horizons, and jumping over decode runs or not. The
cost model is linear so each run takes milliseconds."""
from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from experiments.config import validate
from experiments.runner import run_experiment

TINY_MODEL = {"name": "tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 4,
              "head_dim": 16, "ffn_size": 128, "vocab_size": 100, "max_context_tokens": 128}
RUN_LIMIT_S = 30


@st.composite
def configs(draw) -> dict:
    policy = draw(st.sampled_from(["static", "continuous"]))
    layout = draw(st.sampled_from(["paged", "contiguous"]))
    block_size = draw(st.sampled_from([1, 4, 16]))
    memory: dict = {"layout": layout, "reservation": draw(st.sampled_from(["max", "pow2", "exact"]))}
    if layout == "paged":
        memory["block_size"] = block_size
        memory["num_blocks"] = draw(st.integers(1, 64))
        memory["watermark"] = draw(st.sampled_from([0.0, 0.01, 0.2]))
    else:
        memory["num_tokens"] = draw(st.integers(1, 1024))
    batching: dict = {"policy": policy, "max_batch_size": draw(st.integers(1, 16)),
                      "max_batch_tokens": draw(st.integers(1, 512))}
    if policy == "continuous":
        batching["mixed_prefill_decode"] = draw(st.booleans())
        if layout == "paged":
            batching["preemption"] = draw(st.sampled_from(["recompute", "swap"]))
    else:
        batching["max_wait_s"] = draw(st.sampled_from([0.0, 0.05]))
    process = draw(st.sampled_from(["poisson", "gamma", "constant", "all_at_once"]))
    arrival: dict = {"process": process}
    if process != "all_at_once":
        arrival["rate_rps"] = draw(st.floats(0.5, 500.0))
    if process == "gamma":
        arrival["cv"] = draw(st.floats(0.2, 4.0))
    lengths = {"prompt": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 150))},
               "output": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 60))}}
    config = {
        "name": "property", "seed": draw(st.integers(0, 2**32)),
        "model": TINY_MODEL, "hardware": "h100-sxm",
        "workload": {"num_requests": draw(st.integers(1, 40)), "arrival": arrival, "lengths": lengths},
        "engine": {"batching": batching, "memory": memory, "replicas": draw(st.integers(1, 3)),
                   "router": draw(st.sampled_from(["round_robin", "least_outstanding"])),
                   "cost_model": {"kind": "linear", "base_s": 0.002, "per_prefill_token_s": 1e-5,
                                  "per_decode_seq_s": 1e-4, "per_context_token_s": 1e-6,
                                  "per_swap_token_s": 1e-6}},
        "fast_forward": draw(st.booleans()),
        "timeline_max_rows": draw(st.sampled_from([None, 2, 50])),
    }
    if draw(st.booleans()):
        config["horizon_s"] = draw(st.floats(0.01, 5.0))
    return config


@contextmanager
def time_limit(seconds: int):
    """A run that does not end is a failure with its config, not a hung CI job."""
    def expire(signum, frame):
        raise TimeoutError(f"run did not end within {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


LINEAR = {"kind": "linear", "base_s": 0.002, "per_prefill_token_s": 1e-05, "per_decode_seq_s": 0.0001,
          "per_context_token_s": 1e-06, "per_swap_token_s": 1e-06}
# Found by this test: with two replicas, a decode run going on through
# arrivals on one replica had its timeline rows completed by the other's.
TWO_REPLICAS_RUNS_THROUGH_ARRIVALS = {
    "name": "property", "seed": 2, "model": TINY_MODEL, "hardware": "h100-sxm",
    "workload": {"num_requests": 4, "arrival": {"process": "poisson", "rate_rps": 22.0},
                 "lengths": {"prompt": {"dist": "uniform", "low": 1, "high": 2},
                             "output": {"dist": "uniform", "low": 1, "high": 21}}},
    "engine": {"batching": {"policy": "static", "max_batch_size": 1, "max_batch_tokens": 1, "max_wait_s": 0.0},
               "memory": {"layout": "contiguous", "reservation": "max", "num_tokens": 128},
               "replicas": 2, "router": "round_robin", "cost_model": LINEAR},
    "fast_forward": True, "timeline_max_rows": None,
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
@example(TWO_REPLICAS_RUNS_THROUGH_ARRIVALS)
def test_random_configs_end_conserve_and_repeat(config):
    cfg = validate(config)
    with time_limit(RUN_LIMIT_S):
        first = run_experiment(cfg)
        second = run_experiment(cfg)

    # every request is accounted for, once
    requests = first.requests
    n = config["workload"]["num_requests"]
    counts = first.summary["counts"]
    assert len(requests) + first.summary["not_arrived_before_horizon"] == n
    assert counts["arrived"] == counts["finished"] + counts["rejected"] + counts["unfinished"]
    assert sorted(requests["request_id"]) == list(range(len(requests)))
    if "horizon_s" not in config:
        assert counts["unfinished"] == 0 and counts["arrived"] == n
    done = requests[requests["status"] == "finished"]
    assert (done["first_token_s"] >= done["arrival_s"]).all()
    assert (done["finish_s"] >= done["first_token_s"]).all()

    # every KV slot is in exactly one state at every step (the run's end
    # also checks that each manager is empty again)
    t = first.timeline
    parts = t["kv_token_slots_used"] + t["kv_internal_slots"] + t["kv_reserved_slots"] + t["kv_free_slots"]
    np.testing.assert_allclose(parts, t["kv_total_slots"], rtol=1e-9)
    assert (t["batch_seqs"] <= config["engine"]["batching"]["max_batch_size"] * (1 + 1e-12)).all()  # merged rows: means

    # the same config gives the same run
    pd.testing.assert_frame_equal(first.requests, second.requests)
    pd.testing.assert_frame_equal(first.timeline, second.timeline)
    strip = lambda s: {k: v for k, v in s.items() if k != "sim_wall_s"}
    assert strip(first.summary) == strip(second.summary)
