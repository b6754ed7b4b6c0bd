"""The real engine's loop: the simulator's policy against wall-clock time.

    batch = policy.schedule(now)      # the same Policy and KVManager objects as sim/
    runner.run(batch)                 # one real step on the GPU
    policy.on_step_done(batch, now)   # now = when the sampled tokens reached the host

Before the clock starts the runner warms up (first-use costs paid off the
clock) and the objects built so far are frozen out of the garbage
collector. Time is seconds since the run started on the host's monotonic
clock.
Requests arrive in real time from the same list the simulator replays: at
every step boundary the loop hands the policy each request whose arrival
time has passed, as the SimPy driver's arrival process does. When nothing is
runnable the engine sleeps until the next arrival (or the policy's wake-up
time) and then takes *that* instant as ``now``, exactly as the simulator
wakes; the few microseconds it overslept are counted in the step that
follows. So a step's duration is the wall time from its ``now`` to the next,
scheduling and bookkeeping included, and the simulator fed these durations
reproduces the run (``sim.cost.replay``).
"""
from __future__ import annotations

import gc
import json
import math
import time
from typing import Callable, Sequence

from sim.policies.base import Policy
from sim.request import Request
from sim.result import SimResult, close_run
from sim.timeline import Timeline

SPIN_S = 1e-3        # the last millisecond before a wake-up is spun, not slept

TIMING_COLUMNS = ("schedule_s", "prepare_s", "launch_s", "wait_s", "graph_batch")
# enough of each step's shape for a cost model to price it exactly
SHAPE_COLUMNS = ("prefill_new_tokens", "prefill_context_tokens", "decode_context_sum",
                 "decode_context_max", "swap_in_tokens", "swap_out_tokens")
STEP_COLUMNS = TIMING_COLUMNS + SHAPE_COLUMNS


def serve(requests: Sequence[Request], policy: Policy, runner, *,
          clock: Callable[[], float] = time.perf_counter,
          on_progress: Callable[[int], None] | None = None) -> tuple[SimResult, dict[str, list]]:
    """Serve ``requests`` (sorted by arrival) to completion. Returns the run
    (the simulator's ``SimResult``) and, per step, where its time went and
    its shape (``STEP_COLUMNS``, one value per timeline row)."""
    progress = on_progress or (lambda n: None)
    runner.warm_up()
    gc.collect()
    gc.freeze()          # setup's objects stay out of the collections that run while serving
    timeline = Timeline(max_rows=None)     # every real step: the replay compares them one by one
    steps: dict[str, list] = {c: [] for c in STEP_COLUMNS}
    t0 = clock()
    now = 0.0
    arrived = events = 0
    while True:
        while arrived < len(requests) and requests[arrived].arrival_s <= now:
            req = requests[arrived]
            req.replica = 0
            if not policy.add(req, now):
                progress(1)
            arrived += 1
            events += 1
        scheduled = clock()
        batch = policy.schedule(now)
        if batch is None:
            wake = requests[arrived].arrival_s if arrived < len(requests) else math.inf
            wakeup = policy.next_wakeup_s(now)
            if wakeup is not None:
                wake = min(wake, max(wakeup, now))
            if math.isinf(wake):
                break          # nothing will ever arrive or wake the policy
            _sleep_until(clock, t0 + wake)
            now = wake
            events += 1
            continue
        snapshot = timeline.snapshot(policy, batch)
        schedule_s = clock() - scheduled
        timing = runner.run(batch)
        end = clock() - t0
        done_before = len(policy.finished)
        policy.on_step_done(batch, end)
        for req in policy.finished[done_before:]:
            runner.release(req)
        progress(len(policy.finished) - done_before)
        timeline.append(now, 0, end - now, snapshot)
        steps["schedule_s"].append(schedule_s)
        for name in TIMING_COLUMNS[1:]:
            steps[name].append(getattr(timing, name))
        _record_shape(steps, batch)
        events += 1
        now = end
    gc.unfreeze()
    result = close_run(requests, arrived, [policy], timeline, now_s=now, wall_s=clock() - t0,
                       events=events, steps=len(steps["schedule_s"]))
    return result, steps


def _record_shape(steps: dict[str, list], batch) -> None:
    dec = batch.decode_context_tokens
    steps["prefill_new_tokens"].append(json.dumps(list(batch.prefill_new_tokens)))
    steps["prefill_context_tokens"].append(json.dumps(list(batch.prefill_context_tokens)))
    steps["decode_context_sum"].append(sum(dec))
    steps["decode_context_max"].append(max(dec, default=0))
    steps["swap_in_tokens"].append(batch.swap_in_tokens)
    steps["swap_out_tokens"].append(batch.swap_out_tokens)


def _sleep_until(clock: Callable[[], float], target: float) -> None:
    while True:
        left = target - clock()
        if left <= 0:
            return
        if left > SPIN_S:
            time.sleep(left - SPIN_S)
