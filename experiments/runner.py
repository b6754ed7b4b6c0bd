"""Build a simulation from a config, run it, write the output contract."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from experiments.atomic import umask
from experiments.config import ExperimentConfig, resolved_dict
from sim.cost import CostModel, build_cost_model
from sim.driver import simulate
from sim.result import SimResult
from sim.memory.capacity import build_kv_manager
from sim.metrics import requests_frame, summarize
from sim.policies import POLICIES
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


def make_requests(cfg: ExperimentConfig) -> list[Request]:
    workload = generate(cfg.workload, np.random.default_rng(cfg.seed))
    return [
        Request(request_id=i, arrival_s=float(a), prompt_tokens=int(p), output_tokens=int(o))
        for i, (a, p, o) in enumerate(zip(workload.arrival_s, workload.prompt_tokens,
                                         workload.output_tokens))
    ]


def run_experiment(cfg: ExperimentConfig, progress: bool = False,
                   log: Callable[[str], None] | None = None, cost: CostModel | None = None) -> RunOutput:
    """Build and simulate ``cfg``. ``log`` receives one-line notes (which cost
    model is in use, rejected requests) as soon as they are known. ``cost``,
    if given, prices every replica's steps instead of the config's cost model."""
    model = resolve_model(cfg.model)
    hardware = resolve_hardware(cfg.hardware)
    requests = make_requests(cfg)
    engine = cfg.engine
    policy_cls = POLICIES[engine.batching.policy]
    notes: list[str] = []
    policies, costs = [], []
    for _ in range(engine.replicas):
        kv = build_kv_manager(engine.memory, model, hardware)
        policies.append(policy_cls(engine.batching, kv, model, cfg.record_token_times))
        if cost is None:
            built, note = build_cost_model(engine.cost_model, model, hardware, engine.batching.max_batch_size)
        else:
            built, note = cost, f"cost model: {cost.name} (given)"
        costs.append(built)
    notes.append(note)
    if log:
        log(note)
    bar = progress_bar(len(requests), cfg.name) if progress else None
    result = simulate(
        requests, policies, costs, ROUTERS[engine.router](), horizon_s=cfg.horizon_s,
        fast_forward=cfg.fast_forward, on_progress=bar.update if bar else None,
        timeline_max_rows=cfg.timeline_max_rows,
    )
    if bar:
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
    summary = summarize(result, req_df, timeline, cfg.label())
    summary["cost_model"] = costs[0].name
    summary["kv_total_slots_per_replica"] = int(policies[0].kv.total_tokens)
    return RunOutput(cfg, result, req_df, timeline, summary, notes)


def progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="req", file=sys.stderr, leave=False,
                mininterval=0.5, disable=None)


def write_outputs(out: RunOutput, out_dir: Path, csv: bool = False, plots: bool = True) -> None:
    """Write DIR/{config.yaml, requests.parquet, timeline.parquet, summary.json,
    plots/} into a fresh sibling temp directory, then swap it into place, so
    a failed or interrupted run never leaves a half-written DIR."""
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
