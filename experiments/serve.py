"""``pagesim serve``: run an experiment config on the real engine.

The config's requests (same workload, same seed as ``pagesim run``), batching
policy and KV manager are built exactly as the simulator builds them, then
``kernels.engine`` serves them on the GPU against wall-clock time. The output
is ``pagesim run``'s contract (config.yaml, requests, timeline with the real
step durations, summary, plots), so every plot and analysis reads a real run
unchanged; ``summary.json`` says ``"executor": "engine"`` and records the
engine's memory plan and versions, and the timeline adds where each step's
time went (``schedule_s, prepare_s, launch_s, wait_s, graph_batch``).

Checks before anything is allocated: one GPU of the config's hardware, one
replica, no horizon, 16-bit weights that fit, a KV cache that fits.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from experiments.config import ConfigError, ExperimentConfig
from experiments.progress import Progress
from experiments.runner import RunOutput, make_requests
from sim.memory.capacity import GB, build_kv_manager
from sim.metrics import prefix_cache_summary, requests_frame, summarize
from sim.policies import POLICIES
from sim.presets import resolve_hardware, resolve_model

SERVABLE_DTYPES = ("fp16", "bf16")
GPU_NAMES = {"h100-sxm": "H100", "h200": "H200", "a100-40gb": "A100", "a100-80gb": "A100"}


@dataclass(frozen=True)
class Device:
    """Where the engine runs: a CUDA GPU with the Triton kernels, or (tests)
    the CPU with the torch reference kernels."""

    kind: str = "cuda"
    backend: str = "triton"
    dtype: str = "bfloat16"
    use_graphs: bool = True
    warm_up_steps: int = 32


def check_servable(cfg: ExperimentConfig, device: Device) -> None:
    """One line naming the field for every config the engine cannot serve."""
    model = resolve_model(cfg.model)
    if cfg.engine.replicas != 1:
        raise ConfigError(f"engine.replicas: pagesim serve drives one GPU; allowed: 1 (got {cfg.engine.replicas})")
    par = cfg.engine.parallel
    if par.tensor != 1 or par.pipeline != 1:
        raise ConfigError(f"engine.parallel: pagesim serve drives one GPU; allowed: tensor 1, pipeline 1 "
                          f"(got tensor {par.tensor}, pipeline {par.pipeline})")
    if cfg.horizon_s is not None:
        raise ConfigError("horizon_s: pagesim serve runs every request to completion; allowed: null "
                          f"(got {cfg.horizon_s})")
    if model.dtype not in SERVABLE_DTYPES:
        raise ConfigError(f"model.dtype: the engine runs 16-bit weights; allowed: {', '.join(SERVABLE_DTYPES)} "
                          f"(got {model.dtype})")
    if not (16 <= model.head_dim <= 256 and model.head_dim & (model.head_dim - 1) == 0):
        raise ConfigError(f"model.head_dim: the attention kernels need a power of two in 16..256 "
                          f"(got {model.head_dim})")
    if device.kind != "cuda":
        return
    try:
        import torch
    except ImportError:
        raise ConfigError("pagesim serve needs torch and triton with a CUDA GPU "
                          "(pip install -e '.[kernels]' on the GPU machine)") from None
    if not torch.cuda.is_available():
        raise ConfigError("pagesim serve needs a CUDA GPU (torch.cuda.is_available() is False); "
                          "simulate the config with pagesim run")
    gpu = torch.cuda.get_device_name()
    expected = GPU_NAMES.get(cfg.hardware) if isinstance(cfg.hardware, str) else None
    if expected is not None and expected not in gpu:
        fits = [name for name, tag in GPU_NAMES.items() if tag in gpu]
        raise ConfigError(f"hardware: the config says {cfg.hardware} but this GPU is {gpu}; "
                          f"allowed here: {', '.join(fits) or 'an inline spec of this GPU'}")
    total = torch.cuda.get_device_properties(0).total_memory
    usable = total * cfg.engine.memory.gpu_memory_utilization
    if model.weight_bytes >= usable:
        raise ConfigError(f"model: {model.name} weights need {model.weight_bytes / GB:.1f} GB, {gpu} has "
                          f"{usable / GB:.1f} GB at engine.memory.gpu_memory_utilization="
                          f"{cfg.engine.memory.gpu_memory_utilization}")
    memory = cfg.engine.memory
    given = memory.num_blocks * memory.block_size if memory.num_blocks is not None else memory.num_tokens
    if given is not None and given * model.kv_bytes_per_token > usable - model.weight_bytes:
        field = "num_blocks" if memory.num_blocks is not None else "num_tokens"
        raise ConfigError(f"engine.memory.{field}: a KV cache of {given} tokens needs "
                          f"{given * model.kv_bytes_per_token / GB:.1f} GB; {gpu} has "
                          f"{(usable - model.weight_bytes) / GB:.1f} GB beside the weights")


def serve_experiment(cfg: ExperimentConfig, device: Device = Device(), progress: bool = False,
                     log: Callable[[str], None] | None = None) -> RunOutput:
    """Serve ``cfg`` on the real engine and build ``pagesim run``'s outputs."""
    check_servable(cfg, device)
    import torch

    from kernels.calibration.model import random_weights
    from kernels.engine import memory as engine_memory
    from kernels.engine.loop import serve
    from kernels.engine.runner import ModelRunner

    started = time.perf_counter()
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    dtype = getattr(torch, device.dtype)
    notes: list[str] = []
    weights = random_weights(model, dtype=dtype, device=device.kind, seed=cfg.seed)
    spec = cfg.engine.memory
    plan = None
    if spec.num_blocks is None and spec.num_tokens is None:
        if device.kind != "cuda":
            raise ConfigError("engine.memory: on the CPU give the cache size (num_tokens or num_blocks)")
        plan = engine_memory.plan(model, hardware, weights, max_batch_tokens=cfg.engine.batching.max_batch_tokens,
                                  gpu_memory_utilization=spec.gpu_memory_utilization, device=device.kind)
        spec = spec.model_copy(update={"num_tokens": plan.engine_kv_tokens})
        notes.append(f"KV cache: {plan.engine_kv_tokens} tokens from {plan.gpu_total_bytes / GB:.1f} GB "
                     f"(the simulator's preset gives {plan.simulator_kv_tokens})")
        if log:
            log(notes[-1])
    cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"memory": spec})})
    kv = build_kv_manager(spec, model, hardware)
    policy = POLICIES[cfg.engine.batching.policy](cfg.engine.batching, kv, model, cfg.record_token_times)
    runner = ModelRunner(model, weights, kv, device=device.kind, backend=device.backend, dtype=dtype,
                         max_batch_size=cfg.engine.batching.max_batch_size, use_graphs=device.use_graphs,
                         swap=cfg.engine.batching.preemption == "swap", seed=cfg.seed,
                         warm_up_steps=device.warm_up_steps)
    requests = make_requests(cfg)
    setup_s = time.perf_counter() - started
    bar = Progress(len(requests), cfg.name, "req", enabled=progress)
    with torch.inference_mode():
        result, steps = serve(requests, policy, runner, on_progress=bar.update if progress else None)
    bar.close()
    req_df = requests_frame(result)
    timeline = result.timeline.to_frame()
    for name, values in steps.items():
        timeline[name] = values
    summary = summarize(result, req_df, timeline, cfg.label(), cfg.steady_state)
    summary["cost_model"] = "real"
    summary["kv_total_slots_per_replica"] = int(kv.total_tokens)
    summary["prefix_cache"] = prefix_cache_summary([getattr(kv, "prefix_stats", {})])
    summary["executor"] = "engine"
    summary["engine"] = _provenance(device, runner, plan, setup_s)
    return RunOutput(cfg, result, req_df, timeline, summary, notes)


def _provenance(device: Device, runner, plan, setup_s: float) -> dict:
    import torch

    info = {"device": device.kind, "backend": device.backend, "dtype": device.dtype,
            "graph_batch_sizes": list(runner.graph_sizes), "setup_s": round(setup_s, 2),
            "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": os.environ.get("PAGESIM_COMMIT", "unknown"),
            "memory": plan.as_dict() if plan is not None else None}
    if device.kind == "cuda":
        import triton

        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "triton": triton.__version__}
    return info


def is_real_run(run_dir: Path) -> bool:
    import json

    try:
        return json.loads((Path(run_dir) / "summary.json").read_text()).get("executor") == "engine"
    except (OSError, ValueError):
        return False
