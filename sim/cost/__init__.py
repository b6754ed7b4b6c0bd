"""Cost models: ``step_time(batch) -> seconds`` behind one interface.

``build_cost_model`` turns a validated ``cost_model:`` spec into a model and a
one-line note telling the user which model is pricing the run and why.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from sim.cost.base import CostModel, decode_run_times_by_steps
from sim.cost.linear import LinearCostModel
from sim.cost.roofline import DEFAULT_PAGED_ATTENTION_OVERHEAD, DEFAULT_STEP_OVERHEAD_S, RooflineCostModel
from sim.cost.spec import (
    AutoCostSpec,
    CostModelSpec,
    LinearCostSpec,
    ProfiledCostSpec,
    RooflineCostSpec,
    parse_cost_model_spec,
)
from sim.presets import HardwareSpec, ModelSpec

__all__ = [
    "AutoCostSpec", "CostModel", "CostModelSpec", "LinearCostModel", "LinearCostSpec",
    "ProfiledCostSpec", "RooflineCostModel", "RooflineCostSpec", "build_cost_model",
    "decode_run_times_by_steps", "parse_cost_model_spec",
]

Built = tuple[CostModel, str]


def build_cost_model(spec: CostModelSpec, model: ModelSpec, hardware: HardwareSpec,
                     max_batch_size: int = 256) -> Built:
    """The cost model ``spec`` asks for, and a one-line note for the user.
    ``max_batch_size`` fixes the real engine's CUDA-graph batch sizes, which
    profiles with engine measurements price.

    Raises ``ValueError`` when ``kind: profiled`` has no profiles to read.
    """
    if spec.kind in ("auto", "profiled"):
        return _FACTORIES[spec.kind](spec, model, hardware, max_batch_size)
    return _FACTORIES[spec.kind](spec, model, hardware)


def _build_roofline(spec: RooflineCostSpec, model: ModelSpec, hardware: HardwareSpec) -> Built:
    cost = _roofline(spec, model, hardware)
    return cost, f"cost model: roofline ({_pair(model, hardware)}; {_roofline_knobs(cost)})"


def _build_linear(spec: LinearCostSpec, model: ModelSpec, hardware: HardwareSpec) -> Built:
    cost = LinearCostModel(spec.base_s, spec.per_prefill_token_s, spec.per_decode_seq_s,
                           spec.per_context_token_s, spec.per_swap_token_s)
    return cost, (f"cost model: linear (base {spec.base_s:g} s, {spec.per_prefill_token_s:g} s/prefill token, "
                  f"{spec.per_decode_seq_s:g} s/decode seq, {spec.per_context_token_s:g} s/context token)")


def _build_profiled(spec: ProfiledCostSpec, model: ModelSpec, hardware: HardwareSpec,
                    max_batch_size: int) -> Built:
    try:
        profiled = importlib.import_module("sim.cost.profiled")
    except ImportError as exc:
        raise ValueError(f"cost_model.kind: profiled is not available in this install ({exc}); "
                         f"use kind: roofline or kind: auto") from exc
    path = _profile_dir(spec, model, hardware, profiled.default_profile_dir)
    if not profiled.has_profiles(path):
        raise ValueError(f"cost_model.profile_dir: no kernel profiles for {_pair(model, hardware)} at {path}; "
                         f"produce them with `pagesim calibrate` on that GPU, or use kind: auto to fall back "
                         f"to the roofline model")
    cost = profiled.ProfiledCostModel.from_dir(
        path, model, hardware, paged_attention_overhead=spec.paged_attention_overhead,
        max_batch_size=max_batch_size, engine=spec.engine_terms)
    return cost, f"cost model: profiled from {path}" + ("" if spec.engine_terms else " (GPU time only)")


def _build_auto(spec: AutoCostSpec, model: ModelSpec, hardware: HardwareSpec, max_batch_size: int) -> Built:
    """Profiled when profiles exist, else roofline with a note saying why."""
    try:
        profiled = importlib.import_module("sim.cost.profiled")
    except ImportError as exc:
        cost = _roofline(spec, model, hardware)
        return cost, f"cost model: roofline ({_pair(model, hardware)}; profiled cost model unavailable: {exc})"
    path = _profile_dir(spec, model, hardware, profiled.default_profile_dir)
    if not profiled.has_profiles(path):
        cost = _roofline(spec, model, hardware)
        return cost, (f"cost model: roofline (no profiles for {_pair(model, hardware)} at {path}; "
                      f"run `pagesim calibrate`)")
    cost = profiled.ProfiledCostModel.from_dir(
        path, model, hardware, paged_attention_overhead=spec.paged_attention_overhead,
        max_batch_size=max_batch_size, engine=spec.engine_terms)
    return cost, f"cost model: profiled from {path}" + ("" if spec.engine_terms else " (GPU time only)")


_FACTORIES: dict[str, Callable[..., Built]] = {
    "auto": _build_auto,
    "roofline": _build_roofline,
    "linear": _build_linear,
    "profiled": _build_profiled,
}


def _roofline(spec: AutoCostSpec | RooflineCostSpec, model: ModelSpec,
              hardware: HardwareSpec) -> RooflineCostModel:
    overhead = spec.paged_attention_overhead
    if overhead is None:   # auto: "as measured" has no meaning without profiles
        overhead = DEFAULT_PAGED_ATTENTION_OVERHEAD
    step_overhead_s, source = spec.step_overhead_s, "given"
    if step_overhead_s is None:
        step_overhead_s, source = _measured_step_overhead_s(hardware)
    return RooflineCostModel(model, hardware, paged_attention_overhead=overhead,
                             step_overhead_s=step_overhead_s, step_overhead_source=source)


def _measured_step_overhead_s(hardware: HardwareSpec) -> tuple[float, str]:
    """The committed profiles' fixed step time, else the documented default."""
    try:
        profiled = importlib.import_module("sim.cost.profiled")
    except ImportError:
        return DEFAULT_STEP_OVERHEAD_S, "default"
    measured = profiled.measured_step_overhead_s(hardware.name)
    return measured if measured is not None else (DEFAULT_STEP_OVERHEAD_S, "default")


def _profile_dir(spec: AutoCostSpec | ProfiledCostSpec, model: ModelSpec, hardware: HardwareSpec,
                 default_profile_dir: Callable[[str, str], Path]) -> Path:
    if spec.profile_dir is not None:
        return Path(spec.profile_dir)
    return default_profile_dir(hardware.name, model.name)


def _pair(model: ModelSpec, hardware: HardwareSpec) -> str:
    return f"{hardware.name}/{model.name}"


def _roofline_knobs(cost: RooflineCostModel) -> str:
    source = cost.step_overhead_source
    where = "" if source == "given" else f" ({source})"
    return (f"paged attention x{cost.paged_attention_overhead:g}, "
            f"step overhead {cost.step_overhead_s * 1e3:.3g} ms{where}")
