"""The SimPy driver: jumping over decode runs is exact, queueing theory
holds, conservation is checked, replicas share the load."""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from factories import TINY_MODEL, make_policy

from sim.cost.linear import LinearCostModel
from sim.cost.roofline import RooflineCostModel
from sim.driver import simulate
from sim.memory.contiguous import ContiguousKVManager
from sim.memory.paged import PagedKVManager
from sim.presets import HARDWARE
from sim.request import Request, Status
from sim.router import LeastOutstandingRouter, RoundRobinRouter


def poisson_requests(n, rate_rps, seed, prompt=(4, 60), output=(1, 80)):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, n))
    prompts = rng.integers(*prompt, n)
    outputs = rng.integers(*output, n)
    return [Request(i, float(a), int(p), int(o)) for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs))]


def make_kv(layout, lazy_ids=True):
    """``lazy_ids``: block ids only once something needs them, as a simulation builds it."""
    if layout in ("paged", "paged+prefix"):
        return PagedKVManager(num_blocks=40, block_size=8, watermark_frac=0.0, num_cpu_blocks=20,
                              prefix_caching=layout == "paged+prefix", lazy_ids=lazy_ids)
    return ContiguousKVManager(320, "pow2", TINY_MODEL.max_context_tokens)


LINEAR = LinearCostModel(base_s=0.01, per_prefill_token_s=1e-4, per_decode_seq_s=1e-3,
                         per_context_token_s=2e-5, per_swap_token_s=1e-5)


class CheckedCost:
    """A cost model that first checks every batch's ``decode_sum_max`` (what
    the policy says the sum and maximum of its decode contexts are)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.told = inner, inner.name, 0

    def _check(self, batch) -> None:
        if batch.decode_sum_max is not None:
            dec = batch.decode_context_tokens
            assert batch.decode_sum_max == (sum(dec), max(dec, default=0))
            self.told += 1

    def step_time(self, batch):
        self._check(batch)
        return self.inner.step_time(batch)

    def decode_run_times(self, batch, num_steps, first_step=0):
        self._check(batch)
        return self.inner.decode_run_times(batch, num_steps, first_step)


def run(policy, layout, cost, fast_forward, *, n=150, rate=20.0, horizon_s=None, lazy_ids=True, **batching):
    reqs = poisson_requests(n, rate, seed=7)
    if layout.endswith(("+samples", "+beams")):   # every third request samples three sequences
        beams = layout.endswith("+beams")
        layout = layout.removesuffix("+samples").removesuffix("+beams")
        for r in reqs[::3]:
            r.num_seqs, r.beam = 3, beams
    if layout == "paged+prefix":       # three tenants' system prompts, up to 16 tokens
        for r in reqs:
            shared = min(16, r.prompt_tokens - 1)
            r.segments = ((r.request_id % 3, shared), (1000 + r.request_id, r.prompt_tokens - shared),
                          (5000 + r.request_id, r.output_tokens))
    pol = make_policy(policy, make_kv(layout.removesuffix("+samples").removesuffix("+beams"), lazy_ids),
                      **batching)
    pol.record_token_times = True
    result = simulate(reqs, [pol], [cost], RoundRobinRouter(), horizon_s=horizon_s,
                      fast_forward=fast_forward)
    return reqs, result


CASES = [
    ("continuous", "paged", {}),
    ("continuous", "paged", {"preemption": "swap"}),
    ("continuous", "paged", {"mixed_prefill_decode": False}),
    ("continuous", "contiguous", {}),
    ("static", "paged", {"max_batch_size": 8}),
    ("static", "contiguous", {"max_batch_size": 8, "max_wait_s": 0.05}),
    # a token budget that prefills fill: the queue's head waits for the next step
    ("continuous", "paged", {"max_batch_tokens": 64}),
    # full batches: decode runs go on through arrivals that cannot join them
    ("continuous", "paged", {"max_batch_size": 3}),
    ("continuous", "contiguous", {"max_batch_size": 3}),
    # prefix caching: admissions reuse cached prompt blocks, freed blocks stay cached
    ("continuous", "paged+prefix", {}),
    ("continuous", "paged+prefix", {"preemption": "swap"}),
    # chunked prefill: prompts of up to 60 tokens in steps of 24 tokens
    ("continuous", "paged", {"chunked_prefill": True, "max_batch_tokens": 24}),
    ("continuous", "paged", {"chunked_prefill": True, "max_batch_tokens": 24, "preemption": "swap"}),
    ("continuous", "contiguous", {"chunked_prefill": True, "max_batch_tokens": 24}),
    ("continuous", "paged+prefix", {"chunked_prefill": True, "max_batch_tokens": 24}),
    ("continuous", "paged", {"chunked_prefill": True, "max_batch_tokens": 24, "max_batch_size": 3}),
    # parallel sampling: forked samples share the prompt (paged) or copy it (contiguous)
    ("continuous", "paged+samples", {}),
    ("continuous", "contiguous+samples", {}),
    ("continuous", "paged+samples", {"chunked_prefill": True, "max_batch_tokens": 24}),
    # beam search: beams re-selected every step (no decode run jumps while beams run)
    ("continuous", "paged+beams", {}),
]


@pytest.mark.parametrize("policy,layout,batching", CASES)
@pytest.mark.parametrize("cost_name", ["linear", "roofline"])
def test_jumping_over_decode_runs_gives_the_same_timings(policy, layout, batching, cost_name):
    cost = LINEAR if cost_name == "linear" else RooflineCostModel(TINY_MODEL, HARDWARE["h100-sxm"])
    _assert_jumping_is_exact(policy, layout, batching, cost, rate=20.0)


LIGHT = [c for c in CASES if not c[2].get("max_batch_size") and "preemption" not in c[2]]


@pytest.mark.parametrize("policy,layout,batching", LIGHT)
def test_jumping_is_exact_at_light_load_too(policy, layout, batching):
    """At 2 req/s decode runs are long and rarely cut by arrivals."""
    _assert_jumping_is_exact(policy, layout, batching, LINEAR, rate=2.0)


@pytest.mark.parametrize("policy,layout,batching", [c for c in CASES if c[1].startswith("paged")])
def test_block_ids_given_lazily_change_no_result(policy, layout, batching):
    """A paged manager that counts blocks until something needs their ids
    (what a simulation builds) gives every request and timeline row of one
    that hands ids out from the start."""
    cost = CheckedCost(LINEAR)
    _assert_same_run(*run(policy, layout, LINEAR, True, lazy_ids=False, **batching),
                     *run(policy, layout, cost, True, **batching), rel_tol=0.0)
    if policy == "continuous" and not batching.get("chunked_prefill"):
        assert cost.told          # it said what its decodes hold


def _assert_jumping_is_exact(policy, layout, batching, cost, rate: float) -> None:
    stepped, r1 = run(policy, layout, cost, False, rate=rate, **batching)
    jumped, r2 = run(policy, layout, cost, True, rate=rate, **batching)
    assert r2.sim_events < r1.sim_events                      # it did jump
    _assert_same_run(stepped, r1, jumped, r2)


def _assert_same_run(stepped, r1, jumped, r2, rel_tol: float = 1e-9) -> None:
    assert r2.sim_steps == r1.sim_steps
    for a, b in zip(stepped, jumped):
        assert (a.status, a.preemptions, a.generated_tokens) == (b.status, b.preemptions, b.generated_tokens)
        assert len(a.token_times_s or []) == len(b.token_times_s or [])
        for x, y in zip(a.token_times_s or [], b.token_times_s or []):
            assert math.isclose(x, y, rel_tol=rel_tol)
        if a.finish_s is not None:
            assert math.isclose(a.finish_s, b.finish_s, rel_tol=rel_tol)
    t1, t2 = r1.timeline.to_frame(), r2.timeline.to_frame()
    assert len(t1) == len(t2)
    np.testing.assert_allclose(t1["t_s"], t2["t_s"], rtol=rel_tol)
    cols = [c for c in t1.columns if c not in ("t_s", "step_s")]
    assert (t1[cols].to_numpy() == t2[cols].to_numpy()).all()


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_a_run_starts_with_the_step_that_prefills(policy):
    """Requests that arrive together: their prefill step and every decode
    step up to the first finish are one decision, then the rest up to the
    last finish another; the timings are those of stepping."""
    def lone(fast_forward):
        reqs = [Request(0, 0.0, 30, 20), Request(1, 0.0, 12, 35)]
        pol = make_policy(policy, make_kv("paged"))
        pol.record_token_times = True
        return reqs, simulate(reqs, [pol], [LINEAR], RoundRobinRouter(), fast_forward=fast_forward)

    (stepped, r1), (jumped, r2) = lone(False), lone(True)
    assert r1.sim_steps == r2.sim_steps == 1 + 34        # the prefill (first tokens), then 34 decodes
    assert r2.sim_events == 2 + 2                        # two arrivals, two runs
    for a, b in zip(stepped, jumped):
        assert a.first_token_s == b.first_token_s and math.isclose(a.finish_s, b.finish_s, rel_tol=1e-12)
        np.testing.assert_allclose(a.token_times_s, b.token_times_s, rtol=1e-12)
    t1, t2 = r1.timeline.to_frame(), r2.timeline.to_frame()
    cols = [c for c in t1.columns if c not in ("t_s", "step_s")]
    assert (t1[cols].to_numpy() == t2[cols].to_numpy()).all()


def test_prefix_hits_happen_in_the_prefix_caching_scenario():
    reqs, _ = run("continuous", "paged+prefix", LINEAR, True)
    assert sum(r.cached_tokens for r in reqs) > 0


def test_prompts_are_chunked_in_the_chunked_prefill_scenario():
    reqs, result = run("continuous", "paged", LINEAR, True, chunked_prefill=True, max_batch_tokens=24)
    rows = result.timeline.to_frame()
    assert rows["batch_tokens"].max() <= 24
    assert any(r.prompt_tokens > 24 and r.status is Status.FINISHED for r in reqs)


def test_samples_share_and_are_preempted_in_the_sampling_scenario():
    reqs, result = run("continuous", "paged+samples", LINEAR, True)
    assert result.preemptions > 0
    assert result.timeline.to_frame()["kv_shared_slots"].max() > 0
    assert all(r.status is Status.FINISHED for r in reqs if r.num_seqs == 3)


def test_preemptions_happen_in_the_equivalence_scenario():
    _, result = run("continuous", "paged", LINEAR, True)
    assert result.preemptions > 0


def test_static_batch_of_one_is_an_md1_queue():
    """Poisson arrivals, deterministic service: mean wait is Pollaczek-Khinchine's
    W = rho * S / (2 (1 - rho)). Three independent replications of 20k requests
    at rho = 0.5 (one replication's mean wait has a ~2% standard error, the
    pooled mean ~1.2%), compared within 5%."""
    prompt, output = 32, 9
    cost = LinearCostModel(base_s=0.002, per_prefill_token_s=1e-4, per_decode_seq_s=1e-3,
                           per_context_token_s=0.0)
    service_s = (0.002 + prompt * 1e-4) + (output - 1) * (0.002 + 1e-3)
    rho, n = 0.5, 20_000
    waits = []
    for seed in (11, 12, 13):
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(service_s / rho, n))
        reqs = [Request(i, float(a), prompt, output) for i, a in enumerate(arrivals)]
        pol = make_policy("static", PagedKVManager(num_blocks=64, block_size=16, watermark_frac=0.0),
                          max_batch_size=1)
        simulate(reqs, [pol], [cost], RoundRobinRouter())
        waits += [r.schedule_s - r.arrival_s for r in reqs[n // 10:]]     # drop warm-up
        e2e = np.array([r.finish_s - r.schedule_s for r in reqs])
        np.testing.assert_allclose(e2e, service_s, rtol=1e-9)   # service really is deterministic
    expected = rho * service_s / (2 * (1 - rho))
    assert abs(np.mean(waits) / expected - 1) < 0.05


def test_horizon_leaves_unfinished_requests_accounted_for():
    reqs, result = run("continuous", "paged", LINEAR, True, n=200, horizon_s=3.0)
    counts = {s: sum(r.status is s for r in result.requests) for s in Status}
    assert counts[Status.UNFINISHED] > 0 and counts[Status.FINISHED] > 0
    assert len(result.requests) == counts[Status.FINISHED] + counts[Status.REJECTED] + counts[Status.UNFINISHED]
    assert result.not_arrived == len(reqs) - len(result.requests) > 0
    assert all(r.finish_s is None or r.finish_s <= 3.0 for r in result.requests)


def test_round_robin_and_least_outstanding_spread_the_load():
    reqs = [Request(i, 0.0, 8, 4) for i in range(6)]
    pols = [make_policy("continuous", make_kv("paged")) for _ in range(3)]
    simulate(reqs, pols, [LINEAR] * 3, RoundRobinRouter())
    assert [r.replica for r in reqs] == [0, 1, 2, 0, 1, 2]

    reqs = [Request(0, 0.0, 8, 50), Request(1, 0.0, 8, 50), Request(2, 0.5, 8, 2), Request(3, 0.505, 8, 2)]
    pols = [make_policy("continuous", make_kv("paged")) for _ in range(2)]
    simulate(reqs, pols, [LINEAR] * 2, LeastOutstandingRouter())
    # 0 -> replica 0, 1 -> replica 1 (tie-break to the lower index after 0 is busy),
    # 2 -> replica 0 (both hold one; lowest index), 3 -> replica 1 (0 still holds two)
    assert [r.replica for r in reqs] == [0, 1, 0, 1]


@pytest.mark.parametrize("layout", ["paged", "contiguous"])
def test_jumping_is_exact_when_a_router_reads_the_replicas_load(layout):
    """Three replicas behind the least-outstanding router, which reads every
    replica's load at each arrival: a run must have retired what finished
    by the time an arrival is routed, as stepping does."""
    def three(fast_forward):
        reqs = poisson_requests(300, 30.0, seed=11)
        pols = [make_policy("continuous", make_kv(layout)) for _ in range(3)]
        for pol in pols:
            pol.record_token_times = True
        return reqs, simulate(reqs, pols, [LINEAR] * 3, LeastOutstandingRouter(), fast_forward=fast_forward)

    (stepped, r1), (jumped, r2) = three(False), three(True)
    assert r2.sim_events < r1.sim_events
    assert [r.replica for r in stepped] == [r.replica for r in jumped]
    _assert_same_run(stepped, r1, jumped, r2)


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("horizon_s", [None, 6.0])
def test_going_on_without_waiting_is_exact_when_steps_end_as_requests_arrive(replicas, horizon_s):
    """Every step takes 0.25 s and requests arrive on multiples of 0.25 s
    (some together), so steps end exactly when requests arrive and when the
    horizon falls: a replica that takes its next decision without waiting
    for SimPy's clock (its step ends before anything arrives) must still
    meet each arrival in the order stepping does, and end on the same clock;
    a run whose last step would end on the horizon stops a step short, as
    stepping does (SimPy stops before a step ending on it is done). Memory
    and rows to spare: no run goes on through arrivals."""
    quarter = LinearCostModel(base_s=0.25, per_prefill_token_s=0.0, per_decode_seq_s=0.0,
                              per_context_token_s=0.0)
    rng = np.random.default_rng(5)
    arrivals = np.cumsum(rng.integers(0, 4, 120)) * 0.25

    def both(fast_forward):
        reqs = [Request(i, float(a), int(p), int(o)) for i, (a, p, o) in
                enumerate(zip(arrivals, rng.integers(4, 60, 120), rng.integers(1, 12, 120)))]
        pols = [make_policy("continuous", PagedKVManager(num_blocks=400, block_size=8, watermark_frac=0.0))
                for _ in range(replicas)]
        for pol in pols:
            pol.record_token_times = True
        return reqs, simulate(reqs, pols, [quarter] * replicas, LeastOutstandingRouter(),
                              horizon_s=horizon_s, fast_forward=fast_forward)

    rng_state = rng.bit_generator.state
    stepped, r1 = both(False)
    rng.bit_generator.state = rng_state
    jumped, r2 = both(True)
    assert r2.sim_events < r1.sim_events
    assert r2.sim_time_s == r1.sim_time_s
    assert [r.replica for r in stepped] == [r.replica for r in jumped]
    _assert_same_run(stepped, r1, jumped, r2, rel_tol=0.0)


def test_a_bounded_timeline_merges_steps_and_keeps_every_weighted_figure():
    """With a budget of 64 rows the timeline of ~1,300 steps is merged to
    between 32 and 64 rows that cover every step, each of the same number of
    consecutive steps (single steps and decode runs alike, in time order),
    and the step-time-weighted KV and batch figures of the summary are those
    of the full timeline."""
    from sim.metrics import requests_frame, summarize

    reqs = poisson_requests(150, 20.0, seed=7)
    results = {}
    for max_rows in (None, 64):
        pol = make_policy("continuous", make_kv("paged"))
        result = simulate(poisson_requests(150, 20.0, seed=7), [pol], [LINEAR], RoundRobinRouter(),
                          timeline_max_rows=max_rows)
        frame = result.timeline.to_frame()
        results[max_rows] = (frame, summarize(result, requests_frame(result), frame))
    full, merged = results[None][0], results[64][0]
    assert (full["steps"] == 1).all() and len(full) == results[None][1]["sim_steps"]
    assert 32 <= len(merged) <= 64 and merged["steps"].sum() == len(full)
    assert merged["steps"].iloc[:-1].nunique() == 1
    ends = (merged["t_s"] + merged["step_s"]).to_numpy()
    assert (ends[:-1] <= merged["t_s"].to_numpy()[1:] * (1 + 1e-12)).all()   # a row's steps end before the next's
    assert merged["step_s"].sum() == pytest.approx(full["step_s"].sum(), rel=1e-12)
    for key in ("kv_utilization_mean", "kv_usage_mean", "mean_batch_size"):
        assert results[64][1][key] == pytest.approx(results[None][1][key], rel=1e-9)
    for key in ("internal", "reserved_unused", "external"):
        assert results[64][1]["kv_waste"][key] == pytest.approx(results[None][1]["kv_waste"][key],
                                                                rel=1e-9, abs=1e-12)
    assert len(reqs) == 150


@pytest.mark.parametrize("batching,memory", [
    ({"policy": "continuous"}, {"layout": "paged"}),
    ({"policy": "continuous", "chunked_prefill": True, "max_batch_tokens": 2048}, {"layout": "paged"}),
    ({"policy": "continuous"}, {"layout": "paged", "prefix_caching": True}),
    ({"policy": "static"}, {"layout": "contiguous"}),
])
def test_jumping_is_bit_exact_with_the_profiled_cost_model(batching, memory):
    """The committed profile prices a decode run exactly as it prices each of
    its steps, so jumping (led runs, runs through arrivals) gives every
    request the very floats that stepping gives it, and every timeline
    column but ``step_s`` (a run's is the difference of two end times)."""
    from experiments.config import validate
    from experiments.runner import run_experiment

    cfg = validate(dict(name="exact", seed=3, model="llama-2-7b", hardware="h100-sxm",
                        workload=dict(num_requests=300, arrival=dict(process="poisson", rate_rps=25.0),
                                      lengths=dict(preset="sharegpt"),
                                      prefix=dict(turns=3, think_time_s=1.0) if memory.get("prefix_caching") else None),
                        engine=dict(batching=batching, memory=memory, cost_model=dict(kind="auto"))))
    jumped, stepped = (run_experiment(cfg.model_copy(update={"fast_forward": ff})) for ff in (True, False))
    assert jumped.summary["sim_events"] < stepped.summary["sim_events"]
    walls = [c for c in jumped.requests.columns if "wall" in c]
    assert jumped.requests.drop(columns=walls).equals(stepped.requests.drop(columns=walls))
    assert jumped.timeline.drop(columns=["step_s"]).equals(stepped.timeline.drop(columns=["step_s"]))


def test_the_garbage_collector_is_as_it_was_after_a_run():
    """The run pauses Python's cyclic collector and puts it back as it
    found it, also when the run fails."""
    class Failing:
        name = "failing"

        def step_time(self, batch):
            raise RuntimeError("boom")

        def decode_run_times(self, batch, num_steps, first_step=0):
            raise RuntimeError("boom")

    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            run("continuous", "paged", LINEAR, True, n=20)
            assert gc.isenabled() == enabled
            with pytest.raises(RuntimeError, match="boom"):
                run("continuous", "paged", Failing(), True, n=20)
            assert gc.isenabled() == enabled
    finally:
        gc.enable()
