"""Model geometries and hardware, as named presets (gpt-fast's ``from_name``).

Numbers come from DESIGN.md ("Facts to build on") and the public model cards.
A custom model or device is an inline mapping with the same fields.

The specs are plain frozen dataclasses with no dependency beyond the standard
library, so the GPU side (the profiler and the real engine) imports exactly
these presets. Each checks its own fields on construction; the config edge
(``experiments/config.py``) turns a failed check into one line naming the
field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
Dtype = Literal["fp32", "fp16", "bf16", "fp8"]
MLPS = ("gated_silu", "relu")


def _require_positive(spec, names: tuple[str, ...], kind: type) -> None:
    for name in names:
        value = getattr(spec, name)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and (kind is float or float(value).is_integer()) and math.isfinite(value) and value > 0)
        if not ok:
            what = "integer" if kind is int else "number"
            raise ValueError(f"{name}: must be a positive {what} (got {value!r})")


def _require_choice(value, name: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)} (got {value!r})")


@dataclass(frozen=True)
class ModelSpec:
    """Decoder-only transformer geometry."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    name: str = "custom"
    max_context_tokens: int = 4096
    mlp: Literal["gated_silu", "relu"] = "gated_silu"
    dtype: Dtype = "fp16"

    def __post_init__(self) -> None:
        _require_positive(self, ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                                 "ffn_size", "vocab_size", "max_context_tokens"), int)
        _require_choice(self.mlp, "mlp", MLPS)
        _require_choice(self.dtype, "dtype", tuple(DTYPE_BYTES))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads: must divide num_heads={self.num_heads} "
                             f"(got {self.num_kv_heads})")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        mats = 3 if self.mlp == "gated_silu" else 2
        return attn + mats * self.hidden_size * self.ffn_size

    @property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        return self.num_layers * self.params_per_layer + 2 * embed  # input embedding + LM head

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.kv_size * self.dtype_bytes


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator. Bandwidths in bytes/s, FLOP/s dense (no sparsity)."""

    memory_bytes: int
    peak_flops: float                      # dense 16-bit tensor-core FLOP/s
    mem_bandwidth_Bps: float               # spec HBM bandwidth
    name: str = "custom"
    achievable_bandwidth_frac: float = 0.9
    achievable_flops_frac: float = 0.8
    pcie_bandwidth_Bps: float = 25e9       # host<->device, one direction, achieved
    num_sms: int = 132

    def __post_init__(self) -> None:
        _require_positive(self, ("memory_bytes", "num_sms"), int)
        _require_positive(self, ("peak_flops", "mem_bandwidth_Bps", "pcie_bandwidth_Bps",
                                 "achievable_bandwidth_frac", "achievable_flops_frac"), float)
        for name in ("achievable_bandwidth_frac", "achievable_flops_frac"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name}: must be in (0, 1] (got {getattr(self, name)!r})")


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec(name="llama-2-7b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32,
                  head_dim=128, ffn_size=11008, vocab_size=32000, max_context_tokens=4096),
        ModelSpec(name="llama-2-13b", num_layers=40, hidden_size=5120, num_heads=40, num_kv_heads=40,
                  head_dim=128, ffn_size=13824, vocab_size=32000, max_context_tokens=4096),
        ModelSpec(name="llama-3-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  head_dim=128, ffn_size=14336, vocab_size=128256, max_context_tokens=8192, dtype="bf16"),
        ModelSpec(name="opt-13b", num_layers=40, hidden_size=5120, num_heads=40, num_kv_heads=40,
                  head_dim=128, ffn_size=20480, vocab_size=50272, max_context_tokens=2048, mlp="relu"),
        ModelSpec(name="llama-2-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  head_dim=128, ffn_size=28672, vocab_size=32000, max_context_tokens=4096),
    ]
}

HARDWARE: dict[str, HardwareSpec] = {
    h.name: h
    for h in [
        # 3.35 TB/s spec; ~3.0 TB/s measured device-to-device copy on the lent H100 (DESIGN.md)
        HardwareSpec(name="h100-sxm", memory_bytes=80 * 10**9, peak_flops=989e12, mem_bandwidth_Bps=3.35e12,
                     pcie_bandwidth_Bps=50e9, num_sms=132),
        HardwareSpec(name="h200", memory_bytes=141 * 10**9, peak_flops=989e12, mem_bandwidth_Bps=4.8e12,
                     pcie_bandwidth_Bps=50e9, num_sms=132),
        HardwareSpec(name="a100-40gb", memory_bytes=40 * 10**9, peak_flops=312e12, mem_bandwidth_Bps=1.555e12,
                     pcie_bandwidth_Bps=25e9, num_sms=108),
        HardwareSpec(name="a100-80gb", memory_bytes=80 * 10**9, peak_flops=312e12, mem_bandwidth_Bps=2.04e12,
                     pcie_bandwidth_Bps=25e9, num_sms=108),
    ]
}


def resolve_model(value: str | dict | ModelSpec) -> ModelSpec:
    """A preset name or an inline geometry."""
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; presets: {', '.join(MODELS)}")
        return MODELS[value]
    return ModelSpec(**value)


def resolve_hardware(value: str | dict | HardwareSpec) -> HardwareSpec:
    if isinstance(value, HardwareSpec):
        return value
    if isinstance(value, str):
        if value not in HARDWARE:
            raise ValueError(f"unknown hardware {value!r}; presets: {', '.join(HARDWARE)}")
        return HARDWARE[value]
    return HardwareSpec(**value)
