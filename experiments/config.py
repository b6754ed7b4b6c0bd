"""Experiment configs: typed, validated at the edge, no I/O in construction.

``load_config(path, overrides)`` is the only function that touches the disk.
Every error it raises is a ``ConfigError`` with a one-line message naming the
field and what is allowed; the CLI prints it and exits 2.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator

from sim.cost.spec import AutoCostSpec, CostModelSpec
from sim.memory.capacity import MemorySpec
from sim.policies import BatchingSpec
from sim.presets import HARDWARE, MODELS, HardwareSpec, ModelSpec
from workloads.spec import WorkloadSpec


class ConfigError(ValueError):
    """A bad config: the message is one line for the user."""


class EngineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    cost_model: CostModelSpec = Field(default_factory=AutoCostSpec)
    replicas: PositiveInt = 1
    router: Literal["round_robin", "least_outstanding"] = "round_robin"


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "experiment"
    seed: int = Field(0, ge=0)
    model: str | ModelSpec = "llama-2-7b"
    hardware: str | HardwareSpec = "h100-sxm"
    workload: WorkloadSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    horizon_s: PositiveFloat | None = None
    """Stop the clock here; requests still in flight end ``unfinished``."""
    fast_forward: bool = True
    """Jump over runs of identical decode steps (same results, much faster)."""
    record_token_times: bool = False
    sweep: dict[str, list[Any]] | None = None
    """Dotted config paths -> values; ``pagesim sweep`` runs the cartesian product."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, v):
        if isinstance(v, str) and v not in MODELS:
            raise ValueError(f"unknown model {v!r}; presets: {', '.join(MODELS)} (or an inline geometry)")
        return v

    @field_validator("hardware")
    @classmethod
    def _known_hardware(cls, v):
        if isinstance(v, str) and v not in HARDWARE:
            raise ValueError(f"unknown hardware {v!r}; presets: {', '.join(HARDWARE)} (or an inline spec)")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v):
        if v is None:
            return v
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep.{key}: give at least one value")
        return v

    def label(self) -> str:
        """Names the configuration on the two axes, e.g. ``continuous+paged``."""
        b, m = self.engine.batching, self.engine.memory
        label = f"{b.policy}+{m.layout}"
        if m.layout == "contiguous":
            label += f"({m.reservation})"
        elif b.preemption == "swap":
            label += "(swap)"
        return label


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """The first error as ``path: message (got value)``, one line."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{prefix}{loc}: {first['msg']}{got_txt}{more}"


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """tree["a"]["b"] = value for "a.b", creating mappings on the way."""
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is not a mapping")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. engine.batching.policy=static")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None


def validate(raw: dict, source: str = "config") -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of fields")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{source}: ")) from None
    for key, values in (cfg.sweep or {}).items():
        for value in values:      # every sweep point must be a valid config too
            point = copy.deepcopy(raw)
            point.pop("sweep", None)
            set_path(point, key, value)
            try:
                ExperimentConfig.model_validate(point)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{source}: sweep {key}={value!r}: ")) from None
    return cfg


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{p}: {where}not valid YAML ({problem})") from None
    return raw if raw is not None else {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentConfig, dict]:
    """Read, override, validate. Returns the config and the raw tree it came from."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    for text in overrides or []:
        key, value = parse_override(text)
        set_path(raw, key, value)
    return validate(raw, str(path)), raw


def resolved_dict(cfg: ExperimentConfig) -> dict:
    """The fully resolved config (defaults filled in), for ``DIR/config.yaml``."""
    return cfg.model_dump(mode="json", exclude_none=False)
