"""``cost_model:`` in a config: which cost model prices a step, and its knobs.

One pydantic model per ``kind``, chosen by the ``kind`` key (``auto`` when
the key is left out). Building a spec does no I/O: whether profiles exist is
decided by ``build_cost_model``.

    cost_model:
      kind: auto                      # auto | roofline | linear | profiled
      paged_attention_overhead: null  # auto, profiled: null keeps the measured paged kernels
                                      #   (1.1 if auto falls back); roofline: default 1.1
      step_overhead_s: null           # auto, roofline; null: measured by the committed profiles
      profile_dir: null               # auto, profiled; default kernels/profiles/<hardware>/<model>/
      engine_terms: true              # auto, profiled; false: GPU time only (no engine host/launch terms)

``cost_model: roofline`` is short for ``cost_model: {kind: roofline}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from sim.cost.roofline import DEFAULT_PAGED_ATTENTION_OVERHEAD

CostModelKind = Literal["auto", "roofline", "linear", "profiled"]
COST_MODEL_KINDS: tuple[str, ...] = get_args(CostModelKind)

PagedAttentionOverhead = Annotated[float, Field(
    DEFAULT_PAGED_ATTENTION_OVERHEAD, ge=0.5, le=5.0,
    description="paged / contiguous attention time; outside [0.5, 5] is a typo, not a kernel")]
StepOverheadS = Annotated[float | None, Field(
    None, ge=0.0, le=1.0,
    description="fixed seconds per step (CPU scheduling, kernel launches); null: as the committed "
                "profiles measured it (sim.cost.profiled.measured_step_overhead_s)")]
MeasuredOrOverhead = Annotated[float | None, Field(
    None, ge=0.5, le=5.0,
    description="null: the profiled paged kernels as measured (roofline fallback: 1.1); "
                "a number: paged = contiguous x that ratio")]
ProfileDir = Annotated[Path | None, Field(
    None, description="folder of kernel profiles; null means kernels/profiles/<hardware>/<model>/")]
EngineTerms = Annotated[bool, Field(
    True, description="price the real engine's host and launch time too (engine_steps.csv, where the "
                      "profile has it); false: GPU time only")]
Coefficient = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RooflineCostSpec(_Spec):
    """Peak FLOP/s and bandwidth of the hardware preset (sim/cost/roofline.py)."""

    kind: Literal["roofline"] = "roofline"
    paged_attention_overhead: PagedAttentionOverhead
    step_overhead_s: StepOverheadS


class AutoCostSpec(_Spec):
    """Profiled if profiles exist for this model and hardware, else roofline
    (``step_overhead_s`` applies to the roofline fallback only: profiles carry
    their own measured per-step term)."""

    kind: Literal["auto"] = "auto"
    paged_attention_overhead: MeasuredOrOverhead
    step_overhead_s: StepOverheadS
    profile_dir: ProfileDir
    engine_terms: EngineTerms


class ProfiledCostSpec(_Spec):
    """Kernel and GEMM timings measured on a GPU by ``pagesim calibrate``."""

    kind: Literal["profiled"] = "profiled"
    paged_attention_overhead: MeasuredOrOverhead
    profile_dir: ProfileDir
    engine_terms: EngineTerms


class LinearCostSpec(_Spec):
    """User-given coefficients (sim/cost/linear.py); all four required."""

    kind: Literal["linear"] = "linear"
    base_s: Coefficient
    per_prefill_token_s: Coefficient
    per_decode_seq_s: Coefficient
    per_context_token_s: Coefficient
    per_swap_token_s: Coefficient = 0.0


def _kind_shorthand(value: Any) -> Any:
    """``cost_model: roofline`` means ``cost_model: {kind: roofline}``."""
    return {"kind": value} if isinstance(value, str) else value


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "auto")
    return getattr(value, "kind", "auto")


CostModelSpec = Annotated[
    Union[
        Annotated[AutoCostSpec, Tag("auto")],
        Annotated[RooflineCostSpec, Tag("roofline")],
        Annotated[LinearCostSpec, Tag("linear")],
        Annotated[ProfiledCostSpec, Tag("profiled")],
    ],
    Discriminator(
        _kind_of,
        custom_error_type="cost_model_kind",
        custom_error_message=f"unknown cost model kind; allowed: {', '.join(COST_MODEL_KINDS)}",
    ),
    BeforeValidator(_kind_shorthand),
]
"""Use as a field type: ``cost_model: CostModelSpec = AutoCostSpec()``."""

_COST_MODEL_SPEC = TypeAdapter(CostModelSpec)


def parse_cost_model_spec(data: Any) -> AutoCostSpec | RooflineCostSpec | LinearCostSpec | ProfiledCostSpec:
    """Validate a ``cost_model:`` mapping (or an already-built spec)."""
    return _COST_MODEL_SPEC.validate_python({} if data is None else data)
