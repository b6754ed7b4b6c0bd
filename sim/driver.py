"""The SimPy driver: arrivals and one process per replica.

Reads top to bottom like SimPy's own examples: the actors are ``arrivals``
(hands each request to a replica through the router) and ``replica_loop``
(``schedule`` -> ``timeout(step_time)`` -> ``on_step_done``). An idle replica
waits on an event that the next arrival (or its policy's wake-up time)
triggers; it never polls.

Jumping over decode runs: when the policy guarantees that the next ``k`` steps
are the same decode batch with every context one token longer -- or a step
that prefills, then such decodes of every running sequence (a *led* run: the
prefill step is priced first, and only if the next arrival does not land
during it are the decodes asked for) -- the driver prices the run
(``cost.decode_run_times``, in chunks of growing size, so a run cut short is
not priced to its end), stops it at the step during which
the next arrival lands (that arrival could change the following step) --
unless the policy says no arrival can change this run (a running static
batch; a full batch, or a queue whose head could not be admitted) -- and at
the horizon, and applies the run in one go. Request timings are the same as
stepping one iteration at a time.

Going on without waiting: a replica whose step (or run) ends before the
next arrival and the horizon takes its next decision at once, on its own
clock, instead of waiting for SimPy's: nothing can happen in between (an
arrival is the only thing from outside a replica, and the router reads
replicas only then). It waits -- SimPy's clock catching up to its own, to
the same float -- when a step ends at or after the next arrival, when it
goes idle, and during a run through arrivals. Ties go as in stepping: an
arrival at the very end of a step is met by a wait.
"""
from __future__ import annotations

import gc
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import simpy

from sim.cost.base import CostModel
from sim.policies.base import Policy
from sim.request import Request
from sim.result import SimResult, close_run
from sim.timeline import DEFAULT_MAX_ROWS, Timeline


RUN_CHUNK_STEPS = 32     # the first chunk of a decode run priced at once, unless an arrival is due sooner


@dataclass
class _Replica:
    index: int
    policy: Policy
    cost: CostModel
    wake: simpy.Event | None = None
    step_s: float = 0.0        # how long its latest step took (a guess at the next one's)
    queued_s: list[float] | None = None    # during a run through arrivals: when requests queued

    @property
    def num_outstanding(self) -> int:
        return self.policy.num_outstanding


@dataclass
class _State:
    on_progress: Callable[[int], None] | None     # told how many requests just finished or were rejected
    next_arrival: int = 0          # index of the next request to arrive
    arrivals_done: bool = False
    events: int = 0
    steps: int = 0


def simulate(requests: Sequence[Request], policies: Sequence[Policy],
             costs: Sequence[CostModel], router, *, horizon_s: float | None = None,
             fast_forward: bool = True, on_progress: Callable[[int], None] | None = None,
             timeline_max_rows: int | None = DEFAULT_MAX_ROWS) -> SimResult:
    """Run the workload to completion (or to ``horizon_s``) and check the
    conservation invariants. ``requests`` must be sorted by arrival. The
    timeline keeps at most ``timeline_max_rows`` rows per replica (None: every
    step; ``sim.timeline``)."""
    wall0 = time.perf_counter()
    env = simpy.Environment()
    replicas = [_Replica(i, p, c) for i, (p, c) in enumerate(zip(policies, costs))]
    state = _State(on_progress=on_progress)
    timeline = Timeline(timeline_max_rows)

    def arrivals():
        now = env.now
        for i, req in enumerate(requests):
            delay = req.arrival_s - now
            if delay > 0:
                yield env.timeout(delay)
                now = env.now
            state.events += 1
            state.next_arrival = i + 1
            rep = replicas[router.route(req, replicas)] if len(replicas) > 1 else replicas[0]
            req.replica = rep.index
            if rep.policy.add(req, now):
                if rep.queued_s is not None:
                    rep.queued_s.append(now)
                if rep.wake is not None:        # idle
                    _wake(rep)
            elif state.on_progress is not None:
                state.on_progress(1)
        state.arrivals_done = True
        for rep in replicas:
            _wake(rep)

    def replica_loop(rep: _Replica):
        policy, cost = rep.policy, rep.cost
        finished = policy.finished
        now = clock = env.now   # the replica's clock, and SimPy's (behind it while it goes on, below)
        while True:
            batch = policy.schedule(now)
            if batch is None:
                if clock != now:            # idle: SimPy's clock catches up first
                    yield env.timeout(_delay_to(clock, now))
                if state.arrivals_done and not policy.has_work():
                    return
                rep.wake = env.event()
                wakeup_s = policy.next_wakeup_s(now)
                if wakeup_s is None:
                    yield rep.wake
                else:
                    yield rep.wake | env.timeout(max(wakeup_s - now, 0.0))
                rep.wake = None
                state.events += 1
                now = clock = env.now
                continue
            done_before = len(finished)
            i = state.next_arrival          # nothing from outside happens before next_s
            next_s = requests[i].arrival_s if i < len(requests) else math.inf
            if horizon_s is not None and horizon_s < next_s:
                next_s = horizon_s
            k, through, step_s = 1, False, None
            if fast_forward and batch.prefill_new_tokens:
                # a led run: its first step alone decides whether decodes follow it
                step_s = cost.step_time(batch)
                through = policy.run_ignores_arrivals()
                stop_s = _through_s(horizon_s) if through else next_s
                if now + step_s < stop_s:
                    k = policy.decode_run_length(batch)
            elif fast_forward:
                k = policy.decode_run_length(batch)
                if k > 1:
                    through = policy.run_ignores_arrivals()
                    stop_s = _through_s(horizon_s) if through else next_s
            if k > 1:
                decodes = policy.run_batch(batch)
                k, ends, step_s = _run_ends(now, cost, batch, decodes, k, stop_s, horizon_s, step_s,
                                            rep.step_s)
            pending = through and k > 1     # a run through arrivals: recorded once it ends
            if k > 1:
                if decodes is batch:
                    timeline.record_run(now, rep.index, ends, policy, batch, pending=pending)
                else:           # a led run: its first step, then the decodes that follow it
                    snapshot = timeline.snapshot(policy, batch)
                    timeline.append(now, rep.index, step_s, snapshot)
                    timeline.record_run(ends[0], rep.index, ends[1:], policy, decodes,
                                        pending=pending, first_step=1, snapshot=snapshot)
                rep.step_s = ends[-1] - ends[-2]
                delay = ends[-1] - now
            else:
                if step_s is None:        # not already priced as a run's first step
                    step_s = cost.step_time(batch)
                timeline.record_step(now, rep.index, step_s, policy, batch)
                rep.step_s = delay = step_s
            end = now + delay               # SimPy's sum, were the replica to wait for it
            if end >= next_s or pending or not fast_forward:
                if pending:
                    rep.queued_s = []
                if clock != now:             # it went on: from SimPy's clock to the same float
                    delay = end - clock
                    if clock + delay != end:
                        delay = _delay_to(clock, end)
                yield env.timeout(delay)
                clock = end
                if pending:
                    timeline.finish_run(rep.index, rep.queued_s, policy)
                    rep.queued_s = None
            if k > 1:
                policy.advance_decode_run(batch, ends)
            else:
                policy.on_step_done(batch, end)
            now = end
            state.events += 1
            state.steps += k
            if len(finished) != done_before and state.on_progress is not None:
                state.on_progress(len(finished) - done_before)

    env.process(arrivals())
    for rep in replicas:
        env.process(replica_loop(rep))
    with _collector_paused():
        env.run(until=horizon_s)
    return _close(requests, replicas, timeline, state, env.now, horizon_s,
                  time.perf_counter() - wall0)


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while the simulation runs: it
    makes next to no reference cycles (a few hundred objects in a run of
    200,000 requests), yet the collector keeps passing over every live
    object, the workload's requests among them (about 3% of a
    200,000-request run, docs/results.md §3, more as the workload grows).
    Whatever cycles it does make are collected once the collector is back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _wake(rep: _Replica) -> None:
    if rep.wake is not None and not rep.wake.triggered:
        rep.wake.succeed()


def _through_s(horizon_s: float | None) -> float:
    """When a run that goes on through arrivals must stop: at the horizon."""
    return math.inf if horizon_s is None else horizon_s


def _delay_to(now: float, end: float) -> float:
    """A delay that SimPy's clock, at ``now``, adds up to ``end`` exactly
    (``end - now`` can round when ``now`` is far below ``end``)."""
    delay = end - now
    while now + delay < end:
        delay = math.nextafter(delay, math.inf)
    while now + delay > end:
        delay = math.nextafter(delay, -math.inf)
    return delay


def _run_ends(now: float, cost: CostModel, batch, decodes, max_steps: int, stop_s: float,
              horizon_s: float | None, first_s: float | None = None,
              guess_s: float = 0.0) -> tuple[int, list[float], float]:
    """End times of a run's steps, accumulated one step at a time exactly as
    stepping would, cut after the step during which ``stop_s`` (the next
    arrival, or the horizon) falls and before any step that would end on or
    past the horizon, and the first step's duration (``cost.step_time(batch)``).
    The run is ``batch``, then its decode step ``decodes`` repeated with every
    context one longer each time (``decodes is batch``: a pure decode run;
    otherwise ``first_s``, when given, is ``batch``'s price). Steps are
    priced in chunks of 32, 128, 512, ... so that a run cut by an arrival is
    not priced to its end; when a step is expected to take about
    ``guess_s``, the first chunk is the steps expected before ``stop_s``
    and one more."""
    lead = 0 if decodes is batch else 1      # steps priced on their own before the decodes
    chunk = RUN_CHUNK_STEPS
    if guess_s > 0 and stop_s - now < chunk * guess_s:
        chunk = max(int((stop_s - now) / guess_s), 0) + 2
    ends: list[float] = []
    done, end = 0, now
    while done < max_steps:
        m = min(chunk, max_steps - done)
        if done < lead:
            if first_s is None:
                first_s = cost.step_time(batch)
            times = [first_s, *cost.decode_run_times(decodes, m - 1, 0).tolist()]
        else:
            times = cost.decode_run_times(decodes, m, done - lead).tolist()
            if not done:
                first_s = times[0]
        for t in times:                      # Python floats add as numpy's would, in order
            end += t
            ends.append(end)
            if end >= stop_s:
                break
        else:
            done, chunk = done + m, chunk * 4
            continue
        break
    if horizon_s is not None and ends[-1] >= horizon_s:  # stop_s <= horizon_s: only the last can be
        ends.pop()                  # (a step that ends on the horizon does not end: SimPy stops first)
    assert first_s is not None          # max_steps > 0: the first chunk priced it
    return len(ends), ends, first_s


def _close(requests, replicas, timeline, state, now, horizon_s, wall_s) -> SimResult:
    return close_run(requests, state.next_arrival, [rep.policy for rep in replicas], timeline,
                     now_s=now, wall_s=wall_s, events=state.events, steps=state.steps,
                     horizon_s=horizon_s)
