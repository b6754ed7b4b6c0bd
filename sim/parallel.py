"""Tensor and pipeline parallelism: one replica spread over ``tensor x pipeline`` GPUs.

The mechanism is one idea: **one GPU of a parallel replica runs a smaller
model**. ``shard(model, tensor, pipeline)`` is that model, a plain
``ModelSpec``, so everything that prices or sizes a model -- the roofline
model, the profiler (``pagesim calibrate --tp``), the profiled cost model,
the KV capacity -- works on it unchanged:

* **tensor** ``t`` (Megatron-style, as vLLM shards a Llama): attention heads
  and the MLP's inner dimension split ``t`` ways; KV heads split ``t`` ways,
  or, when ``t`` exceeds them, each GPU keeps one (replicated ``t / kv``
  times); the embedding and the LM head split by vocabulary rows.
* **pipeline** ``p``: the layers split into ``p`` consecutive stages; a GPU
  holds ``ceil(layers / p)`` of them, and at most one of the two vocabulary
  matrices (the first stage the embedding, the last the LM head).

What a shard cannot express is the **communication**, added by
``ParallelCostModel`` (``CommModel``): from measured collectives where a
``comm.csv`` for the hardware and group size exists (``python -m
kernels.distributed.comm`` on a multi-GPU machine), else from this analytic
model:

* tensor parallelism: per step, one all-reduce of ``rows x hidden``
  activations after the vocabulary-parallel embedding and two per layer
  (after attention's output projection and after the MLP), and one gather of
  the logits (``sequences x vocab``) to the rank that samples;
* a collective over ``t`` GPUs costs ``latency + 2 (t-1)/t x bytes / bus
  bandwidth`` (all-reduce, ring bandwidth term) or ``latency + (t-1)/t x
  bytes / bus bandwidth`` (gather). On NVSwitch machines every GPU is one hop
  from every other, so a small message costs about one fixed latency whatever
  ``t`` is (sources in ``sim/presets.py``);
* pipeline parallelism, as modelled: **one batch in flight**. A step runs the
  stages one after another (their GPU work adds up to the whole layer stack
  of the tensor shard) plus ``p - 1`` point-to-point sends of ``rows x
  hidden`` activations. No micro-batch overlap is modelled, so every GPU
  idles ``(p - 1) / p`` of a step -- the bubble: pipeline stages buy memory
  (KV capacity, a model that fits), not speed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sim.batch import Batch
from sim.presets import HardwareSpec, ModelSpec

COMMUNICATION_NOTE = "analytic (ring all-reduce over NVLink; no multi-GPU measurement)"


@dataclass(frozen=True)
class CollectiveTimes:
    """Measured seconds of one collective at one group size, by message
    bytes (``comm.csv``, ``kernels/distributed/comm.py``): linear between
    measured sizes, the smallest's time below them, the last segment's slope
    above them."""

    sizes: tuple[float, ...]
    seconds: tuple[float, ...]

    def __call__(self, nbytes: float) -> float:
        x, y = np.asarray(self.sizes), np.asarray(self.seconds)
        if nbytes <= x[0] or len(x) == 1:
            return float(y[0])
        if nbytes >= x[-1]:
            return float(y[-1] + (nbytes - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2]))
        return float(np.interp(nbytes, x, y))


def read_collectives(path, world: int) -> dict[str, CollectiveTimes] | None:
    """``all_reduce`` and ``all_gather`` times of ``world`` GPUs from a
    ``comm.csv``, or None if the file or that group size is missing."""
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    table: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if int(row["world_size"]) == world:
                table.setdefault(row["op"], []).append((float(row["bytes"]), float(row["seconds"])))
    if not {"all_reduce", "all_gather"} <= set(table):
        return None
    return {op: CollectiveTimes(*map(tuple, zip(*sorted(points)))) for op, points in table.items()}


@dataclass(frozen=True)
class Parallelism:
    tensor: int = 1
    pipeline: int = 1

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline

    @property
    def is_single(self) -> bool:
        return self.gpus == 1


def check_split(model: ModelSpec, tensor: int, pipeline: int = 1) -> None:
    """Raise ``ValueError`` (``tensor: ...`` / ``pipeline: ...``) when
    ``model`` cannot be split this way."""
    if tensor < 1 or pipeline < 1:
        raise ValueError(f"tensor and pipeline must be >= 1 (got {tensor}, {pipeline})")
    problem = _tensor_problem(model, tensor)
    if problem:
        raise ValueError(f"tensor: {problem}; allowed: {', '.join(map(str, tensor_degrees(model)))}")
    if pipeline > model.num_layers:
        raise ValueError(f"pipeline: {model.name} has {model.num_layers} layers, fewer than {pipeline} stages")


def _tensor_problem(model: ModelSpec, tensor: int) -> str | None:
    kv = model.num_kv_heads
    if model.num_heads % tensor:
        return f"{model.name} has {model.num_heads} attention heads, which {tensor} does not divide"
    if kv % tensor and tensor % kv:
        return f"{model.name}'s {kv} KV heads can be neither split nor replicated {tensor} ways"
    if model.ffn_size % tensor:
        return f"{model.name}'s MLP size {model.ffn_size} does not split {tensor} ways"
    return None


def tensor_degrees(model: ModelSpec, limit: int = 64) -> list[int]:
    """Tensor-parallel degrees ``model`` can be split into, up to ``limit``."""
    return [t for t in range(1, limit + 1) if _tensor_problem(model, t) is None]


def shard(model: ModelSpec, tensor: int = 1, pipeline: int = 1) -> ModelSpec:
    """What one GPU of a ``tensor x pipeline`` replica holds and computes
    (its largest stage). ``shard(m, 1, 1) is m``."""
    check_split(model, tensor, pipeline)
    if tensor == 1 and pipeline == 1:
        return model
    name = model.name if tensor == 1 else f"{model.name}-tp{tensor}"
    if pipeline > 1:
        name += f"-pp{pipeline}"
    return replace(
        model, name=name,
        num_heads=model.num_heads // tensor,
        num_kv_heads=max(1, model.num_kv_heads // tensor),
        ffn_size=model.ffn_size // tensor,
        vocab_size=math.ceil(model.vocab_size / tensor),
        num_layers=math.ceil(model.num_layers / pipeline),
        # a pipeline stage holds the embedding or the LM head, never both
        tied_embeddings=model.tied_embeddings or pipeline > 1,
    )


def resolve_profiled(name: str) -> ModelSpec:
    """The model a profile directory is named for: a preset, or a preset's
    tensor shard written ``<preset>-tp<T>`` (what ``pagesim calibrate --tp`` files)."""
    from sim.presets import MODELS, resolve_model

    base, sep, degree = name.rpartition("-tp")
    if name not in MODELS and sep and base in MODELS and degree.isdigit():
        return shard(MODELS[base], int(degree))
    return resolve_model(name)


def compute_shard(model: ModelSpec, par: Parallelism) -> ModelSpec:
    """The model whose step time is one step of the replica's GPU work: the
    tensor shard with every layer (the stages run one after another)."""
    return shard(model, par.tensor, 1)


def memory_shard(model: ModelSpec, par: Parallelism) -> ModelSpec:
    """The model one GPU's memory holds (weights and KV of its stage)."""
    return shard(model, par.tensor, par.pipeline)


class CommModel:
    """Seconds of communication in one step of a parallel replica: analytic,
    or, with ``measured`` collectives of its tensor group's size, the
    measured all-reduce and all-gather times, and the measured stage-to-stage
    hand-off (``send_recv``) where the table has it (else, and for a
    pipeline without tensor parallelism, the sends stay analytic)."""

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, par: Parallelism,
                 measured: dict[str, CollectiveTimes] | None = None, source: str = "") -> None:
        self.par = par
        self.measured = measured if par.tensor > 1 else None
        self.note = COMMUNICATION_NOTE if self.measured is None else f"measured ({source})"
        self._row_bytes = model.hidden_size * model.dtype_bytes
        self._logit_bytes_per_seq = math.ceil(model.vocab_size / par.tensor) * model.dtype_bytes
        self.latency_s = hardware.collective_latency_s
        bus_Bps = hardware.nvlink_bandwidth_Bps * hardware.achievable_nvlink_frac
        t, p = par.tensor, par.pipeline
        row_bytes = model.hidden_size * model.dtype_bytes
        self._all_reduces = (2 * model.num_layers + 1) if t > 1 else 0
        self._reduce_s_per_row = 2 * (t - 1) / t * row_bytes / bus_Bps if t > 1 else 0.0
        self._gather_s_per_seq = (t - 1) / t * model.vocab_size * model.dtype_bytes / bus_Bps if t > 1 else 0.0
        self._sends = p - 1
        self._send_s_per_row = row_bytes / bus_Bps

    def step_s(self, rows: int | np.ndarray, seqs: int | np.ndarray) -> float | np.ndarray:
        """Communication of a step of ``rows`` GEMM rows and ``seqs`` sequences."""
        t_s = 0.0
        if self._all_reduces and self.measured is not None:
            t_s = (self._all_reduces * self.measured["all_reduce"](rows * self._row_bytes)
                   + self.measured["all_gather"](seqs * self._logit_bytes_per_seq))
        elif self._all_reduces:
            t_s = (self._all_reduces * (self.latency_s + rows * self._reduce_s_per_row)
                   + self.latency_s + seqs * self._gather_s_per_seq)
        if self._sends and self.measured is not None and "send_recv" in self.measured:
            t_s = t_s + self._sends * self.measured["send_recv"](rows * self._row_bytes)
        elif self._sends:
            t_s = t_s + self._sends * (self.latency_s + rows * self._send_s_per_row)
        return t_s


class ParallelCostModel:
    """A replica's step: the tensor shard's step time (any cost model, built
    on ``compute_shard``) plus ``CommModel``'s communication."""

    def __init__(self, inner, comm: CommModel) -> None:
        self.inner = inner
        self.comm = comm
        par = comm.par
        kind = "analytic" if comm.measured is None else "measured"
        self.name = f"{inner.name} + {kind} communication (tp{par.tensor}, pp{par.pipeline})"

    def __repr__(self) -> str:
        return f"ParallelCostModel({self.inner!r}, tensor={self.comm.par.tensor}, pipeline={self.comm.par.pipeline})"

    def step_time(self, batch: Batch) -> float:
        if batch.is_empty:
            return 0.0
        rows = batch.num_tokens
        comm = self.comm.step_s(rows, batch.num_seqs) if rows else 0.0
        return self.inner.step_time(batch) + comm

    def decode_run_times(self, batch: Batch, num_steps: int, first_step: int = 0) -> np.ndarray:
        times = self.inner.decode_run_times(batch, num_steps, first_step)
        if batch.is_empty or not batch.num_tokens:
            return times
        # a decode run keeps its rows and sequences: the same communication every step
        return times + self.comm.step_s(batch.num_tokens, batch.num_seqs)
