"""Tables and the summary of a run (DESIGN.md output contract).

Metrics record; experiments plot (STYLE.md rule 9): nothing here draws or
writes files.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim.result import SimResult
from sim.steady import SteadyStateSpec, steady_state
from sim.request import Status

REQUEST_COLUMNS = (
    "request_id", "arrival_s", "prompt_tokens", "output_tokens", "status", "reason",
    "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s",
    "normalized_latency_s_per_token", "preemptions", "replica", "cached_tokens",
)
LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "normalized_latency_s_per_token")


def requests_frame(result: SimResult) -> pd.DataFrame:
    """One row per arrived request. Latencies are NaN unless finished.
    TPOT is the mean gap between output tokens after the first, NaN for a
    single-token output; normalized latency is e2e / output tokens (the vLLM
    paper's metric)."""
    reqs = result.requests
    n = len(reqs)

    def column(get, dtype) -> np.ndarray:     # one pass, no per-request Python list
        return np.fromiter(map(get, reqs), dtype, n)

    nan = math.nan
    statuses = [s.value for s in Status]
    status_code = column(lambda r: statuses.index(r.status.value), np.int8)
    df = pd.DataFrame({
        "request_id": column(lambda r: r.request_id, np.int64),
        "arrival_s": column(lambda r: r.arrival_s, np.float64),
        "prompt_tokens": column(lambda r: r.prompt_tokens, np.int64),
        "output_tokens": column(lambda r: r.output_tokens, np.int64),
        "status": pd.Categorical.from_codes(status_code, statuses).astype(object),
        "reason": [r.reason for r in reqs] if any(r.reason for r in reqs) else np.full(n, "", object),
        "first_token_s": column(lambda r: nan if r.first_token_s is None else r.first_token_s, np.float64),
        "finish_s": column(lambda r: nan if r.finish_s is None else r.finish_s, np.float64),
        "preemptions": column(lambda r: r.preemptions, np.int64),
        "replica": column(lambda r: r.replica, np.int64),
        "cached_tokens": column(lambda r: r.cached_tokens, np.int64),
    })
    finished = df["status"] == Status.FINISHED.value
    ttft = df["first_token_s"] - df["arrival_s"]
    e2e = df["finish_s"] - df["arrival_s"]
    gaps = (df["output_tokens"] - 1).where(df["output_tokens"] > 1)
    df["ttft_s"] = ttft.where(finished)
    df["tpot_s"] = ((df["finish_s"] - df["first_token_s"]) / gaps).where(finished)
    df["e2e_s"] = e2e.where(finished)
    df["normalized_latency_s_per_token"] = (e2e / df["output_tokens"]).where(finished)
    return df[list(REQUEST_COLUMNS)].sort_values("request_id", kind="stable").reset_index(drop=True)


STATS = ("mean", "p50", "p90", "p99")
PREFIX_CACHE_FIELDS = ("hit_rate_tokens", "hit_rate_blocks", "prefill_tokens_saved", "evictions")


def prefix_cache_summary(stats: list[dict]) -> dict:
    """``summary.json``'s ``prefix_cache``: over every replica's KV manager,
    the share of prefill tokens and of full prompt blocks found cached at
    admission, the prefill tokens that were not computed, and cached blocks
    evicted."""
    total = {k: sum(s.get(k, 0) for s in stats) for k in
             ("queried_tokens", "hit_tokens", "queried_blocks", "hit_blocks", "evictions")}
    return {
        "hit_rate_tokens": total["hit_tokens"] / total["queried_tokens"] if total["queried_tokens"] else None,
        "hit_rate_blocks": total["hit_blocks"] / total["queried_blocks"] if total["queried_blocks"] else None,
        "prefill_tokens_saved": total["hit_tokens"],
        "evictions": total["evictions"],
    }


def summary_metrics() -> tuple[str, ...]:
    """The numeric columns a run contributes to sweep.csv (its flattened
    summary), known before anything runs, so that a sweep's ``--slo`` names
    are checked up front."""
    return (
        "duration_s", "throughput_rps", "throughput_tokens_per_s",
        *(f"{name}_{stat}" for name in LATENCIES for stat in STATS),
        "kv_utilization_mean", "kv_usage_mean", "kv_sharing_saving",
        *(f"kv_waste_{part}" for part in ("internal", "reserved_unused", "external")),
        "mean_batch_size", "mean_batch_rows", "preemptions",
        *(f"counts_{c}" for c in ("arrived", "finished", "rejected", "unfinished")),
        "not_arrived_before_horizon", "sim_time_s", "sim_steps", "sim_events", "sim_wall_s",
        "kv_total_slots_per_replica",
        *(f"parallel_{name}" for name in ("tensor", "pipeline", "gpus_per_replica", "gpus")),
        *(f"prefix_cache_{name}" for name in PREFIX_CACHE_FIELDS),
        *(f"steady_state_{name}" for name in ("window_start_s", "window_end_s", "requests", "arrival_rate_rps",
                                               "completion_rate_rps", "backlog_slope_rps")),
        *(f"steady_state_{name}_{stat}" for name in LATENCIES for stat in STATS),
    )


def _stats(values: pd.Series) -> dict[str, float | None]:
    v = values.dropna().to_numpy()
    if len(v) == 0:
        return dict.fromkeys(STATS)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _weighted(num: pd.Series, den: pd.Series, w: pd.Series) -> float | None:
    d = float((den * w).sum())
    return float((num * w).sum()) / d if d > 0 else None


def summarize(result: SimResult, requests: pd.DataFrame, timeline: pd.DataFrame,
              config_label: str = "", steady: SteadyStateSpec | None = None) -> dict:
    """The summary.json contents. KV figures are step-time-weighted means over
    busy time: ``kv_utilization_mean`` is real-token slots over slots
    allocated or reserved; ``kv_waste`` splits *all* slots' time into
    internal (unused tail of last blocks), reserved_unused (reserved for
    tokens not generated yet) and external (free but in holes too small for
    the oldest waiting request). ``kv_sharing_saving`` is the share of the
    slots sequences hold that sharing saves (shared blocks counted once
    instead of once per holder: parallel samples' prompt, cached prefixes)."""
    fin = requests[requests["status"] == Status.FINISHED.value]
    first_arrival = float(requests["arrival_s"].min()) if len(requests) else 0.0
    # the clock stopped at the horizon only if work was left: otherwise at the last finish
    cut = result.horizon_s is not None and bool((requests["status"] == Status.UNFINISHED.value).any())
    end_s = result.horizon_s if cut else (float(fin["finish_s"].max()) if len(fin) else first_arrival)
    duration_s = max(end_s - first_arrival, 0.0)
    counts = requests["status"].value_counts()
    w = timeline["step_s"]
    used = timeline["kv_token_slots_used"] + timeline["kv_token_slots_reserved"]
    total = timeline["kv_total_slots"]
    summary = {
        "config_label": config_label,
        "duration_s": duration_s,
        "throughput_rps": len(fin) / duration_s if duration_s > 0 else None,
        "throughput_tokens_per_s": float(fin["output_tokens"].sum()) / duration_s if duration_s > 0 else None,
        **{name: _stats(requests[name]) for name in LATENCIES},
        "kv_utilization_mean": _weighted(timeline["kv_token_slots_used"], used, w),
        "kv_usage_mean": _weighted(used, total, w),
        "kv_sharing_saving": (_weighted(timeline["kv_shared_slots"], used + timeline["kv_shared_slots"], w)
                              if "kv_shared_slots" in timeline else None),
        "kv_waste": {
            "internal": _weighted(timeline["kv_internal_slots"], total, w),
            "reserved_unused": _weighted(timeline["kv_reserved_slots"], total, w),
            "external": _weighted(timeline["kv_external_slots"], total, w),
        },
        "mean_batch_size": _weighted(timeline["batch_seqs"], pd.Series(1.0, index=w.index), w),
        "mean_batch_rows": _weighted(timeline["batch_rows"], pd.Series(1.0, index=w.index), w),
        "preemptions": int(result.preemptions),
        "counts": {
            "arrived": int(len(requests)),
            **{s.value: int(counts.get(s.value, 0)) for s in (Status.FINISHED, Status.REJECTED, Status.UNFINISHED)},
        },
        "not_arrived_before_horizon": int(result.not_arrived),
        "sim_time_s": float(result.sim_time_s),
        "sim_steps": int(result.sim_steps),
        "sim_events": int(result.sim_events),
        "sim_wall_s": float(result.sim_wall_s),
        "steady_state": steady_state(requests, steady or SteadyStateSpec(), _stats),
    }
    return summary


WALL_TIME_FIELDS = ("sim_wall_s",)


def flatten(summary: dict, prefix: str = "") -> dict:
    """{"ttft_s": {"p50": x}} -> {"ttft_s_p50": x}, for sweep tables."""
    out: dict = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}_"))
        else:
            out[name] = value
    return out
