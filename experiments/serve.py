"""``pagesim serve``: run an experiment config on the real engine.

The config's requests (same workload, same seed as ``pagesim run``), batching
policy and KV manager are built exactly as the simulator builds them, then
``kernels.engine`` serves them on the GPU against wall-clock time. The output
is ``pagesim run``'s contract (config.yaml, requests, timeline with the real
step durations, summary, plots), so every plot and analysis reads a real run
unchanged; ``summary.json`` says ``"executor": "engine"`` and records the
engine's memory plan and versions, and the timeline adds where each step's
time went (``schedule_s, prepare_s, launch_s, wait_s, graph_batch``).

``engine.parallel.tensor: T`` serves one replica on ``T`` GPUs: this
process is rank 0 and runs the engine on its shard, ``T - 1`` spawned ranks
mirror its steps on theirs (``kernels/engine/tensor_parallel.py``); the KV
cache is sized for one GPU's shard, as the simulator sizes it
(``sim.parallel.memory_shard``).

Checks before anything is allocated: ``T`` GPUs of the config's hardware,
one replica, no pipeline stages, no horizon, 16-bit weights that fit, a KV
cache that fits.
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
from sim.parallel import memory_shard
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
        raise ConfigError(f"engine.replicas: pagesim serve drives one replica; allowed: 1 (got {cfg.engine.replicas})")
    par = cfg.engine.parallel
    if par.pipeline != 1:
        raise ConfigError(f"engine.parallel.pipeline: pagesim serve runs no pipeline stages; allowed: 1 "
                          f"(got {par.pipeline})")
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
    have = torch.cuda.device_count()
    if par.tensor > have:
        raise ConfigError(f"engine.parallel.tensor={par.tensor} needs {par.tensor} GPUs, found {have}; "
                          f"allowed here: {', '.join(str(t) for t in range(1, have + 1))}")
    gpu = torch.cuda.get_device_name()
    expected = GPU_NAMES.get(cfg.hardware) if isinstance(cfg.hardware, str) else None
    if expected is not None and expected not in gpu:
        fits = [name for name, tag in GPU_NAMES.items() if tag in gpu]
        raise ConfigError(f"hardware: the config says {cfg.hardware} but this GPU is {gpu}; "
                          f"allowed here: {', '.join(fits) or 'an inline spec of this GPU'}")
    total = min(torch.cuda.get_device_properties(i).total_memory for i in range(par.tensor))
    usable = total * cfg.engine.memory.gpu_memory_utilization
    model = memory_shard(model, par.value())          # what one GPU holds
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
    tensor = cfg.engine.parallel.tensor
    if tensor == 1:
        return _serve(cfg, device, device.kind, None, progress, log)
    from kernels.engine.tensor_parallel import serving_group

    with serving_group(tensor, cuda=device.kind == "cuda") as (rank_device, channel):
        return _serve(cfg, device, rank_device, channel, progress, log)


def _serve(cfg: ExperimentConfig, device: Device, rank_device: str, channel, progress: bool,
           log: Callable[[str], None] | None) -> RunOutput:
    """The engine on rank 0 (the only rank with T = 1); ``channel`` tells
    the other ranks what to mirror."""
    import torch

    from kernels.distributed.tp import random_shard_weights
    from kernels.engine import memory as engine_memory
    from kernels.engine.loop import serve
    from kernels.engine.runner import PoolShape
    from kernels.engine.tensor_parallel import RunnerSpec

    started = time.perf_counter()
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    par = cfg.engine.parallel.value()
    held = memory_shard(model, par)          # the weights and KV heads of one GPU
    notes: list[str] = []
    weights = random_shard_weights(model, 0, par.tensor, dtype=getattr(torch, device.dtype), device=rank_device,
                                   seed=cfg.seed)
    spec = cfg.engine.memory
    plan = None
    if spec.num_blocks is None and spec.num_tokens is None:
        if device.kind != "cuda":
            raise ConfigError("engine.memory: on the CPU give the cache size (num_tokens or num_blocks)")
        plan = engine_memory.plan(held, hardware, weights, max_batch_tokens=cfg.engine.batching.max_batch_tokens,
                                  gpu_memory_utilization=spec.gpu_memory_utilization, device=rank_device)
        spec = spec.model_copy(update={"num_tokens": plan.engine_kv_tokens})
        notes.append(f"KV cache: {plan.engine_kv_tokens} tokens from {plan.gpu_total_bytes / GB:.1f} GB "
                     f"(the simulator's preset gives {plan.simulator_kv_tokens})")
        if log:
            log(notes[-1])
    cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"memory": spec})})
    kv = build_kv_manager(spec, held, hardware)
    policy = POLICIES[cfg.engine.batching.policy](cfg.engine.batching, kv, model, cfg.record_token_times)
    runner_spec = RunnerSpec(model, PoolShape.of(kv), par.tensor, cfg.seed, device.dtype, device.backend,
                             cfg.engine.batching.max_batch_size, device.use_graphs,
                             cfg.engine.batching.preemption == "swap", device.warm_up_steps)
    if channel is not None:
        channel.send("setup", runner_spec)
    runner = runner_spec.runner(0, rank_device, weights, kv, mirror=None if channel is None else channel.send)
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
    collectives = "none" if par.is_single else ("nccl" if device.kind == "cuda" else "gloo")
    summary["parallel"] = {"tensor": par.tensor, "pipeline": par.pipeline, "gpus_per_replica": par.gpus,
                           "gpus": cfg.gpus, "communication": "none" if par.is_single else f"real ({collectives})"}
    summary["kv_total_slots_per_replica"] = int(kv.total_tokens)
    summary["prefix_cache"] = prefix_cache_summary([getattr(kv, "prefix_stats", {})])
    summary["executor"] = "engine"
    summary["engine"] = _provenance(device, runner, plan, setup_s) | {"tensor": par.tensor,
                                                                     "collectives": collectives}
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
