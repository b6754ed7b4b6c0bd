"""Steady-state figures of a run: a measurement window that leaves out
warm-up and drain, and a verdict on whether the system kept up.

A finite run starts empty (the first requests find no queue) and ends by
draining what is left after the last arrival (no new requests compete). Both
flatter a configuration: a saturated one can drain a 500-request burst and
still report modest tail latencies. pagesim therefore reports, beside the
whole-run figures:

* the **window**: the requests whose arrival rank lies between the first
  ``warmup_fraction`` and the last ``cooldown_fraction`` of arrivals, and the
  time from the first to the last of them. Latencies (mean, p50, p90, p99)
  are taken over those requests alone.
* the **backlog slope**: the number of requests in the system (arrived, not
  yet finished or rejected) sampled evenly across the window, with its least-
  squares slope in requests per second. A system that keeps up holds a
  backlog that wanders around a level; one that does not accumulates
  arrivals minus completions.
* the **verdict**: ``saturated`` when the backlog grows faster than
  ``tolerance`` x the arrival rate over the window, else ``stable``; ``n/a``
  when the window has no duration (every request arriving at once: an
  offline batch has no rate to sustain).

Everything is computed from the request table, which is exact; the timeline
(whose rows may be merged) is not used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.request import Status

if TYPE_CHECKING:
    import pandas as pd

LATENCIES = ("ttft_s", "tpot_s", "e2e_s", "normalized_latency_s_per_token")
SAMPLES = 256          # points at which the backlog is sampled across the window
Fraction = Annotated[float, Field(ge=0.0, lt=0.5, allow_inf_nan=False)]


class SteadyStateSpec(BaseModel):
    """``steady_state`` in a config."""

    model_config = ConfigDict(extra="forbid")

    warmup_fraction: Fraction = 0.1
    """the earliest arrivals left out of the window (the system starts empty)"""
    cooldown_fraction: Fraction = 0.1
    """the latest arrivals left out (after them, the rest drains unopposed)"""
    tolerance: float = Field(0.05, gt=0.0, le=1.0, allow_inf_nan=False)
    """saturated when the backlog grows faster than this x the arrival rate"""


def steady_state(requests: pd.DataFrame, spec: SteadyStateSpec, stats) -> dict:
    """The ``steady_state`` section of ``summary.json`` (see module doc);
    ``stats`` summarises a latency column (the summary's own percentiles)."""
    n = len(requests)
    arrival = requests["arrival_s"].to_numpy(float)
    order = np.argsort(arrival, kind="stable")
    first = int(np.floor(spec.warmup_fraction * n))
    last = int(np.ceil((1.0 - spec.cooldown_fraction) * n)) - 1
    out: dict = {"verdict": "n/a", "window_start_s": None, "window_end_s": None, "requests": 0,
                 "arrival_rate_rps": None, "completion_rate_rps": None, "backlog_slope_rps": None}
    if n == 0 or last <= first:
        import pandas as pd

        return {**out, **{name: stats(pd.Series(dtype=float)) for name in LATENCIES}}
    chosen = requests.iloc[order[first:last + 1]]
    start, end = float(arrival[order[first]]), float(arrival[order[last]])
    out.update(window_start_s=start, window_end_s=end, requests=int(last - first + 1))
    out.update({name: stats(chosen[name]) for name in LATENCIES})
    if end <= start:
        return out
    status = requests["status"].to_numpy()
    finish = requests["finish_s"].to_numpy(float)
    leave = np.where(status == Status.FINISHED.value, finish,
                     np.where(status == Status.REJECTED.value, arrival, np.inf))
    times = np.linspace(start, end, SAMPLES)
    arrived = np.searchsorted(arrival[order], times, side="right")
    left = np.searchsorted(np.sort(leave), times, side="right")
    backlog = (arrived - left).astype(float)
    slope = float(np.polyfit(times - start, backlog, 1)[0])
    duration = end - start
    rate = (last - first) / duration                  # arrivals per second inside the window
    done = int(np.count_nonzero((finish >= start) & (finish <= end)))
    out.update(arrival_rate_rps=rate, completion_rate_rps=done / duration, backlog_slope_rps=slope,
               verdict="saturated" if slope > spec.tolerance * rate else "stable")
    return out
