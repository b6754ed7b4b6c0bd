"""The ``workload`` section of a config, and ``generate`` which turns it into requests.

Building a ``WorkloadSpec`` only validates (no I/O); ``generate`` reads any
traces and draws from the passed generator, always in the same order
(arrivals, then prompt lengths, then output lengths), so one seed gives one
workload. Reference with examples: docs/workloads.md.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.fields import MAX_TIME_S, Count

from workloads import arrivals, lengths
from workloads.trace_formats import TraceColumns
from workloads.traces import TraceLoad, load_trace
from workloads.types import Workload

Rate = Annotated[float, Field(gt=0, allow_inf_nan=False, description="requests per second")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- traces


class ColumnsSpec(_Spec):
    """Column mapping for ``format: csv``."""

    arrival_column: str
    prompt_column: str
    output_column: str
    time_unit: Literal["s", "ms", "us", "datetime"] = "s"


class TraceSpec(_Spec):
    path: str = Field(description="a CSV file, or an embedded trace name such as 'azure_conv_2023'")
    format: Literal["auto", "processed", "azure", "burstgpt", "mooncake", "qwen", "csv"] = "auto"
    columns: ColumnsSpec | None = None
    limit: Count | None = None
    start_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    end_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_context_tokens: Count | None = Field(None, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> TraceSpec:
        if self.format == "csv" and self.columns is None:
            raise ValueError("format 'csv' needs 'columns' (arrival_column, prompt_column, output_column)")
        if self.format != "csv" and self.columns is not None:
            raise ValueError(f"'columns' is only used with format 'csv', not {self.format!r}")
        if self.end_s is not None and self.end_s <= (self.start_s or 0.0):
            raise ValueError(f"end_s ({self.end_s}) must be greater than start_s ({self.start_s or 0.0})")
        return self

    def load(self, limit: int | None = None) -> TraceLoad:
        """Read the trace (unscaled times); ``limit`` further caps ``self.limit``."""
        caps = [cap for cap in (self.limit, limit) if cap is not None]
        columns = None if self.columns is None else TraceColumns(**self.columns.model_dump())
        return load_trace(
            self.path, format=self.format, columns=columns, limit=min(caps) if caps else None,
            start_s=self.start_s, end_s=self.end_s, max_context_tokens=self.max_context_tokens,
        )


# ---------------------------------------------------------------- arrivals


class PoissonSpec(_Spec):
    process: Literal["poisson"]
    rate_rps: Rate

    def build(self, trace: TraceLoad | None) -> arrivals.ArrivalProcess:
        return arrivals.PoissonArrivals(self.rate_rps)


class GammaSpec(_Spec):
    process: Literal["gamma"]
    rate_rps: Rate
    cv: float = Field(gt=0, allow_inf_nan=False, description="std / mean of inter-arrival gaps; 1 = Poisson")

    def build(self, trace: TraceLoad | None) -> arrivals.ArrivalProcess:
        return arrivals.GammaArrivals(self.rate_rps, self.cv)


class ConstantSpec(_Spec):
    process: Literal["constant"]
    rate_rps: Rate

    def build(self, trace: TraceLoad | None) -> arrivals.ArrivalProcess:
        return arrivals.ConstantArrivals(self.rate_rps)


class AllAtOnceSpec(_Spec):
    process: Literal["all_at_once"]

    def build(self, trace: TraceLoad | None) -> arrivals.ArrivalProcess:
        return arrivals.AllAtOnce()


class TraceArrivalSpec(_Spec):
    process: Literal["trace"]
    time_scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="0.5 replays twice as fast")

    def build(self, trace: TraceLoad | None) -> arrivals.ArrivalProcess:
        assert trace is not None, "checked by WorkloadSpec"
        return arrivals.TraceArrivals(trace.workload.arrival_s, self.time_scale)


ArrivalSpec = Annotated[
    Union[PoissonSpec, GammaSpec, ConstantSpec, AllAtOnceSpec, TraceArrivalSpec],
    Field(discriminator="process"),
]


# ---------------------------------------------------------------- lengths


class _DistSpec(_Spec):
    min_tokens: Count = 1
    max_tokens: Count | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> _DistSpec:
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= min_tokens ({self.min_tokens})")
        return self


class FixedSpec(_DistSpec):
    dist: Literal["fixed"]
    value: Count

    def build(self) -> lengths.LengthDistribution:
        return lengths.FixedLength(self.value, self.min_tokens, self.max_tokens)


class UniformSpec(_DistSpec):
    dist: Literal["uniform"]
    low: Count
    high: Count

    @model_validator(mode="after")
    def _check_range(self) -> UniformSpec:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def build(self) -> lengths.LengthDistribution:
        return lengths.UniformLength(self.low, self.high, self.min_tokens, self.max_tokens)


class LognormalSpec(_DistSpec):
    dist: Literal["lognormal"]
    mean: float = Field(gt=0, allow_inf_nan=False, description="mean tokens after clipping")
    sigma: float = Field(gt=0, le=4, description="std of the underlying normal (shape)")

    @model_validator(mode="after")
    def _check_mean(self) -> LognormalSpec:
        upper = float("inf") if self.max_tokens is None else self.max_tokens
        if not self.min_tokens < self.mean < upper:
            raise ValueError(f"mean ({self.mean}) must lie strictly between min_tokens and max_tokens")
        return self

    def build(self) -> lengths.LengthDistribution:
        return lengths.LognormalLength(self.mean, self.sigma, self.min_tokens, self.max_tokens)


class ExponentialSpec(_DistSpec):
    dist: Literal["exponential"]
    mean: float = Field(gt=0, allow_inf_nan=False, description="mean tokens before rounding up and clipping")

    def build(self) -> lengths.LengthDistribution:
        return lengths.ExponentialLength(self.mean, self.min_tokens, self.max_tokens)


class EmpiricalSpec(_DistSpec):
    dist: Literal["empirical"]
    trace: TraceSpec
    column: Literal["prompt", "output"]

    def build(self) -> lengths.LengthDistribution:
        workload = self.trace.load().workload
        values = workload.prompt_tokens if self.column == "prompt" else workload.output_tokens
        return lengths.EmpiricalLength(values, self.min_tokens, self.max_tokens)


DistSpec = Annotated[
    Union[FixedSpec, UniformSpec, LognormalSpec, ExponentialSpec, EmpiricalSpec],
    Field(discriminator="dist"),
]


class LengthsSpec(_Spec):
    """Exactly one of: a ``preset``; both ``prompt`` and ``output``; ``from_trace``."""

    preset: Literal["sharegpt", "alpaca"] | None = None
    prompt: DistSpec | None = None
    output: DistSpec | None = None
    from_trace: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> LengthsSpec:
        synthetic = self.prompt is not None or self.output is not None
        if synthetic and (self.prompt is None or self.output is None):
            raise ValueError("give both 'prompt' and 'output' distributions")
        if sum((self.preset is not None, synthetic, self.from_trace)) != 1:
            raise ValueError("give exactly one of 'preset', 'prompt'+'output', or 'from_trace: true'")
        return self

    def build(self) -> lengths.LengthPair:
        if self.preset is not None:
            return lengths.LENGTH_PRESETS[self.preset]
        assert self.prompt is not None and self.output is not None, "checked by _one_source"
        return lengths.LengthPair(prompt=self.prompt.build(), output=self.output.build())


# ---------------------------------------------------------------- prefixes


class PrefixSpec(_Spec):
    """``workload.prefix``: synthetic shared prefixes (workloads/prefixes.py)."""

    shared_tokens: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] = 0
    """a system prompt of this many tokens before every prompt (0: none)"""
    tenants: Count = 1
    """how many distinct system prompts; each request draws one uniformly"""
    turns: Count = 1
    """turns per conversation; each turn's prompt repeats the previous turn's prompt and answer"""
    think_time_s: float = Field(30.0, ge=0.0, le=MAX_TIME_S, allow_inf_nan=False)
    """mean (exponential) time from one turn's arrival to the next's"""

    def plan(self):
        from workloads.prefixes import PrefixPlan

        return PrefixPlan(self.shared_tokens, self.tenants, self.turns, self.think_time_s)


class SamplingSpec(_Spec):
    """``workload.sampling``: ``n`` sequences per request sharing its prompt
    (parallel sampling), or ``beam_width`` beams re-selected after every
    token (beam search with a fixed-length decode); each ``output_tokens``
    long (continuous batching)."""

    n: Annotated[int, Field(ge=1, le=64, strict=True)] = 1
    beam_width: Annotated[int, Field(ge=1, le=64, strict=True)] = 1

    @model_validator(mode="after")
    def _one_kind(self) -> "SamplingSpec":
        if self.n > 1 and self.beam_width > 1:
            raise ValueError("give n (parallel sampling) or beam_width (beam search), not both")
        return self

    @property
    def num_seqs(self) -> int:
        return max(self.n, self.beam_width)


# ---------------------------------------------------------------- workload


class WorkloadSpec(_Spec):
    """Where requests come from. With a ``trace``, ``arrival`` defaults to
    ``{process: trace}`` (also when it names no process, so a sweep may set
    just ``arrival.time_scale``) and ``lengths`` to ``{from_trace: true}``,
    and ``num_requests`` caps the rows used; without a trace, all three are
    required."""

    name: str | None = None
    num_requests: Count | None = None
    arrival: ArrivalSpec | None = None
    lengths: LengthsSpec | None = None
    trace: TraceSpec | None = None
    prefix: PrefixSpec | None = None
    sampling: SamplingSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _trace_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("trace") is not None:
            data = dict(data)
            arrival = data.get("arrival")
            if arrival is None:
                data["arrival"] = {"process": "trace"}
            elif isinstance(arrival, dict) and "process" not in arrival:  # e.g. {time_scale: 0.5}
                data["arrival"] = {"process": "trace", **arrival}
            if data.get("lengths") is None:
                data["lengths"] = {"from_trace": True}
        return data

    @model_validator(mode="after")
    def _check_sources(self) -> WorkloadSpec:
        if self.prefix is not None and self.prefix.turns > 1 and self.trace is not None:
            raise ValueError("prefix.turns: conversations are generated from a synthetic arrival process; "
                             "a trace brings its own arrivals (allowed with a trace: 1)")
        if self.trace is not None:
            return self
        if self.num_requests is None:
            raise ValueError("'num_requests' is required when there is no 'trace'")
        if self.arrival is None or self.arrival.process == "trace":
            raise ValueError("without a 'trace', 'arrival.process' must be one of: poisson, gamma, constant, "
                             "all_at_once ('trace' needs the 'trace' section)")
        if self.lengths is None or self.lengths.from_trace:
            raise ValueError("without a 'trace', 'lengths' needs a 'preset' or 'prompt'+'output' distributions")
        rate = getattr(self.arrival, "rate_rps", None)
        if rate is not None and self.num_requests / rate > MAX_TIME_S:
            raise ValueError(f"arrival.rate_rps: {self.num_requests:,} requests at {rate:g} req/s arrive over "
                             f"{self.num_requests / rate:.3g} s; the clock holds times up to {MAX_TIME_S:g} s "
                             f"(about 31 years): raise the rate")
        return self

    def default_name(self) -> str:
        if self.trace is not None:
            return self.trace.path
        assert self.arrival is not None and self.lengths is not None, "checked by _check_sources"
        return f"{self.arrival.process}+{self.lengths.preset or 'custom'}"


def generate(spec: WorkloadSpec, rng: np.random.Generator) -> Workload:
    """The requests ``spec`` describes (reads traces; draws only from ``rng``)."""
    return generate_with_trace(spec, rng)[0]


def generate_with_trace(spec: WorkloadSpec, rng: np.random.Generator) -> tuple[Workload, TraceLoad | None]:
    """Like ``generate``, also returning the main trace's load report (row
    counts dropped by each filter), or ``None`` without a trace."""
    assert spec.arrival is not None and spec.lengths is not None, "filled in by WorkloadSpec"
    trace = spec.trace.load(limit=spec.num_requests) if spec.trace is not None else None
    num_requests = len(trace.workload) if trace is not None else spec.num_requests
    assert num_requests is not None, "checked by WorkloadSpec"
    turns = spec.prefix.turns if spec.prefix is not None else 1
    starts = -(-num_requests // turns)           # conversations' first turns (requests, without any)
    arrival_s = spec.arrival.build(trace).sample(starts, rng) * turns
    if spec.lengths.from_trace:
        assert trace is not None, "checked by WorkloadSpec"
        prompt_tokens, output_tokens = trace.workload.prompt_tokens, trace.workload.output_tokens
    else:
        pair = spec.lengths.build()
        prompt_tokens = pair.prompt.sample(num_requests, rng)
        output_tokens = pair.output.sample(num_requests, rng)
    segments = trace.workload.segments if trace is not None and spec.lengths.from_trace else None
    if spec.prefix is not None:
        from workloads.prefixes import with_prefixes

        arrival_s, prompt_tokens, output_tokens, segments = with_prefixes(
            arrival_s, prompt_tokens, output_tokens, spec.prefix.plan(), rng, segments)
    if len(arrival_s) and arrival_s[-1] > MAX_TIME_S:
        field = "arrival.time_scale" if spec.arrival.process == "trace" else "arrival"
        raise ValueError(f"workload.{field}: the last request arrives at {arrival_s[-1]:.3g} s; the clock "
                         f"holds times up to {MAX_TIME_S:g} s (about 31 years)")
    workload = Workload(arrival_s, prompt_tokens, output_tokens, name=spec.name or spec.default_name(),
                        segments=segments)
    return workload, trace
