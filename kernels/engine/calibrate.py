"""The engine phase of ``pagesim calibrate``: short serving runs whose
per-step measurements (``engine_steps.csv``) let the profiled cost model price
what the engine adds to GPU time -- CUDA-graph buckets, eager kernel issue,
the host's own work per step (sim/cost/profiled.py fits them on load).

The runs are the profile's own calibration data: their workload (seed,
lengths, rates) is fixed here and differs from any experiment a fidelity
report judges, so the cost model is never fitted on the runs it is judged on.
They cover what serving produces: continuous batching over paged memory with
mixed, prefill-only and decode steps of every graph bucket, contiguous
reservations, and static batches (padded prefills, padded decodes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kernels.calibration.model import random_weights
from kernels.engine.loop import serve
from kernels.engine.memory import release_device_memory
from kernels.engine.runner import ModelRunner
from sim.memory.contiguous import ContiguousKVManager
from sim.memory.paged import PagedKVManager
from sim.policies import POLICIES, BatchingSpec
from sim.presets import ModelSpec
from sim.request import Request

SEED_OFFSET = 7919          # calibration workloads never share a seed with an experiment's


@dataclass(frozen=True)
class CalibrationRun:
    policy: str
    layout: str
    num_requests: int
    rate_rps: float | None        # None: all at once
    prompt_mean: float
    output_mean: float
    output_max: int
    max_batch_size: int = 256


FULL = (
    CalibrationRun("continuous", "paged", 240, 30.0, 200, 120, 512),
    CalibrationRun("continuous", "contiguous", 120, 60.0, 120, 60, 256),
    CalibrationRun("static", "paged", 96, None, 150, 40, 160, max_batch_size=48),
)
QUICK = tuple(CalibrationRun(r.policy, r.layout, max(8, r.num_requests // 8), r.rate_rps, r.prompt_mean / 4,
                             r.output_mean / 4, r.output_max // 4, r.max_batch_size) for r in FULL)


def _requests(run: CalibrationRun, model: ModelSpec, rng: np.random.Generator) -> list[Request]:
    """Poisson arrivals (or a burst), lognormal lengths (sigma 1) with the given means."""
    n = run.num_requests
    arrivals = np.zeros(n) if run.rate_rps is None else np.cumsum(rng.exponential(1 / run.rate_rps, n))
    sigma = 1.0
    prompt = np.clip(np.round(rng.lognormal(np.log(run.prompt_mean) - sigma ** 2 / 2, sigma, n)), 1,
                     model.max_context_tokens // 2)
    output = np.clip(np.round(rng.lognormal(np.log(run.output_mean) - sigma ** 2 / 2, sigma, n)), 1,
                     min(run.output_max, model.max_context_tokens // 2))
    return [Request(i, float(a), int(p), int(o)) for i, (a, p, o) in enumerate(zip(arrivals, prompt, output))]


def _kv(layout: str, model: ModelSpec, num_tokens: int, block_size: int):
    if layout == "paged":
        return PagedKVManager(num_tokens // block_size, block_size)
    return ContiguousKVManager(num_tokens, "exact", model.max_context_tokens)


def calibrate_engine(model: ModelSpec, *, seed: int = 0, device: str = "cuda", backend: str = "triton",
                     dtype=torch.bfloat16, quick: bool = False, num_tokens: int = 131072,
                     block_size: int = 16, log=print) -> pd.DataFrame:
    """Serve the calibration runs; one row per step (``ENGINE_STEP_COLUMNS``
    of sim/cost/profiled.py and the rest of the timeline)."""
    weights = random_weights(model, dtype=dtype, device=device, seed=seed)
    rng = np.random.default_rng(seed + SEED_OFFSET)
    frames = []
    for i, run in enumerate(QUICK if quick else FULL):
        started = time.perf_counter()
        kv = _kv(run.layout, model, num_tokens, block_size)
        spec = BatchingSpec(policy=run.policy, max_batch_size=run.max_batch_size, max_batch_tokens=8192)
        policy = POLICIES[run.policy](spec, kv, model)
        runner = ModelRunner(model, weights, kv, device=device, backend=backend, dtype=dtype,
                             max_batch_size=run.max_batch_size, seed=seed)
        with torch.inference_mode():
            result, steps = serve(_requests(run, model, rng), policy, runner)
        frame = result.timeline.to_frame()
        for name, values in steps.items():
            frame[name] = values
        frame.insert(0, "layout", run.layout)
        frame.insert(0, "run", f"{i}:{run.policy}+{run.layout}")
        frames.append(frame)
        log(f"  engine run {i} ({run.policy}+{run.layout}, {run.num_requests} requests): {len(frame)} steps, "
            f"{sum(frame['graph_batch'] > 0)} graphed, in {time.perf_counter() - started:.1f} s")
        del runner, policy, kv
        release_device_memory()
    return pd.concat(frames, ignore_index=True)


def write_engine_steps(model: ModelSpec, dest: Path, **kwargs) -> Path:
    """Run ``calibrate_engine`` and write ``dest/engine_steps.csv``."""
    frame = calibrate_engine(model, **kwargs)
    path = Path(dest) / "engine_steps.csv"
    frame.to_csv(path, index=False)
    return path
