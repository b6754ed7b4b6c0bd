"""What ``pagesim fidelity`` computes for each real run. For a run directory
written by ``pagesim serve`` it

1. **replays** the run: the simulator fed the engine's own measured step
   durations (``sim.cost.replay``) must reproduce every request's timestamps
   and every step's batch and memory -- the proof that the simulator and
   the engine ran the same scheduler, so every difference below is the cost
   model's;
2. **simulates** the same config (same workload and seed, the same KV
   capacity the engine had) with the ``profiled`` cost model of that GPU;
3. compares throughput, TTFT/TPOT/E2E (mean, p50, p90, p99; signed relative
   error ``(simulated - real) / real``), per-request errors, steps, batch
   size, preemptions and KV usage;
4. prices every real step with the cost model (``step check``), split by
   kind of step and into host and device time, which says where a gap comes
   from;
5. (``host_oracle``, a diagnosis) simulates again with the engine's host
   terms scaled to the run's own host speed.

``experiments.fidelity.report`` turns the results into tables and plots.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.config import ExperimentConfig, read_yaml, validate
from experiments.inputs import run_dir_error
from experiments.runner import RunOutput, build_replica_cost_model, make_requests, run_experiment
from sim.cost.replay import ReplayCostModel, ReplayMismatch
from sim.cost.spec import ProfiledCostSpec
from sim.driver import simulate
from sim.memory.capacity import build_kv_manager
from sim.metrics import requests_frame
from sim.parallel import ParallelCostModel, compute_shard, memory_shard
from sim.policies import POLICIES
from sim.presets import resolve_hardware, resolve_model
from sim.router import ROUTERS

LATENCIES = ("ttft_s", "tpot_s", "e2e_s")
STATS = ("mean", "p50", "p90", "p99")
TARGET_CENTRAL = 0.05      # throughput, mean and p50
TARGET_P99 = 0.10
STEP_KINDS = ("decode (graph)", "decode (eager)", "mixed", "prefill", "swap only")
TIMELINE_INTS = ("running", "waiting", "swapped", "batch_seqs", "batch_rows", "batch_tokens",
                 "prefill_tokens", "decode_seqs", "kv_token_slots_used", "kv_total_slots")


@dataclass
class RealRun:
    path: Path
    name: str
    config: ExperimentConfig
    summary: dict
    requests: pd.DataFrame
    timeline: pd.DataFrame


def load_real_run(path: Path) -> RealRun:
    """A ``pagesim serve`` output directory; one-line errors for anything else."""
    path = Path(path)
    summary_path = path / "summary.json"
    missing = run_dir_error(path)
    if missing:
        raise ValueError(missing)
    try:
        summary = json.loads(summary_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{summary_path}: not valid JSON ({exc})") from None
    if not isinstance(summary, dict) or summary.get("executor") != "engine":
        raise ValueError(f"{path}: not a real run (summary.json has no \"executor\": \"engine\"); "
                         f"pagesim fidelity compares the output of pagesim serve")
    cfg = validate(read_yaml(path / "config.yaml"), str(path / "config.yaml"))
    frames = {}
    for name in ("requests", "timeline"):
        file = path / f"{name}.parquet"
        try:
            frames[name] = pd.read_parquet(file)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{file}: not a readable parquet file ({exc})") from None
    missing = [c for c in ("launch_s", "wait_s", "graph_batch", "prefill_new_tokens") if c not in frames["timeline"]]
    if missing:
        raise ValueError(f"{path / 'timeline.parquet'}: missing the engine's column(s) {', '.join(missing)}")
    return RealRun(path, path.name, cfg, summary, frames["requests"], frames["timeline"])


# ---- 1. replay ------------------------------------------------------------------
def replay_check(run: RealRun) -> dict:
    """Simulate with the run's measured step durations; the schedule must match."""
    cfg = run.config
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    kv = build_kv_manager(cfg.engine.memory, memory_shard(model, cfg.engine.parallel.value()), hardware)
    policy = POLICIES[cfg.engine.batching.policy](cfg.engine.batching, kv, model)
    cost = ReplayCostModel(run.timeline["step_s"].tolist())
    try:
        result = simulate(make_requests(cfg), [policy], [cost], ROUTERS["round_robin"](), fast_forward=False,
                          timeline_max_rows=None)
    except ReplayMismatch as exc:
        return {"identical": False, "detail": str(exc), "max_abs_dt_s": math.nan}
    sim = requests_frame(result)
    timeline = result.timeline.to_frame()
    real = run.requests
    problems = []
    if len(timeline) != len(run.timeline):
        problems.append(f"{len(timeline)} simulated steps, {len(run.timeline)} real")
    else:
        for column in TIMELINE_INTS:
            if not np.array_equal(timeline[column].to_numpy(), run.timeline[column].to_numpy()):
                problems.append(f"timeline column {column} differs")
                break
    for column in ("status", "preemptions", "output_tokens"):
        if sim[column].tolist() != real[column].tolist():
            problems.append(f"request column {column} differs")
    dt = max(float(np.nanmax(np.abs(sim[c].to_numpy(float) - real[c].to_numpy(float)), initial=0.0))
             for c in ("first_token_s", "finish_s"))
    if dt > 1e-6:
        problems.append(f"timestamps differ by up to {dt:.3g} s")
    return {"identical": not problems, "detail": "; ".join(problems) or "identical", "max_abs_dt_s": dt}


# ---- 2-3. simulate and compare ----------------------------------------------------
def profiled_spec(cfg: ExperimentConfig, profiles: Path | None) -> ProfiledCostSpec:
    """The profiled cost model of the run's GPU and of what one GPU computes
    (from ``profiles/<hw>/<model>/``, ``<model>-tp<T>`` for a tensor-parallel
    run, if given, else the committed profiles)."""
    if profiles is None:
        return ProfiledCostSpec()
    gpu_model = compute_shard(resolve_model(cfg.model), cfg.engine.parallel.value())
    return ProfiledCostSpec(profile_dir=Path(profiles) / resolve_hardware(cfg.hardware).name / gpu_model.name)


def uses_graphs(run: RealRun) -> bool:
    """Whether the engine replayed CUDA graphs for decode steps (not with
    ``pagesim serve --no-graphs``)."""
    return bool(run.summary.get("engine", {}).get("graph_batch_sizes", True))


def _twin_config(cfg: ExperimentConfig, profiles: Path | None) -> ExperimentConfig:
    """The run's config with the profiled cost model of its GPU."""
    engine = cfg.engine.model_copy(update={"cost_model": profiled_spec(cfg, profiles)})
    return cfg.model_copy(update={"engine": engine})


def profiled_cost(cfg: ExperimentConfig, profiles: Path | None, graphs: bool = True):
    """The profiled cost model of one GPU's part of a step and, for a replica
    on several GPUs, its communication (``CommModel``; else None), as
    ``pagesim run`` prices the config; without ``graphs``, every step is
    priced as the engine issues it eagerly."""
    cost, _ = build_replica_cost_model(_twin_config(cfg, profiles))
    cost, comm = (cost.inner, cost.comm) if isinstance(cost, ParallelCostModel) else (cost, None)
    if not graphs and getattr(cost, "engine", None) is not None:
        cost.engine = replace(cost.engine, graph_sizes=())
    return cost, comm


def _replica_cost(cost, comm):
    return cost if comm is None else ParallelCostModel(cost, comm)


def simulate_twin(cfg: ExperimentConfig, profiles: Path | None = None, graphs: bool = True) -> RunOutput:
    """The real run's config, priced by the profiled cost model of its GPU
    (``graphs``: as the engine ran it, with CUDA graphs or without)."""
    if graphs:
        return run_experiment(_twin_config(cfg, profiles))
    return run_experiment(_twin_config(cfg, profiles), cost=_replica_cost(*profiled_cost(cfg, profiles, False)))


def rel_error(sim: float | None, real: float | None) -> float:
    if sim is None or real is None or not real:
        return math.nan
    return (sim - real) / real


def compare(real: RealRun, sim: RunOutput) -> dict:
    rs, ss = real.summary, sim.summary
    rows = [("throughput (req/s)", rs["throughput_rps"], ss["throughput_rps"], "central"),
            ("output tokens/s", rs["throughput_tokens_per_s"], ss["throughput_tokens_per_s"], "central")]
    for metric in LATENCIES:
        for stat in STATS:
            kind = "p99" if stat == "p99" else ("central" if stat in ("mean", "p50") else "info")
            rows.append((f"{metric} {stat}", rs[metric][stat], ss[metric][stat], kind))
    table = pd.DataFrame(rows, columns=["metric", "real", "simulated", "target"])
    table["error"] = [rel_error(s, r) for r, s in zip(table["real"], table["simulated"])]
    limit = table["target"].map({"central": TARGET_CENTRAL, "p99": TARGET_P99})
    table["meets"] = np.where(limit.isna(), None, table["error"].abs() <= limit)
    both = pd.merge(real.requests, sim.requests, on="request_id", suffixes=("_real", "_sim"))
    both = both[(both["status_real"] == "finished") & (both["status_sim"] == "finished")]
    per_request = {}
    for metric in ("e2e_s", "ttft_s"):
        err = (both[f"{metric}_sim"] - both[f"{metric}_real"]) / both[f"{metric}_real"]
        err = err.replace([np.inf, -np.inf], np.nan).dropna()
        per_request[metric] = {"mean": float(err.mean()), "abs_p50": float(err.abs().median()),
                               "abs_p90": float(err.abs().quantile(0.9))} if len(err) else {}
    counts = {
        "steps": (rs["sim_steps"], ss["sim_steps"]),
        "mean batch size": (rs["mean_batch_size"], ss["mean_batch_size"]),
        "preemptions": (rs["preemptions"], ss["preemptions"]),
        "KV usage (mean fraction)": (rs["kv_usage_mean"], ss["kv_usage_mean"]),
        "duration (s)": (rs["duration_s"], ss["duration_s"]),
    }
    return {"table": table, "per_request": per_request, "counts": counts}


# ---- 4. step check ---------------------------------------------------------------
def step_kind(timeline: pd.DataFrame) -> pd.Series:
    prefill = timeline["prefill_tokens"] > 0
    decode = timeline["decode_seqs"] > 0
    kind = np.select([timeline["batch_tokens"] == 0, timeline["graph_batch"] > 0, prefill & decode, prefill],
                     ["swap only", "decode (graph)", "mixed", "prefill"], "decode (eager)")
    return pd.Series(kind, index=timeline.index)


def step_check(run: RealRun, profiles: Path | None = None) -> pd.DataFrame:
    """Every real step priced by the profiled cost model, by kind of step."""
    cfg = run.config
    cost, comm = profiled_cost(cfg, profiles, uses_graphs(run))
    t = run.timeline
    layout = cfg.engine.memory.layout
    parts = np.array([cost.step_parts(layout, json.loads(n), json.loads(c), d, ds, dm, si + so)
                      for n, c, d, ds, dm, si, so in zip(
                          t["prefill_new_tokens"], t["prefill_context_tokens"], t["decode_seqs"],
                          t["decode_context_sum"], t["decode_context_max"], t["swap_in_tokens"],
                          t["swap_out_tokens"])])
    if comm is not None:       # the collectives are device time
        rows, seqs = t["batch_tokens"].to_numpy(), t["batch_rows"].to_numpy()     # tokens, sequences
        parts[:, 1] += np.where(rows > 0, comm.step_s(rows, seqs), 0.0)
    frame = pd.DataFrame({
        "kind": step_kind(t), "measured_s": t["step_s"], "predicted_s": parts.sum(axis=1),
        "device_s": t["launch_s"] + t["wait_s"], "device_pred_s": parts[:, 1] + parts[:, 2],
    })
    frame["host_s"] = frame["measured_s"] - frame["device_s"]
    frame["host_pred_s"] = parts[:, 0]
    rows = []
    for kind in [*STEP_KINDS, "all"]:
        g = frame if kind == "all" else frame[frame["kind"] == kind]
        if g.empty:
            continue
        ape = ((g["predicted_s"] - g["measured_s"]).abs() / g["measured_s"]).replace(np.inf, np.nan)
        rows.append({"kind": kind, "steps": len(g), "measured_s": g["measured_s"].sum(),
                     "predicted_s": g["predicted_s"].sum(),
                     "error": rel_error(g["predicted_s"].sum(), g["measured_s"].sum()),
                     "step_ape_mean": float(ape.mean()),
                     "device_s": g["device_s"].sum(), "device_pred_s": g["device_pred_s"].sum(),
                     "host_s": g["host_s"].sum(), "host_pred_s": g["host_pred_s"].sum()})
    return pd.DataFrame(rows)


# ---- host speed: a diagnosis, not a prediction -------------------------------------
def host_speed(run: RealRun, cost) -> float:
    """How much slower this run's host issued eager steps than the profile's
    calibration runs: the median over the run's eager prefill steps of
    measured issue time over the calibrated one (1.0 without such steps)."""
    t = run.timeline
    eager = t[(t["graph_batch"] == 0) & (t["prefill_tokens"] > 0)]
    if cost.engine is None or eager.empty:
        return 1.0
    predicted = np.array([cost.engine.issue_s(True, d > 0) for d in eager["decode_seqs"]])
    return float(np.median(eager["launch_s"].to_numpy(float) / predicted))


def host_oracle(run: RealRun, profiles: Path | None = None) -> tuple[float, RunOutput]:
    """The simulation again with the engine's host-side terms (eager issue
    and per-step host time) scaled by this run's own ``host_speed``: how much
    of the gap is the host running faster or slower than during calibration.
    It reads the real run, so it is a diagnosis, never a fidelity figure."""
    cfg = run.config
    cost, comm = profiled_cost(cfg, profiles, uses_graphs(run))
    speed = host_speed(run, cost)
    if cost.engine is not None:
        e = cost.engine
        cost.engine = replace(e, issue_coef=tuple(c * speed for c in e.issue_coef),
                              host_coef=tuple(c * speed for c in e.host_coef))
    return speed, run_experiment(cfg, cost=_replica_cost(cost, comm))
