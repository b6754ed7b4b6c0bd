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
    tied_embeddings: bool = False
    """The LM head reuses the input embedding matrix (OPT): its weights count once."""

    def __post_init__(self) -> None:
        _require_positive(self, ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                                 "ffn_size", "vocab_size", "max_context_tokens"), int)
        _require_choice(self.mlp, "mlp", MLPS)
        _require_choice(self.dtype, "dtype", tuple(DTYPE_BYTES))
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(f"tied_embeddings: must be true or false (got {self.tied_embeddings!r})")
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
        copies = 1 if self.tied_embeddings else 2                  # input embedding, LM head
        return self.num_layers * self.params_per_layer + copies * embed

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
    nvlink_bandwidth_Bps: float = 450e9    # GPU<->GPU line rate, one direction (NVLink 4: 18 x 25 GB/s)
    achievable_nvlink_frac: float = 0.82   # NCCL's protocol overhead: ~370 of 450 GB/s
    collective_latency_s: float = 6e-6     # one small-message all-reduce (NVSwitch: one hop, any GPU count)

    def __post_init__(self) -> None:
        _require_positive(self, ("memory_bytes", "num_sms"), int)
        _require_positive(self, ("peak_flops", "mem_bandwidth_Bps", "pcie_bandwidth_Bps",
                                 "achievable_bandwidth_frac", "achievable_flops_frac", "nvlink_bandwidth_Bps",
                                 "achievable_nvlink_frac", "collective_latency_s"), float)
        for name in ("achievable_bandwidth_frac", "achievable_flops_frac", "achievable_nvlink_frac"):
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
                  head_dim=128, ffn_size=20480, vocab_size=50272, max_context_tokens=2048, mlp="relu",
                  tied_embeddings=True),
        ModelSpec(name="llama-2-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  head_dim=128, ffn_size=28672, vocab_size=32000, max_context_tokens=4096),
        # Meta-Llama-3-70B config.json: llama-2-70b's blocks, a 128,256-token vocabulary, 8K context
        ModelSpec(name="llama-3-70b", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  head_dim=128, ffn_size=28672, vocab_size=128256, max_context_tokens=8192, dtype="bf16"),
    ]
}

MIB = 2**20

# memory_bytes is the device memory the driver reports (nvidia-smi's "Total",
# in MiB), what a serving engine sizes its cache from -- not the marketing
# "80 GB" (decimal) figure. The card names count GiB of HBM: an "80GB" card
# has 80 GiB of stacks, of which the driver shows 81,559 MiB (H100 SXM) or
# 81,920 MiB (A100 80GB).
#   H100 SXM5 80GB: 81,559 MiB (nvidia-smi on H100 80GB HBM3)
#   H200 141GB:     143,771 MiB (nvidia-smi on the lent H200, /work/.library/device/KINDS.md);
#                   the CUDA runtime there reports 150,109,880,320 B usable (summary.json of
#                   every run in experiments/results/fidelity/h200/runs, engine.memory.gpu_total_bytes)
#   A100 40GB:      40,960 MiB; A100 80GB: 81,920 MiB (nvidia-smi)
#
# GPU-to-GPU links (tensor/pipeline parallelism, sim/parallel.py), SXM boards on NVSwitch:
#   NVLink 4 (H100, H200): 900 GB/s bidirectional = 450 GB/s per direction (NVIDIA H100/H200
#   datasheets); NVLink 3 (A100 SXM): 600 GB/s = 300 GB/s per direction (A100 datasheet).
#   NCCL's ring protocol reaches ~370 GB/s bus bandwidth of the 450 (its maintainer, NVIDIA/nccl-tests
#   issue #212), hence achievable_nvlink_frac 0.82. A small all-reduce on 2 H100s with CUDA graphs
#   takes ~6 us (NVIDIA/nccl issue #1259); with every GPU one NVSwitch hop away, one-shot
#   all-reduces (vLLM's custom all-reduce) keep small messages near that at 4 and 8 GPUs.
#   Assumptions until measured on several GPUs (`pagesim calibrate --tp` on a multi-GPU machine).
HARDWARE: dict[str, HardwareSpec] = {
    h.name: h
    for h in [
        # 3.35 TB/s spec; ~3.0 TB/s measured device-to-device copy on the lent H100 (DESIGN.md)
        HardwareSpec(name="h100-sxm", memory_bytes=81_559 * MIB, peak_flops=989e12, mem_bandwidth_Bps=3.35e12,
                     pcie_bandwidth_Bps=50e9, num_sms=132),
        HardwareSpec(name="h200", memory_bytes=143_771 * MIB, peak_flops=989e12, mem_bandwidth_Bps=4.8e12,
                     pcie_bandwidth_Bps=50e9, num_sms=132),
        HardwareSpec(name="a100-40gb", memory_bytes=40_960 * MIB, peak_flops=312e12, mem_bandwidth_Bps=1.555e12,
                     pcie_bandwidth_Bps=25e9, num_sms=108, nvlink_bandwidth_Bps=300e9),
        HardwareSpec(name="a100-80gb", memory_bytes=81_920 * MIB, peak_flops=312e12, mem_bandwidth_Bps=2.04e12,
                     pcie_bandwidth_Bps=25e9, num_sms=108, nvlink_bandwidth_Bps=300e9),
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
