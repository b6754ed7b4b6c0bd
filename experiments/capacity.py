"""``pagesim capacity``: the highest load each configuration sustains within
its objectives, and the cheapest configuration for a target load.

**Candidates** are the cartesian product of the config's ``sweep:`` section
with the load key left out (any hardware, ``engine.parallel``, policy,
layout, batch limits, block size... a sweep can name).

**Load.** A Poisson-like arrival process is loaded by ``rate_rps``; a trace
by ``time_scale`` (load factor ``x`` replays it at ``time_scale = 1/x``, that
is at ``x`` times its own mean rate). Rates are reported in requests per
second either way.

**A probe** simulates a candidate at one load and one seed -- stopping early,
half its arrival span after the last arrival (``probe_horizon_s``), if
requests are still queued then -- and *passes* when

* every request was served by then,

* its steady-state verdict is ``stable`` (sim/steady.py: the backlog does
  not grow through the measurement window),
* every ``--slo METRIC<=LIMIT`` holds -- a latency metric
  (``ttft_s_p99``, ``tpot_s_p50``, ...) is read over the steady-state window,
  any other summary metric over the whole run -- and
* with per-request objectives (``--slo ttft_s<=1`` names a latency without a
  statistic), at least ``--attainment`` of the window's requests meet all of
  them (goodput; a request that did not finish misses).

**The search** for one candidate and seed: bracket (multiply the load by 2
from the config's own value until a probe fails, or divide until one
passes), then bisect until the bracket is within ``tolerance`` (relative) and
report its passing end. Capacity is assumed monotone in load. One probe far
beyond capacity first measures the rate the candidate completes requests at
when saturated; no load above it is credited (a finite run can drain a slowly
growing queue within the verdict's tolerance). Later seeds
start from the first seed's answer with a tighter bracket. The answer per
candidate is the median over seeds, with their spread.

**A target** (``--target-rate R``): per candidate, the per-replica capacity
(its slowest seed) gives the replicas needed, ``ceil(R / capacity)``, and that
many replicas are then simulated at ``R`` (every seed; one more replica until
they pass). Before searching, one overloaded probe per candidate measures
the rate it completes at when saturated -- an upper bound on what it can
sustain -- which bounds its cost from below; candidates are searched
cheapest bound first, and one whose bound is no better than the best found
is pruned unsearched.

Every probe is cached under ``OUT/probes/`` by a hash of its resolved
config and of the simulator's code (``experiments/fingerprint.py``), so a
re-run (or a grown grid) resumes, and a new version of pagesim probes again.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from experiments.analysis import SLO_PATTERN
from experiments.atomic import atomic_path
from experiments.config import ConfigError, ExperimentConfig, resolved_dict, set_path, tree_id, validate
from experiments.fingerprint import code_fingerprint
from experiments.outputs import write_marker
from sim.metrics import LATENCIES, STATS, flatten, summary_metrics
from sim.presets import resolve_hardware

RATE_KEY = "workload.arrival.rate_rps"
SCALE_KEY = "workload.arrival.time_scale"
MAX_DOUBLINGS = 24
OVERLOAD_FACTOR = 64           # the bound probe runs at this x the config's load


# ---- objectives ----------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """``metric <= limit``; ``per_request``: a request-table latency (goodput)."""

    metric: str
    limit: float
    per_request: bool

    @property
    def column(self) -> str:
        """The flattened-summary column it is judged on."""
        if self.per_request:
            return self.metric
        for name in LATENCIES:
            if any(self.metric == f"{name}_{stat}" for stat in STATS):
                return f"steady_state_{self.metric}"
        return self.metric

    def __str__(self) -> str:
        return f"{self.metric}<={self.limit:g}"


def parse_objective(text: str) -> Objective:
    m = SLO_PATTERN.match(text)
    if not m:
        raise ValueError(f"--slo {text!r}: expected METRIC<=VALUE, e.g. ttft_s_p99<=1 or ttft_s<=1")
    metric = m.group(1)
    try:
        limit = float(m.group(2))
    except ValueError:
        raise ValueError(f"--slo {text!r}: {m.group(2)!r} is not a number") from None
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"--slo {text!r}: the limit must be a finite number > 0")
    if metric in LATENCIES:
        return Objective(metric, limit, True)
    known = summary_metrics()
    if metric not in known:
        raise ValueError(f"--slo {metric}: unknown metric; allowed: a latency per request for goodput "
                         f"({', '.join(LATENCIES)}) or a summary metric ({', '.join(known)})")
    return Objective(metric, limit, False)


@dataclass(frozen=True)
class Search:
    objectives: tuple[Objective, ...] = ()
    attainment: float = 0.99
    seeds: int = 3
    tolerance: float = 0.02

    @property
    def request_objectives(self) -> tuple[Objective, ...]:
        return tuple(o for o in self.objectives if o.per_request)

    def attainment_key(self) -> str:
        return ",".join(sorted(str(o) for o in self.request_objectives))


# ---- the load axis ---------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """How a load factor is written into a config, and what rate it means."""

    key: str                   # RATE_KEY or SCALE_KEY
    base: float                # the config's own value there
    native_rps: float          # trace: its own mean rate; Poisson: 1.0

    def apply(self, raw: dict, rate_rps: float) -> dict:
        point = copy.deepcopy(raw)
        if self.key == RATE_KEY:
            set_path(point, RATE_KEY, float(rate_rps))
        else:
            set_path(point, SCALE_KEY, float(self.native_rps / rate_rps))
        return point

    @property
    def start_rps(self) -> float:
        return self.base if self.key == RATE_KEY else self.native_rps / self.base


def load_axis(cfg: ExperimentConfig) -> Load:
    arrival = cfg.workload.arrival
    if getattr(arrival, "process", None) == "trace":
        from workloads.spec import generate

        arrivals = generate(cfg.workload, np.random.default_rng(cfg.seed)).arrival_s
        span = float(arrivals[-1] - arrivals[0]) / arrival.time_scale if len(arrivals) > 1 else 0.0
        if span <= 0:
            raise ConfigError("workload.trace: its requests all arrive at once; a trace needs a duration "
                              "to be loaded at a rate")
        return Load(SCALE_KEY, arrival.time_scale, (len(arrivals) - 1) / span)
    if not hasattr(arrival, "rate_rps"):
        raise ConfigError(f"workload.arrival.process: {arrival.process!r} has no rate to search; "
                          f"allowed: poisson, gamma, constant or trace")
    return Load(RATE_KEY, arrival.rate_rps, 1.0)


# ---- candidates ----------------------------------------------------------------
@dataclass
class Candidate:
    cid: str
    swept: dict[str, Any]
    raw: dict                  # the candidate's config tree, one replica unless swept
    cfg: ExperimentConfig

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.swept.items()
                          if k not in ("engine.batching.policy", "engine.memory.layout") and not isinstance(v, dict))
        return self.cfg.label() + (f" [{extra}]" if extra else "")

    @property
    def short(self) -> str:
        """A few characters per swept value, for plot annotations."""
        return " ".join(f"{_SHORT.get(k.rsplit('.', 1)[-1], k.rsplit('.', 1)[-1] + '=')}{v}"
                        for k, v in self.swept.items() if not isinstance(v, dict)) or self.cfg.label()


_SHORT = {"tensor": "tp", "pipeline": "pp", "max_batch_size": "b", "max_batch_tokens": "bt", "block_size": "bs",
          "replicas": "x", "layout": "", "policy": "", "hardware": "", "reservation": ""}


def candidates(raw: dict, cfg: ExperimentConfig, load: Load) -> list[Candidate]:
    grid = {k: v for k, v in (cfg.sweep or {}).items() if k != load.key}
    base = copy.deepcopy(raw)
    base.pop("sweep", None)
    out, seen = [], set()
    for values in itertools.product(*grid.values()):
        point = copy.deepcopy(base)
        swept = dict(zip(grid, values))
        for key, value in swept.items():
            set_path(point, key, value)
        point_cfg = validate(point)
        cid = tree_id(resolved_dict(point_cfg))
        if cid not in seen:
            seen.add(cid)
            out.append(Candidate(cid, swept, point, point_cfg))
    return out


# ---- probes --------------------------------------------------------------------
@dataclass
class Probe:
    rate_rps: float
    seed: int
    passed: bool
    why: str                   # "ok" or the first reason it failed
    row: dict = field(repr=False)


def probe_horizon_s(span_s: float, search: Search) -> float:
    """Where a probe stops: half its arrival span after the last arrival, and
    at least twice the longest TTFT or E2E objective. A system that keeps up
    has served everyone long before; one that still holds requests then is
    clearly saturated, and draining its queue would only cost time."""
    limits = [o.limit for o in search.objectives if o.metric.startswith(("ttft_s", "e2e_s"))]
    return 1.5 * span_s + max([2.0 * max(limits)] if limits else [0.0])


def _judge(row: dict, search: Search) -> tuple[bool, str]:
    if row.get("counts_unfinished"):
        return False, f"saturated: {row['counts_unfinished']} requests unserved at the horizon"
    if row.get("steady_state_verdict") == "saturated":
        return False, "saturated"
    for o in search.objectives:
        if o.per_request:
            continue
        value = row.get(o.column)
        if value is None or (isinstance(value, float) and math.isnan(value)) or value > o.limit:
            return False, f"{o.column}={_fmt(value)}>{o.limit:g}"
    if search.request_objectives:
        got = row["attainment"][search.attainment_key()]
        if got < search.attainment:
            return False, f"attainment {got:.3f}<{search.attainment:g}"
    return True, "ok"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def attainment(requests: pd.DataFrame, summary: dict, objectives: tuple[Objective, ...]) -> float:
    """Share of the steady-state window's requests meeting every per-request
    objective (requests that did not finish miss)."""
    st = summary["steady_state"]
    if st["window_start_s"] is None:
        window = requests
    else:
        window = requests[(requests["arrival_s"] >= st["window_start_s"])
                          & (requests["arrival_s"] <= st["window_end_s"])]
    if not len(window):
        return 0.0
    ok = np.ones(len(window), dtype=bool)
    for o in objectives:
        values = window[o.metric].to_numpy(float)
        if o.metric == "tpot_s":        # a one-token answer has no TPOT: it cannot miss it
            values = np.where(np.isnan(values) & (window["status"].to_numpy() == "finished"), 0.0, values)
        ok &= values <= o.limit         # NaN (not finished) compares False
    return float(ok.mean())


class ProbeRunner:
    """Runs (or reads back from the cache) one probe; prints one line each."""

    def __init__(self, cache_dir: Path | None, search: Search, log: Callable[[str], None] | None):
        self.cache_dir, self.search, self.log = cache_dir, search, log
        self.new: dict[str, dict] = {}     # probes simulated here, for a parent on another machine

    def __call__(self, cand: Candidate, load: Load, rate_rps: float, seed: int, what: str = "",
                 early_stop: bool = True) -> Probe:
        point = load.apply(cand.raw, rate_rps)
        point["seed"] = seed
        n = cand.cfg.workload.num_requests
        if early_stop and cand.cfg.horizon_s is None and n:
            point["horizon_s"] = probe_horizon_s(n / rate_rps, self.search)
        cfg = validate(point)
        key = tree_id({**resolved_dict(cfg), "simulator": code_fingerprint()})   # another version: probed again
        row = self._cached(key)
        if row is None or (self.search.request_objectives and self.search.attainment_key() not in row["attainment"]):
            row = self._run(cfg, key, row)
        passed, why = _judge(row, self.search)
        if self.log:
            self.log(f"{cand.label} seed {seed}{what}: {rate_rps:.4g} req/s -> "
                     f"{'pass' if passed else 'fail'} ({why})")
        return Probe(rate_rps, seed, passed, why, row)

    def _cached(self, key: str) -> dict | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _run(self, cfg: ExperimentConfig, key: str, old: dict | None) -> dict:
        from experiments.runner import run_experiment

        out = run_experiment(cfg)
        row = {k: v for k, v in flatten(out.summary).items() if not isinstance(v, (list, dict))}
        row["attainment"] = dict(old["attainment"]) if old else {}
        if self.search.request_objectives:
            row["attainment"][self.search.attainment_key()] = attainment(
                out.requests, out.summary, self.search.request_objectives)
        self.new[key] = row
        if self.cache_dir is not None and self.cache_dir.is_dir():     # not there on a remote Ray worker
            store_probe(self.cache_dir, key, row)
        return row


def store_probe(cache_dir: Path, key: str, row: dict) -> None:
    with atomic_path(cache_dir / f"{key}.json") as tmp:
        tmp.write_text(json.dumps(row, sort_keys=True))


# ---- the search ---------------------------------------------------------------
@dataclass
class SeedAnswer:
    seed: int
    rate_rps: float | None     # None: not even the lowest load passed
    at_rate: Probe | None      # the passing probe at that rate
    probes: int


def max_rate(cand: Candidate, load: Load, probe: ProbeRunner, seed: int, tolerance: float,
             start_rps: float, step: float, ceiling_rps: float = math.inf) -> SeedAnswer:
    """Bracket from ``start_rps`` by factors ``1 + step``, then bisect to
    ``tolerance``. A load above ``ceiling_rps`` fails unsimulated."""
    count = 0

    def at(rate: float, what: str) -> Probe:
        nonlocal count
        if rate > ceiling_rps:
            return Probe(rate, seed, False, f"above the saturated completion rate {ceiling_rps:.4g}", {})
        count += 1
        return probe(cand, load, rate, seed, what)

    first = at(start_rps, " bracket")
    factor = 1.0 + step
    lo_probe: Probe | None = first if first.passed else None
    lo, hi = (start_rps, None) if first.passed else (None, start_rps)
    for _ in range(MAX_DOUBLINGS):
        if lo is not None and hi is not None:
            break
        rate = lo * factor if hi is None else hi / factor
        p = at(rate, " bracket")
        if p.passed:
            lo, lo_probe = rate, p
        else:
            hi = rate
        factor = factor * factor if step < 1 else factor    # a narrow first step widens fast
    if lo is None:
        return SeedAnswer(seed, None, None, count)
    if hi is None:                                            # passed at every load tried
        return SeedAnswer(seed, lo, lo_probe, count)
    while (hi - lo) / lo > tolerance:
        mid = math.sqrt(lo * hi)
        p = at(mid, " bisect")
        if p.passed:
            lo, lo_probe = mid, p
        else:
            hi = mid
    return SeedAnswer(seed, lo, lo_probe, count)


def search_candidate(cand: Candidate, load: Load, probe: ProbeRunner, search: Search,
                     ceiling_rps: float = math.inf) -> list[SeedAnswer]:
    answers: list[SeedAnswer] = []
    base_seed = cand.cfg.seed
    start, step = min(load.start_rps, ceiling_rps), 1.0
    for i in range(search.seeds):
        answer = max_rate(cand, load, probe, base_seed + i, search.tolerance, start, step, ceiling_rps)
        answers.append(answer)
        if i == 0 and answer.rate_rps is not None:
            start, step = answer.rate_rps, 4 * search.tolerance
    return answers


def with_replicas(cand: Candidate, replicas: int, scale_requests: bool = False) -> Candidate:
    """``cand`` with ``replicas`` replicas; ``scale_requests``: and as many
    requests per replica as it had in all, so that a load ``replicas`` times
    higher lasts as long (the steady-state window must stay long compared with
    request latencies)."""
    raw = copy.deepcopy(cand.raw)
    set_path(raw, "engine.replicas", replicas)
    n = cand.cfg.workload.num_requests
    if scale_requests and n is not None and cand.cfg.workload.trace is None:
        set_path(raw, "workload.num_requests", n * replicas // max(1, cand.cfg.engine.replicas))
    if replicas > 1 and "router" not in raw.get("engine", {}):
        set_path(raw, "engine.router", "least_outstanding")
    return Candidate(cand.cid, cand.swept, raw, validate(raw))


# ---- driving it -------------------------------------------------------------------
@dataclass
class Job:
    cand: Candidate
    load: Load
    search: Search
    cache_dir: str
    target_rps: float | None
    max_replicas: int
    quiet: bool
    index: int = 0
    ceiling_rps: float | None = None     # the saturated throughput, when the caller measured it already


def _log(quiet: bool) -> Callable[[str], None] | None:
    if quiet:
        return None
    return lambda line: print(f"pagesim: capacity: {line}", file=sys.stderr, flush=True)


def run_job(job: Job) -> tuple[int, dict, dict[str, dict]]:
    """One candidate's whole answer -- its capacity over seeds and, with a
    target, the replicas that meet it -- and the probes it simulated."""
    probe = ProbeRunner(Path(job.cache_dir), job.search, _log(job.quiet))
    return job.index, _answer(job, probe), probe.new


def _answer(job: Job, probe: ProbeRunner) -> dict:
    ceiling = job.ceiling_rps if job.ceiling_rps is not None else upper_bound_rps(job.cand, job.load, probe)
    answers = search_candidate(job.cand, job.load, probe, job.search, ceiling)
    found = [a.rate_rps for a in answers if a.rate_rps is not None]
    row = {**_summary_row(job.cand, answers), "saturated_rate_rps": ceiling}
    if job.target_rps is None or len(found) < len(answers):
        return row
    replicas = max(1, math.ceil(job.target_rps / min(found) - 1e-9))
    while replicas <= job.max_replicas:
        scaled = with_replicas(job.cand, replicas, scale_requests=True)
        probes = [probe(scaled, job.load, job.target_rps, job.cand.cfg.seed + i, f" x{replicas} replicas")
                  for i in range(job.search.seeds)]
        if all(p.passed for p in probes):
            row.update(replicas_at_target=replicas, gpus_at_target=replicas * job.cand.cfg.gpus,
                       target_verified=True,
                       target_ttft_s_p99=max(p.row.get("steady_state_ttft_s_p99") or math.nan for p in probes),
                       target_tpot_s_p99=max(p.row.get("steady_state_tpot_s_p99") or math.nan for p in probes))
            return row
        replicas += 1
    row.update(replicas_at_target=None, gpus_at_target=None, target_verified=False)
    return row


def _summary_row(cand: Candidate, answers: list[SeedAnswer]) -> dict:
    rates = [a.rate_rps for a in answers]
    complete = bool(rates) and all(r is not None for r in rates)
    par = cand.cfg.engine.parallel
    gpus = cand.cfg.gpus
    row = {"candidate": cand.cid, "config": cand.label, "short": cand.short, **cand.swept,
           "hardware": resolve_hardware(cand.cfg.hardware).name,
           "tensor": par.tensor, "pipeline": par.pipeline, "replicas": cand.cfg.engine.replicas, "gpus": gpus,
           "max_rate_rps": None, "max_rate_min_rps": None, "max_rate_max_rps": None, "goodput_per_gpu_rps": None,
           "seed_rates_rps": json.dumps([None if r is None else round(r, 6) for r in rates]),
           "probes": sum(a.probes for a in answers)}
    if not complete:
        return row
    median = float(np.median(rates))
    row.update(max_rate_rps=median, max_rate_min_rps=min(rates), max_rate_max_rps=max(rates),
               goodput_per_gpu_rps=median / gpus)
    r = min(answers, key=lambda a: abs(a.rate_rps - median)).at_rate.row     # the seed nearest the median
    tokens_per_request = (r["throughput_tokens_per_s"] / r["throughput_rps"]) if r.get("throughput_rps") else None
    row.update(ttft_s_p99=r.get("steady_state_ttft_s_p99"), tpot_s_p99=r.get("steady_state_tpot_s_p99"),
               output_tokens_per_s=None if tokens_per_request is None else median * tokens_per_request,
               cost_model=r.get("cost_model"), communication=r.get("parallel_communication"))
    return row


def upper_bound_rps(cand: Candidate, load: Load, probe: ProbeRunner) -> float:
    """The throughput of one probe far beyond capacity (seed of the config),
    every request queued at once in effect and all of them served (no early
    stop: a cut-off run would have served the short ones and overstate it):
    no configuration sustains more than it completes when saturated.
    Infinite (no bound) for conversations: their later turns follow think
    times that the load does not scale, so a high rate does not saturate. A finite run can be judged stable a little above it -- a
    slowly growing queue that the verdict's tolerance lets pass -- so the
    search never credits a load above it."""
    prefix = cand.cfg.workload.prefix
    if prefix is not None and prefix.turns > 1:
        return math.inf
    p = probe(cand, load, load.start_rps * OVERLOAD_FACTOR, cand.cfg.seed, " overload bound", early_stop=False)
    rate = p.row.get("throughput_rps")          # requests finished over the whole (queue-bound) run
    return float(rate) if rate else math.inf


def run_jobs(jobs: list[Job], workers: int, backend: str = "local", address: str | None = None) -> list[dict]:
    from experiments.backends import pool

    for i, job in enumerate(jobs):
        job.index = i
    rows: list[dict] = [{} for _ in jobs]
    cache_dir = Path(jobs[0].cache_dir) if jobs else None
    for index, row, new in pool(backend, min(workers, len(jobs) or 1), address).imap_unordered(run_job, jobs):
        rows[index] = row
        for key, probe_row in new.items():          # a remote worker could not write them here
            if not (cache_dir / f"{key}.json").is_file():
                store_probe(cache_dir, key, probe_row)
    return rows


def search_units(raw: dict, cfg: ExperimentConfig, target_rps: float | None,
                 load: Load | None = None) -> list[Candidate]:
    """The candidates a search runs: with a target, each as one replica (the
    unit the target multiplies; a swept ``engine.replicas`` is refused)."""
    cands = candidates(raw, cfg, load or load_axis(cfg))
    if target_rps is None:
        return cands
    if any("engine.replicas" in c.swept for c in cands):
        raise ConfigError("sweep: engine.replicas is what --target-rate searches; remove it from the sweep")
    return [with_replicas(c, 1) for c in cands]


def plan(raw: dict, cfg: ExperimentConfig, out_dir: Path, search: Search, *,
         target_rps: float | None = None, gpu_cost: dict[str, float] | None = None, max_replicas: int = 64,
         workers: int | None = None, quiet: bool = False, backend: str = "local",
         address: str | None = None, cands: list[Candidate] | None = None) -> pd.DataFrame:
    """Search every candidate (``search_units``, unless the caller built
    them); returns the capacity table (see module doc). Searches run on
    ``backend`` (experiments/backends.py)."""
    load = load_axis(cfg)
    cands = search_units(raw, cfg, target_rps, load) if cands is None else cands
    _check_costs(cands, gpu_cost)
    out_dir = Path(out_dir)
    cache = out_dir / "probes"
    cache.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, "capacity")
    workers = max(1, workers or os.cpu_count() or 1)
    log = _log(quiet)
    if target_rps is None:
        rows = run_jobs([Job(c, load, search, str(cache), None, max_replicas, quiet) for c in cands], workers,
                        backend, address)
        return _table(rows, gpu_cost, None)
    # cheapest bound first; prune what cannot beat the best found
    probe = ProbeRunner(cache, search, log)
    bounds = {c.cid: upper_bound_rps(c, load, probe) for c in cands}
    price = {c.cid: _price(c, gpu_cost) for c in cands}
    lower = {c.cid: math.ceil(target_rps / bounds[c.cid] - 1e-9) * price[c.cid] if bounds[c.cid] > 0 else math.inf
             for c in cands}
    order = sorted(cands, key=lambda c: (lower[c.cid], c.cid))
    rows, best = [], math.inf
    for start in range(0, len(order), workers):
        wave = [c for c in order[start:start + workers]]
        todo = [c for c in wave if lower[c.cid] < best]
        for c in wave:
            if c not in todo:
                rows.append({**_summary_row(c, []), "status": "pruned", "cost_lower_bound": lower[c.cid],
                             "saturated_rate_rps": bounds[c.cid], "target_verified": False})
                if log:
                    log(f"{c.label}: pruned (its cost bound {lower[c.cid]:g} >= best {best:g})")
        jobs = [Job(c, load, search, str(cache), target_rps, max_replicas, quiet, ceiling_rps=bounds[c.cid])
                for c in todo]
        for c, row in zip(todo, run_jobs(jobs, workers, backend, address)):
            row.update(status="searched", cost_lower_bound=lower[c.cid])
            if row.get("target_verified"):
                best = min(best, row["replicas_at_target"] * price[c.cid])
            rows.append(row)
    return _table(rows, gpu_cost, target_rps)


def _price(cand: Candidate, gpu_cost: dict[str, float] | None) -> float:
    """Dollars per hour of one replica (GPUs per replica when no prices are given)."""
    par = cand.cfg.engine.parallel
    gpus = par.tensor * par.pipeline
    if not gpu_cost:
        return float(gpus)
    return gpus * gpu_cost[resolve_hardware(cand.cfg.hardware).name]


def _check_costs(cands: list[Candidate], gpu_cost: dict[str, float] | None) -> None:
    if not gpu_cost:
        return
    used = sorted({resolve_hardware(c.cfg.hardware).name for c in cands})
    missing = [h for h in used if h not in gpu_cost]
    if missing:
        raise ValueError(f"--gpu-cost: no price for {', '.join(missing)} (hardware of the candidates: "
                         f"{', '.join(used)})")


def _table(rows: list[dict], gpu_cost: dict[str, float] | None, target_rps: float | None) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    rate = table["max_rate_rps"].astype(float)
    if gpu_cost:
        per_gpu = table["hardware"].map(gpu_cost)
        tokens = table.get("output_tokens_per_s", pd.Series(math.nan, index=table.index)).astype(float)
        # run at its capacity: its GPUs' dollars over the output tokens it serves
        table["dollars_per_1m_output_tokens"] = per_gpu * table["gpus"] / (tokens * 3600.0) * 1e6
    if target_rps is not None:
        table["target_rps"] = target_rps
        at = table.get("replicas_at_target", pd.Series(math.nan, index=table.index)).astype(float)
        table["margin_at_target"] = at * rate / target_rps - 1.0
        if gpu_cost:
            table["dollars_per_hour"] = table["hardware"].map(gpu_cost) * at * table["gpus"]
    return table


# ---- writing ----------------------------------------------------------------
def write_results(table: pd.DataFrame, out_dir: Path, cfg_name: str, command: str, search: Search,
                  target_rps: float | None, gpu_cost: dict[str, float] | None,
                  cands: dict[str, Candidate]) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "capacity.csv", "md": out_dir / "capacity.md"}
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    best = recommend(table, target_rps)
    text = report(table, cfg_name, command, search, target_rps, gpu_cost, best, cands)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(text)
    if best is not None:
        cand = cands[best["candidate"]]
        replicas = int(best["replicas_at_target"]) if target_rps is not None else cand.cfg.engine.replicas
        rate = target_rps if target_rps is not None else best["max_rate_rps"]
        raw = (with_replicas(cand, replicas, scale_requests=True).raw if replicas != cand.cfg.engine.replicas
               else copy.deepcopy(cand.raw))
        raw = load_axis(cand.cfg).apply(raw, rate)
        raw["name"] = f"{cfg_name}-recommended"
        import yaml

        paths["yaml"] = out_dir / "recommended.yaml"
        with atomic_path(paths["yaml"]) as tmp:
            tmp.write_text(f"# {command}\n# recommended: {cand.label}, {replicas} replica(s) "
                           f"x {cand.cfg.engine.parallel.value().gpus} GPU(s) at {rate:.4g} req/s\n"
                           f"# vLLM, per replica: {vllm_flags(cand.cfg)}\n"
                           + yaml.safe_dump(raw, sort_keys=False))
    from experiments.plots.capacity import plot_capacity

    for p in plot_capacity(table, out_dir / "plots", target_rps):
        paths[p.stem] = p
    return paths


def recommend(table: pd.DataFrame, target_rps: float | None) -> dict | None:
    """With a target: the cheapest verified configuration (fewest GPUs on a
    tie). Without: the highest capacity per GPU."""
    if table.empty or "max_rate_rps" not in table:
        return None
    ok = table[table["max_rate_rps"].notna()]
    if target_rps is not None:
        ok = ok[ok["target_verified"].astype("boolean").fillna(False).astype(bool)]
        if ok.empty:
            return None
        cost = ok["dollars_per_hour"] if "dollars_per_hour" in ok else ok["gpus_at_target"]
        ok = ok.assign(_cost=cost).sort_values(["_cost", "gpus_at_target", "margin_at_target"],
                                               ascending=[True, True, False])
        return ok.iloc[0].drop("_cost").to_dict()
    if ok.empty:
        return None
    return ok.sort_values("goodput_per_gpu_rps", ascending=False).iloc[0].to_dict()


def _fewest_gpus(table: pd.DataFrame) -> dict | None:
    ok = table[table["target_verified"].astype("boolean").fillna(False).astype(bool)]
    return None if ok.empty else ok.sort_values("gpus_at_target").iloc[0].to_dict()


def vllm_flags(cfg: ExperimentConfig) -> str:
    """The vLLM launch flags equivalent to a configuration (paged, continuous batching)."""
    e = cfg.engine
    flags = [f"--tensor-parallel-size {e.parallel.tensor}", f"--pipeline-parallel-size {e.parallel.pipeline}",
             f"--max-num-seqs {e.batching.max_batch_size}", f"--max-num-batched-tokens {e.batching.max_batch_tokens}",
             f"--block-size {e.memory.block_size}", f"--gpu-memory-utilization {e.memory.gpu_memory_utilization:g}",
             "--enable-prefix-caching" if e.memory.prefix_caching else "--no-enable-prefix-caching",
             "--enable-chunked-prefill" if e.batching.chunked_prefill else "--no-enable-chunked-prefill"]
    text = " ".join(flags)
    if e.batching.policy != "continuous" or e.memory.layout != "paged":
        text += f"  (vLLM always batches continuously over paged KV; this is {cfg.label()})"
    return text


def report(table: pd.DataFrame, name: str, command: str, search: Search, target_rps: float | None,
           gpu_cost: dict[str, float] | None, best: dict | None, cands: dict[str, Candidate]) -> str:
    objectives = " and ".join(str(o) for o in search.objectives) or "none (stability only)"
    lines = [f"# Capacity: {name}", "", f"`{command}`", "",
             f"Objectives: {objectives}"
             + (f"; at least {search.attainment:g} of requests meeting the per-request ones"
                if search.request_objectives else "")
             + f". Latencies over the steady-state window; a saturated run never passes. "
               f"{search.seeds} seed(s), bracket + bisection to {search.tolerance:.0%}.", ""]
    if any(table.get("communication", pd.Series(dtype=object)).fillna("none").astype(str).str.startswith("analytic")):
        lines += ["Tensor/pipeline-parallel rows price communication **analytically** "
                  "(ring all-reduce over NVLink, no multi-GPU measurement; sim/parallel.py).", ""]
    head = ["configuration", "GPUs", "max rate (req/s)", "seed spread", "saturated (req/s)",
            "goodput/GPU (req/s)", "p99 TTFT (s)", "p99 TPOT (s)"]
    if gpu_cost:
        head.append("$ / 1M output tokens")
    if target_rps is not None:
        head += ["replicas at target", "$ / hour" if gpu_cost else "GPUs at target", "margin at target"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        rate = r.get("max_rate_rps")
        cells = [r["config"], str(r["gpus"]),
                 "none" if _nan(rate) else f"{rate:.3g}",
                 "" if _nan(rate) else f"{r['max_rate_min_rps']:.3g}-{r['max_rate_max_rps']:.3g}",
                 _cell(r.get("saturated_rate_rps")),
                 "" if _nan(rate) else f"{r['goodput_per_gpu_rps']:.3g}",
                 _cell(r.get("ttft_s_p99")), _cell(r.get("tpot_s_p99"))]
        if gpu_cost:
            cells.append(_cell(r.get("dollars_per_1m_output_tokens"), ".3g"))
        if target_rps is not None:
            status = r.get("status", "searched")
            if status == "pruned":
                cells += ["pruned", "", ""]
            elif not r.get("target_verified"):
                cells += ["not met", "", ""]
            else:
                cost = r.get("dollars_per_hour") if gpu_cost else r.get("gpus_at_target")
                cells += [str(int(r["replicas_at_target"])), _cell(cost, ".4g"), f"{r['margin_at_target']:+.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best is not None:
        cand = cands[best["candidate"]]
        if target_rps is not None:
            lines += [f"**Recommended for {target_rps:g} req/s:** {cand.label}, {int(best['replicas_at_target'])} "
                      f"replica(s) of {cand.cfg.engine.parallel.value().gpus} GPU(s) = "
                      f"{int(best['gpus_at_target'])} GPUs"
                      + (f", ${best['dollars_per_hour']:.2f}/hour" if gpu_cost else "") + "."]
            fewest = _fewest_gpus(table)
            if fewest is not None and fewest["gpus_at_target"] < best["gpus_at_target"]:
                lines += ["", f"Fewest GPUs: {fewest['config']}, {int(fewest['replicas_at_target'])} replica(s) = "
                              f"{int(fewest['gpus_at_target'])} GPUs"
                              + (f", ${fewest['dollars_per_hour']:.2f}/hour" if gpu_cost else "") + "."]
        else:
            lines += [f"**Highest capacity per GPU:** {cand.label}, {best['max_rate_rps']:.3g} req/s on "
                      f"{best['gpus']} GPU(s)."]
        lines += ["", "Runnable config: `recommended.yaml`. vLLM equivalent:", "",
                  f"    vllm serve MODEL {vllm_flags(cand.cfg)}", ""]
    elif target_rps is not None:
        lines += [f"No candidate met {target_rps:g} req/s within the replica limit.", ""]
    return "\n".join(lines)


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cell(v, fmt: str = ".3g") -> str:
    return "" if _nan(v) else format(v, fmt)
