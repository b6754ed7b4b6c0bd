"""What a run produced, and the end-of-run checks both executors share.

The SimPy driver (``sim.driver``) and the real engine (``kernels.engine``)
end a run the same way: every policy releases what it still holds, every KV
manager must then be empty, and every arrived request must be ``finished``,
``rejected`` or ``unfinished`` (DESIGN.md rule 6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sim.policies.base import Policy
from sim.request import Request, Status
from sim.timeline import Timeline


@dataclass
class SimResult:
    requests: list[Request]        # every request that arrived, by request_id
    timeline: Timeline
    sim_time_s: float
    sim_wall_s: float
    sim_events: int
    sim_steps: int
    preemptions: int
    horizon_s: float | None = None
    not_arrived: int = 0


def close_run(requests: Sequence[Request], num_arrived: int, policies: Sequence[Policy],
              timeline: Timeline, *, now_s: float, wall_s: float, events: int, steps: int,
              horizon_s: float | None = None) -> SimResult:
    """End the run: release what policies hold, check the KV managers are
    empty and that every arrived request is accounted for."""
    arrived = list(requests[:num_arrived])
    for policy in policies:
        policy.finish_run()
        policy.kv.assert_empty()
    counts = {s: 0 for s in Status}
    for req in arrived:
        counts[req.status] += 1
    accounted = counts[Status.FINISHED] + counts[Status.REJECTED] + counts[Status.UNFINISHED]
    if accounted != len(arrived):
        raise AssertionError(
            f"conservation violated: arrived={len(arrived)} != finished+rejected+unfinished"
            f"={accounted} ({ {k.value: v for k, v in counts.items() if v} })")
    return SimResult(
        requests=arrived, timeline=timeline, sim_time_s=now_s, sim_wall_s=wall_s,
        sim_events=events, sim_steps=steps,
        preemptions=sum(policy.num_preemptions for policy in policies),
        horizon_s=horizon_s, not_arrived=len(requests) - len(arrived),
    )
