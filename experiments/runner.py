"""Build a simulation from a config, run it, write the output contract."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from experiments.atomic import umask
from experiments.outputs import write_marker
from experiments.progress import Progress, stage
from experiments.config import ExperimentConfig, resolved_dict
from sim.cost import CostModel, build_cost_model
from sim.driver import simulate
from sim.result import SimResult
from sim.memory.capacity import build_kv_manager
from sim.metrics import prefix_cache_summary, requests_frame, summarize
from sim.policies import POLICIES
from sim.parallel import CommModel, ParallelCostModel, compute_shard, memory_shard, read_collectives
from sim.presets import resolve_hardware, resolve_model
from sim.request import Request
from sim.router import ROUTERS
from workloads.spec import generate


@dataclass
class RunOutput:
    config: ExperimentConfig
    result: SimResult
    requests: pd.DataFrame
    timeline: pd.DataFrame
    summary: dict
    notes: list[str]


LARGE_WORKLOAD = 200_000      # requests; above this, preparation says what it is doing
BYTES_PER_REQUEST = 600       # peak RSS per simulated request (docs/results.md, scaling table: ~520)
BASE_BYTES = 200 * 2**20      # interpreter, numpy, pandas, pydantic


def check_memory(cfg: ExperimentConfig, available: int | None = None) -> None:
    """Refuse, before allocating anything, a workload whose requests cannot
    all be held in this machine's memory (a trace is bounded by its file)."""
    n = cfg.workload.num_requests
    if n is None or cfg.workload.trace is not None:
        return
    need = BASE_BYTES + n * BYTES_PER_REQUEST
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise ValueError(f"workload.num_requests: {n:,} requests need about {_gb(need)} of memory to simulate "
                         f"({BYTES_PER_REQUEST} bytes each); this machine has {_gb(available)} available: "
                         f"simulate at most {max(1, (available - BASE_BYTES) // BYTES_PER_REQUEST):,}")


def available_memory() -> int | None:
    """Bytes the system can give this process now (Linux MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def make_requests(cfg: ExperimentConfig, progress: bool = False) -> list[Request]:
    n = cfg.workload.num_requests
    if progress and (n or 0) >= LARGE_WORKLOAD:
        stage(f"{cfg.name}: generating the workload ({n:,} requests)")
    workload = generate(cfg.workload, np.random.default_rng(cfg.seed))
    arrivals = workload.arrival_s.tolist()
    prompts = workload.prompt_tokens.tolist()
    outputs = workload.output_tokens.tolist()
    segments = workload.segments or [None] * len(arrivals)
    sampling = cfg.workload.sampling
    num_seqs = sampling.num_seqs if sampling is not None else 1
    beam = sampling is not None and sampling.beam_width > 1
    bar = Progress(len(arrivals), f"{cfg.name}: building requests", "req",
                   enabled=progress and len(arrivals) >= LARGE_WORKLOAD)
    requests = []
    chunk = 100_000
    for start in range(0, len(arrivals), chunk):
        stop = min(start + chunk, len(arrivals))
        requests.extend(Request(request_id=i, arrival_s=arrivals[i], prompt_tokens=prompts[i],
                                output_tokens=outputs[i], segments=segments[i], num_seqs=num_seqs,
                                beam=beam)
                        for i in range(start, stop))
        bar.update(stop - start)
    bar.close()
    return requests


def build_replica_cost_model(cfg: ExperimentConfig) -> tuple[CostModel, str]:
    """The cost model that prices one replica's steps -- the config's cost
    model on what one GPU computes, plus communication when the replica spans
    several GPUs -- and a one-line note saying which model prices the run and why."""
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    par = cfg.engine.parallel.value()
    inner, note = build_cost_model(cfg.engine.cost_model, compute_shard(model, par), hardware,
                                   cfg.engine.batching.max_batch_size)
    if par.is_single:
        return inner, note
    comm_csv = comm_table_path(hardware.name)
    comm = CommModel(model, hardware, par, read_collectives(comm_csv, par.tensor), str(comm_csv))
    return ParallelCostModel(inner, comm), f"{note}; communication: {comm.note}"


def comm_table_path(hardware_name: str):
    """``kernels/profiles/<hardware>/comm.csv``: measured collectives, if any."""
    from kernels import PROFILES_DIR

    return PROFILES_DIR / hardware_name / "comm.csv"


def run_experiment(cfg: ExperimentConfig, progress: bool = False,
                   log: Callable[[str], None] | None = None, cost: CostModel | None = None) -> RunOutput:
    """Build and simulate ``cfg``. ``log`` receives one-line notes (which cost
    model is in use, rejected requests) as soon as they are known. ``cost``,
    if given, prices every replica's steps instead of the config's cost model."""
    check_memory(cfg)
    model = resolve_model(cfg.model)
    hardware = resolve_hardware(cfg.hardware)
    requests = make_requests(cfg, progress)
    engine = cfg.engine
    par = engine.parallel.value()
    policy_cls = POLICIES[engine.batching.policy]
    notes: list[str] = []
    policies = []
    contents = [r.segments for r in requests if r.segments is not None] if engine.memory.prefix_caching else []
    for _ in range(engine.replicas):
        kv = build_kv_manager(engine.memory, memory_shard(model, par), hardware)
        if contents:      # blocks of content only one request holds need no lookup key
            kv.expect_content(contents)
        policies.append(policy_cls(engine.batching, kv, model, cfg.record_token_times))
    # replicas are identical: one cost model (stateless but for its caches) prices them all
    if cost is None:
        cost, note = build_replica_cost_model(cfg)
    else:
        note = f"cost model: {cost.name} (given)"
    costs = [cost] * engine.replicas
    notes.append(note)
    if log:
        log(note)
    bar = Progress(len(requests), cfg.name, "req", enabled=progress)
    result = simulate(
        requests, policies, costs, ROUTERS[engine.router](), horizon_s=cfg.horizon_s,
        fast_forward=cfg.fast_forward, on_progress=bar.update if progress else None,
        timeline_max_rows=cfg.timeline_max_rows,
    )
    bar.close()
    req_df = requests_frame(result)
    rejected = req_df[req_df["status"] == "rejected"]
    if len(rejected):
        first = rejected.iloc[0]
        notes.append(f"{len(rejected)} of {len(req_df)} requests rejected (see requests.parquet); "
                     f"e.g. request {first['request_id']}: {first['reason']}")
        if log:
            log(notes[-1])
    timeline = result.timeline.to_frame()
    summary = summarize(result, req_df, timeline, cfg.label(), cfg.steady_state)
    summary["cost_model"] = costs[0].name
    summary["parallel"] = {"tensor": par.tensor, "pipeline": par.pipeline, "gpus_per_replica": par.gpus,
                           "gpus": cfg.gpus,
                           "communication": "none" if par.is_single else
                           getattr(getattr(costs[0], "comm", None), "note", "in the given cost model")}
    summary["kv_total_slots_per_replica"] = int(policies[0].kv.total_tokens)
    summary["prefix_cache"] = prefix_cache_summary([getattr(p.kv, "prefix_stats", {}) for p in policies])
    return RunOutput(cfg, result, req_df, timeline, summary, notes)


def write_outputs(out: RunOutput, out_dir: Path, csv: bool = False, plots: bool = True) -> None:
    """Write DIR/{config.yaml, requests.parquet, timeline.parquet, summary.json,
    plots/, .pagesim} into a fresh sibling temp directory, then swap it into
    place, so a failed or interrupted run never leaves a half-written DIR.
    The caller checked that DIR may be replaced (``experiments.outputs``)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~umask())       # mkdtemp makes it private; results are not
    try:
        (tmp / "config.yaml").write_text(yaml.safe_dump(resolved_dict(out.config), sort_keys=False))
        out.requests.to_parquet(tmp / "requests.parquet", index=False)
        if csv:
            out.requests.to_csv(tmp / "requests.csv", index=False)
        out.timeline.to_parquet(tmp / "timeline.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(out.summary, indent=2, sort_keys=True) + "\n")
        write_marker(tmp, "run")
        if plots:
            from experiments.plots import plot_run

            plot_run(tmp)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "d")
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
