"""How many tokens of KV fit on a GPU, and the ``memory:`` section of a config.

Byte sizes in messages and in ``swap_space_gb`` are decimal gigabytes
(10**9 bytes), like the hardware presets' ``memory_bytes``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sim.fields import Count

from sim.memory.base import KVManager
from sim.presets import HardwareSpec, ModelSpec

GB = 10**9


def kv_capacity_tokens(model: ModelSpec, hardware: HardwareSpec, gpu_memory_utilization: float,
                       activation_reserve_bytes: int = 0) -> int:
    """Token slots of KV left on one GPU after the weights:
    ``floor((memory * utilization - weight bytes - reserve) / KV bytes per token)``."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if activation_reserve_bytes < 0:
        raise ValueError(f"activation_reserve_bytes must be >= 0, got {activation_reserve_bytes}")
    usable_bytes = hardware.memory_bytes * gpu_memory_utilization
    need_bytes = model.weight_bytes + activation_reserve_bytes
    tokens = int((usable_bytes - need_bytes) // model.kv_bytes_per_token)
    if tokens < 1:
        what = f"{model.name} weights need {model.weight_bytes / GB:.1f} GB"
        if activation_reserve_bytes:
            what += f" (+ {activation_reserve_bytes / GB:.1f} GB activation reserve)"
        raise ValueError(f"{what}, {hardware.name} has {usable_bytes / GB:.1f} GB at "
                         f"gpu_memory_utilization={gpu_memory_utilization}: no room for KV cache")
    return tokens


class MemorySpec(BaseModel):
    """``engine.memory`` in a config.

    The cache size is, first match wins: ``num_blocks`` (paged only) blocks,
    ``num_tokens`` token slots, or what ``kv_capacity_tokens`` derives from the
    model, the hardware and ``gpu_memory_utilization``. A contiguous cache has
    no blocks, so ``num_blocks`` with ``layout: contiguous`` is refused rather
    than silently converted: give ``num_tokens`` instead.
    """

    model_config = ConfigDict(extra="forbid")

    layout: Literal["paged", "contiguous"] = "paged"
    block_size: Count = 16
    """paged: tokens per block, a power of two in 1..256."""
    watermark: float = Field(0.01, ge=0.0, lt=1.0)
    """paged: fraction of blocks kept free when admitting a new sequence."""
    reservation: Literal["max", "pow2", "exact"] = "max"
    """contiguous: Orca-Max, Orca-Pow2 or Orca-Oracle reservation size."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    num_blocks: Count | None = None
    num_tokens: Count | None = None
    swap_space_gb: float = Field(4.0, ge=0.0)
    """paged: CPU memory for sequences preempted by swapping."""
    prefix_caching: bool = False
    """paged: reuse the KV of cached full blocks of a request's longest cached
    prefix (sim/memory/prefix.py); needs requests that say their content."""

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if not (1 <= value <= 256 and value & (value - 1) == 0):
            raise ValueError(f"block_size must be a power of two in 1..256 "
                             f"(8, 16, 32, 64, 128 are usual), got {value}")
        return value

    @model_validator(mode="after")
    def _one_size(self) -> MemorySpec:
        if self.num_blocks is not None and self.num_tokens is not None:
            raise ValueError("give num_blocks or num_tokens, not both")
        if self.num_blocks is not None and self.layout == "contiguous":
            raise ValueError("num_blocks applies to layout: paged only; "
                             "give a contiguous cache's size as num_tokens")
        if self.prefix_caching and self.layout != "paged":
            raise ValueError("prefix_caching: applies to layout: paged only (a contiguous reservation "
                             "belongs to one request and cannot be shared)")
        return self

    def cache_tokens(self, model: ModelSpec, hardware: HardwareSpec) -> int:
        """GPU token slots of the KV cache this spec describes."""
        if self.num_blocks is not None:
            return self.num_blocks * self.block_size
        if self.num_tokens is not None:
            return self.num_tokens
        return kv_capacity_tokens(model, hardware, self.gpu_memory_utilization)


def build_kv_manager(spec: MemorySpec, model: ModelSpec, hardware: HardwareSpec) -> KVManager:
    """The manager ``spec.layout`` names, sized for ``model`` on ``hardware``."""
    from sim.memory import MANAGERS   # the package imports this module

    return MANAGERS[spec.layout].from_spec(spec, model, spec.cache_tokens(model, hardware))
