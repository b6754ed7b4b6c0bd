"""How much KV cache the engine gives itself, derived the way the simulator
derives it (``sim.memory.capacity.kv_capacity_tokens``): the device's memory
times ``gpu_memory_utilization``, less the weights and an activation reserve,
over the model's KV bytes per token. The engine measures what the simulator
assumes: the device's real memory, the weights it allocated, and the peak
activations of the largest step it can be asked to run (a prefill of
``max_batch_tokens`` tokens, as vLLM's profiling run does).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, replace

import numpy as np
import torch

from kernels.calibration.cache import PagedKVCache, place
from kernels.calibration.inputs import Composition, prepare_step
from kernels.calibration.model import Transformer, Weights
from sim.memory.capacity import kv_capacity_tokens
from sim.presets import HardwareSpec, ModelSpec


@dataclass(frozen=True)
class EngineMemory:
    gpu_total_bytes: int
    weight_bytes: int            # allocated by the engine
    activation_bytes: int        # peak above the weights during the largest step
    engine_kv_tokens: int        # what the engine derives from the above
    simulator_kv_tokens: int     # what the simulator derives from the hardware preset

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def weights_bytes(weights: Weights) -> int:
    tensors = [weights.embed, weights.lm_head, *weights.final_norm]
    if weights.positions is not None:
        tensors.append(weights.positions)
    for layer in weights.layers:
        for pair in (layer.attn_norm, layer.qkv, layer.out, layer.mlp_norm, layer.up, layer.down):
            tensors.extend(pair)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def activation_peak_bytes(model: ModelSpec, weights: Weights, max_batch_tokens: int, device) -> int:
    """Peak memory above what is allocated now while one eager prefill step of
    ``max_batch_tokens`` tokens runs (prompts of at most the model's context)."""
    n = max(1, max_batch_tokens)
    prompts = [model.max_context_tokens] * (n // model.max_context_tokens)
    if n % model.max_context_tokens:
        prompts.append(n % model.max_context_tokens)
    comp = Composition(tuple(prompts), (0,) * len(prompts), ())
    cache = PagedKVCache(model, -(-n // 16) + len(prompts), block_size=16, num_sets=1, device=device,
                         init="zeros", dtype=weights.embed.dtype)
    inputs = prepare_step(comp, cache, place(cache, prompts), np.zeros(n, np.int64), device, model)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    Transformer(model, weights).step(inputs, cache)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del cache, inputs
    torch.cuda.empty_cache()
    return int(peak)


def plan(model: ModelSpec, hardware: HardwareSpec, weights: Weights, *, max_batch_tokens: int,
         gpu_memory_utilization: float, device) -> EngineMemory:
    total = int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    allocated = weights_bytes(weights)
    activations = activation_peak_bytes(model, weights, max_batch_tokens, device)
    reserve = activations + max(0, allocated - model.weight_bytes)
    engine = kv_capacity_tokens(model, replace(hardware, memory_bytes=total), gpu_memory_utilization,
                                activation_reserve_bytes=reserve)
    simulator = kv_capacity_tokens(model, hardware, gpu_memory_utilization)
    return EngineMemory(total, allocated, activations, engine, simulator)


def release_device_memory() -> None:
    """Free what a finished run held before the next one plans its memory:
    a runner and its KV manager refer to each other (the fork hook), so only
    a collection frees them, and then the allocator's cache is returned."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
