"""Experiment configs: typed, validated at the edge, no I/O in construction.

``load_config(path, overrides)`` is the only function that touches the disk.
Every error it raises is a ``ConfigError`` with a one-line message naming the
field and what is allowed; the CLI prints it and exits 2.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag,
                      ValidationError, field_validator, model_validator)

from experiments.inputs import config_error
from sim.cost.spec import AutoCostSpec, CostModelSpec
from sim.fields import MAX_TIME_S, Count, Index
from sim.memory.capacity import MemorySpec
from sim.parallel import Parallelism, check_split
from sim.policies import BatchingSpec
from sim.presets import HARDWARE, MODELS, HardwareSpec, ModelSpec, resolve_model
from sim.steady import SteadyStateSpec
from workloads.spec import WorkloadSpec


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FIELD_VALUE_ERROR = re.compile(r"^Value error, ([A-Za-z_][A-Za-z0-9_.]*): (.*)$")


class ConfigError(ValueError):
    """A bad config: the message is one line for the user."""


class ParallelSpec(BaseModel):
    """``engine.parallel``: one replica spans ``tensor x pipeline`` GPUs (sim/parallel.py)."""

    model_config = ConfigDict(extra="forbid")

    tensor: Annotated[Count, Field(le=64)] = 1
    pipeline: Annotated[Count, Field(le=64)] = 1

    def value(self) -> Parallelism:
        return Parallelism(self.tensor, self.pipeline)


class EngineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    cost_model: CostModelSpec = Field(default_factory=AutoCostSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    replicas: Count = 1
    router: Literal["round_robin", "least_outstanding"] = "round_robin"

    @model_validator(mode="after")
    def _prefix_caching_needs_continuous(self) -> EngineSpec:
        if self.memory.prefix_caching and self.batching.policy != "continuous":
            raise ValueError("memory.prefix_caching: applies to policy: continuous only (a static batch "
                             "pads every prompt to its longest and computes it whole)")
        return self

    @model_validator(mode="after")
    def _swap_needs_paged_continuous(self) -> EngineSpec:
        if self.batching.preemption == "swap":
            if self.memory.layout != "paged":
                raise ValueError("batching.preemption: 'swap' applies to layout: paged only "
                                 "(a contiguous cache never preempts); use 'recompute' or layout: paged")
            if self.batching.policy != "continuous":
                raise ValueError("batching.preemption: 'swap' applies to policy: continuous only "
                                 "(static batching preempts by recompute); use 'recompute'")
        return self


def _preset_or_inline(value: Any) -> str:
    return "name" if isinstance(value, str) else "inline"


# A preset name or an inline spec; the branch is chosen by type so an error in
# an inline spec names its bad field instead of "not a valid string".
ModelField = Annotated[Union[Annotated[str, Tag("name")], Annotated[ModelSpec, Tag("inline")]],
                       Discriminator(_preset_or_inline)]
HardwareField = Annotated[Union[Annotated[str, Tag("name")], Annotated[HardwareSpec, Tag("inline")]],
                          Discriminator(_preset_or_inline)]


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "experiment"
    seed: Index = 0
    model: ModelField = "llama-2-7b"
    hardware: HardwareField = "h100-sxm"
    workload: WorkloadSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    horizon_s: Annotated[float, Field(gt=0, le=MAX_TIME_S, allow_inf_nan=False)] | None = None
    """Stop the clock here; requests still in flight end ``unfinished``."""
    fast_forward: bool = True
    """Jump over runs of identical decode steps (same results, much faster)."""
    steady_state: SteadyStateSpec = Field(default_factory=SteadyStateSpec)
    """The measurement window and the stable/saturated verdict (sim/steady.py)."""
    record_token_times: bool = False
    timeline_max_rows: Annotated[Count, Field(ge=2)] | None = 200_000
    """Timeline rows kept per replica; past it adjacent steps merge into
    step-time-weighted rows (column ``steps``). null keeps every step."""
    sweep: dict[str, list[Any]] | None = None
    """Dotted config paths -> values; ``pagesim sweep`` runs the cartesian product."""

    @field_validator("model", "hardware")
    @classmethod
    def _known_preset(cls, v, info):
        presets = MODELS if info.field_name == "model" else HARDWARE
        if isinstance(v, str) and v not in presets:
            raise ValueError(f"unknown {info.field_name} {v!r}; presets: {', '.join(presets)} "
                             f"(or an inline spec)")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v):
        if v is None:
            return v
        for key, values in v.items():
            if not _DOTTED.match(key):
                raise ValueError(f"sweep key {key!r}: must be a dotted path of field names, "
                                 f"e.g. workload.arrival.rate_rps")
            if not values:
                raise ValueError(f"sweep.{key}: give at least one value")
        return v

    @model_validator(mode="after")
    def _sampling_runs_continuously(self) -> ExperimentConfig:
        sampling = self.workload.sampling
        if sampling is not None and sampling.num_seqs > 1:
            field = "n" if sampling.n > 1 else "beam_width"
            b = self.engine.batching
            if b.policy != "continuous":
                raise ValueError(f"workload.sampling.{field}: several samples per request need policy: continuous")
            if b.preemption != "recompute":
                raise ValueError(f"workload.sampling.{field}: several samples per request are preempted by "
                                 f"recompute only (their shared blocks do not survive a swap)")
            if sampling.num_seqs > b.max_batch_size:
                raise ValueError(f"workload.sampling.{field}: {sampling.num_seqs} sequences per request exceed "
                                 f"engine.batching.max_batch_size={b.max_batch_size}")
        return self

    @model_validator(mode="after")
    def _chunks_hold_a_block(self) -> ExperimentConfig:
        b, m = self.engine.batching, self.engine.memory
        if b.chunked_prefill and b.max_batch_tokens < m.block_size:
            raise ValueError(f"engine.batching.max_batch_tokens: chunked prefill needs a budget of at least one "
                             f"KV block (engine.memory.block_size={m.block_size}), got {b.max_batch_tokens}")
        return self

    @model_validator(mode="after")
    def _model_splits(self) -> ExperimentConfig:
        par = self.engine.parallel
        if par.tensor > 1 or par.pipeline > 1:
            try:
                check_split(resolve_model(self.model), par.tensor, par.pipeline)
            except ValueError as exc:
                raise ValueError(f"engine.parallel.{exc}") from None
        return self

    @property
    def gpus(self) -> int:
        """GPUs the configuration occupies: replicas x tensor x pipeline."""
        return self.engine.replicas * self.engine.parallel.value().gpus

    def label(self) -> str:
        """Names the configuration on the two axes, e.g. ``continuous+paged``."""
        b, m = self.engine.batching, self.engine.memory
        label = f"{b.policy}+{m.layout}"
        if m.layout == "contiguous":
            label += f"({m.reservation})"
        elif b.preemption == "swap":
            label += "(swap)"
        if m.prefix_caching:
            label += "+prefix-cache"
        return label


def format_validation_error(err: ValidationError, prefix: str = "", raw: Any = None) -> str:
    """The first error as ``dotted.path: message (got value)``, one line.

    Pydantic puts union branch tags (``poisson``, ``linear``, ``inline``) into
    error locations; walking the raw input along the location keeps only the
    keys the user actually wrote, so the path is one ``--set`` accepts. An
    unknown key's message lists the keys allowed there."""
    first = err.errors()[0]
    path = _user_path(first["loc"], raw)
    msg = first["msg"]
    named = _FIELD_VALUE_ERROR.match(msg)
    if named:       # a spec's own check that names its field: "Value error, num_layers: ..."
        path = named.group(1) if path == "config" else f"{path}.{named.group(1)}"
        msg = named.group(2)
    unknown_key = first["type"] in ("extra_forbidden", "unexpected_keyword_argument")
    if unknown_key:
        allowed = _allowed_keys(err.title, first["loc"])
        if allowed:
            msg = f"unknown key; allowed: {', '.join(allowed)}"
    got = first.get("input")
    got_txt = "" if isinstance(got, (dict, list)) or got is None or unknown_key \
        else f" (got {got!r})"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{prefix}{path}: {msg}{got_txt}{more}"


def _user_path(loc: tuple, raw: Any) -> str:
    if raw is None:
        return ".".join(str(p) for p in loc if not str(p).startswith("function-"))
    keep, node = [], raw
    for i, part in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, dict) and part not in node and following is not None and following in node:
            continue                          # a branch tag filled in by a default (e.g. process: trace)
        if isinstance(node, dict) and part in node:
            keep.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            keep.append(str(part))
            node = node[part]
        elif not isinstance(node, (dict, list)):
            break
        elif isinstance(node, dict) and part not in node and not _is_tag(part, node):
            keep.append(str(part))           # a missing or unknown key: name it
            break
    return ".".join(keep) or "config"


def _is_tag(part: Any, node: dict) -> bool:
    """A union branch tag: the value of a discriminator key, or our own
    ``name``/``inline`` tags for preset-or-inline fields."""
    return part in ("inline", "name", "str") or part in node.values()


def _allowed_keys(title: str, loc: tuple) -> list[str]:
    """Field names of the model that owns an unknown key (best effort: walks
    the config's model classes along the error location; a union branch tag
    in the location picks the branch whose ``Literal`` field holds it)."""
    if title != "ExperimentConfig":
        return []
    candidates: list[type] = [ExperimentConfig]
    for part in loc[:-1]:
        if part in ("inline", "name"):
            continue               # our preset-or-inline tags
        owner = next((c for c in candidates if part in _field_names(c)), None)
        if owner is not None:
            if dataclasses.is_dataclass(owner):
                return []          # presets have no nested sections
            candidates = _models_in(owner.model_fields[part].annotation)
        else:
            candidates = [c for c in candidates if any(
                get_origin(f.annotation) is Literal and part in get_args(f.annotation)
                for f in getattr(c, "model_fields", {}).values())]
        if not candidates:
            return []
    return sorted(_field_names(candidates[0])) if len(candidates) == 1 else []


def _field_names(spec_type: type) -> list[str]:
    """Keys a config section accepts: a pydantic model's fields or a preset dataclass's."""
    if dataclasses.is_dataclass(spec_type):
        return [f.name for f in dataclasses.fields(spec_type)]
    return list(spec_type.model_fields)


def _models_in(annotation: Any) -> list[type]:
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


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
    key = key.strip()
    if not _DOTTED.match(key):
        raise ConfigError(f"--set {text!r}: KEY must be a dotted path of field names, "
                          f"e.g. engine.batching.policy=static")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None


def validate(raw: dict, source: str = "config") -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of fields")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{source}: ", raw)) from None
    for key, values in (cfg.sweep or {}).items():
        for value in values:      # every sweep point must be a valid config too
            point = copy.deepcopy(raw)
            point.pop("sweep", None)
            set_path(point, key, value)
            try:
                ExperimentConfig.model_validate(point)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{source}: sweep {key}={value!r}: ", point)) from None
    return cfg


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    missing = config_error(p)
    if missing:
        raise ConfigError(missing)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc.reason}); expected a YAML config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{p}: {where}not valid YAML ({problem})") from None
    if raw is None:
        raise ConfigError(f"{p}: is empty; expected a mapping of fields (name, model, workload, ...)")
    return raw


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


def tree_id(tree: Any) -> str:
    """A short stable hash of a JSON-like tree (a resolved config, say): the
    id of a sweep point, a capacity candidate or a cached probe."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]
