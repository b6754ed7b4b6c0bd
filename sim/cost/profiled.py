"""The ``profiled`` cost model: a step's time summed from operator timings
measured on a GPU by ``pagesim calibrate`` (kernels/calibration/profile.py).

A step is priced as the sum of what the real step runs (kernels/calibration/model.py):

* **token operators** -- the QKV, output, MLP GEMMs, norms, rotary, activation,
  residual adds, KV write (per layer, times ``num_layers``) and the embedding
  (once), each a function of the step's rows ``T`` (prefill tokens + decode
  sequences, padding included). Each operator's measurements over a
  log-spaced grid of ``T`` are interpolated **linearly in T** between grid
  points, **extrapolated linearly** above the largest point with the last
  segment's slope, and **clamped** below the smallest; the per-layout sum of
  all of them is precomputed into one table.
* **sequence operators** -- LM head, final norm, greedy sampling, over the
  number of sequences ``S`` (one logit row each); same rules. Each operator's
  points are first made non-decreasing in the count (a point above a larger
  count's time is lowered to it).
* **decode attention**, per layer and layout, from each sequence's own
  context: ``U(B, c)`` is the measured time of a *uniform* batch of ``B``
  sequences of context ``c``, interpolated bilinearly over the (B, c) grid
  (same extrapolation and clamping rules per axis). A batch of contexts
  ``c_i`` costs ``U(B, mean) + s(B) * (U(B, max) - U(B, mean))``, where the
  skew weight ``s(B)`` in [0, 1] is fitted on the profiled *skewed* batches
  (0: only the mean matters, the GPU balances the work; 1: the longest
  sequence sets the time, one wave of split-K programs). So a skewed batch
  costs at least what a uniform batch of the same mean costs.
* **prefill attention**, per layer and layout: a non-negative least-squares
  fit (relative error) of the profiled prompt mixes on the features of
  ``prefill_features`` -- programs, keys streamed (causal and cached
  context), and a wave term ``max(longest sequence, keys per SM)``.
* a fixed per-step term: the CUDA-graph launch (``overhead.csv``) plus the
  median residual (measured - summed operators) of the profile's
  *calibration* steps in ``steps.csv`` -- kernel-to-kernel transitions that
  no operator timed alone contains; the *held-out* steps are never read;
* swap traffic over PCIe (``tokens x kv_bytes_per_token / pcie_bandwidth_Bps``).

**How the real engine launches a step** (``engine_steps.csv``, written by the
engine phase of ``pagesim calibrate``: per-step measurements of calibration
serving runs, never the runs a fidelity report judges). When the profile has
it, a step costs what the engine spends on it:

* a decode-only step of ``n`` sequences replays the CUDA graph of the
  smallest captured batch size ``>= n`` (``sim/cost/graphs.py``): its GEMMs,
  norms and LM head run on that many rows, then a fitted constant (input
  copies, replay, the synchronisation);
* any other step runs eagerly: the host issues the kernels one by one while
  the GPU runs them, so it takes ``max(GPU time, issue time)`` plus a fitted
  constant, the issue time fitted on whether the step has prefills and
  decodes (the kernel count per layer);
* plus the host's own time per step (scheduling, inputs, bookkeeping),
  linear in rows, prefill tokens and whether a graph ran (non-negative least
  squares).

Static batches need nothing special: their ``Batch`` already carries padded
shapes. ``paged_attention_overhead``, if given, replaces the measured paged
kernels by the contiguous ones times that ratio (decode attention, and the
cached-context term of prefill attention). Details: docs/calibration.md.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from itertools import repeat
from operator import truediv
from pathlib import Path

import numpy as np
import pandas as pd

from sim.batch import Batch
from sim.cost.base import decode_run_times_by_steps
from sim.cost.engine_terms import EngineTerms, fit_engine_terms
from sim.cost.graphs import bucket_for
from sim.cost.interpolation import Bilinear, PiecewiseLinear, _summed, interp
from sim.cost.profile_io import LAYOUTS, check_enum, json_lists, nnls, read_csv
from sim.presets import HardwareSpec, ModelSpec

REQUIRED_FILES = ("gemm.csv", "elementwise.csv", "decode_attention.csv", "prefill_attention.csv",
                  "overhead.csv", "provenance.json")
OPERATOR_COLUMNS = ("op", "scope", "axis", "layout", "calls", "count", "seconds")
GEOMETRY_FIELDS = ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size", "vocab_size", "mlp")
FIXED_OVERHEADS = ("graph_launch_s",)


def default_profile_dir(hardware_name: str, model_name: str) -> Path:
    """The committed ``kernels/profiles/<hardware>/<model>/`` of the installed package."""
    from kernels import PROFILES_DIR  # the package's __init__ imports neither torch nor triton

    return PROFILES_DIR / hardware_name / model_name


def has_profiles(path: str | Path) -> bool:
    return all((Path(path) / name).is_file() for name in REQUIRED_FILES)


@functools.lru_cache(maxsize=None)
def measured_step_overhead_s(hardware_name: str) -> tuple[float, str] | None:
    """The fixed part of a step as the committed profiles measured it: per
    profiled model, the GPU's fixed term (graph launch plus calibration
    residual) plus the engine's host time of a one-sequence step where
    engine terms exist; the median over the models of ``hardware_name``, or
    over every profiled GPU if it has none. ``(seconds, where)``, or None
    when no profiles are installed. The roofline model's default fixed term,
    so that a GPU without profiles is priced on the same footing as one with."""
    from sim.presets import HARDWARE, MODELS   # noqa: PLC0415 (names, beside the module's types)

    from kernels import PROFILES_DIR as root
    if not root.is_dir():
        return None
    mine = [d for d in sorted((root / hardware_name).glob("*")) if has_profiles(d)] \
        if (root / hardware_name).is_dir() else []
    dirs = mine or [d for d in sorted(root.glob("*/*")) if has_profiles(d)]
    values = []
    for d in dirs:
        if d.name not in MODELS or d.parent.name not in HARDWARE:
            continue
        cost = ProfiledCostModel.from_dir(d, MODELS[d.name], HARDWARE[d.parent.name])
        host = cost.engine.host_s(1, 0, True) if cost.engine is not None else 0.0
        values.append(cost.fixed_s + host)
    if not values:
        return None
    gpus = hardware_name if mine else ", ".join(sorted({d.parent.name for d in dirs}))
    return float(np.median(values)), f"median of {len(values)} profiled models on {gpus}"


SHORT_RUN_STEPS = 12
"""Decode runs of at most this many steps are priced in Python floats."""


@dataclass(frozen=True)
class DecodeAttention:
    uniform: Bilinear
    skew: PiecewiseLinear        # s(B) in [0, 1]
    scale: float = 1.0
    _rows: dict = field(default_factory=dict, compare=False, repr=False)   # b -> (xs, ys, s(b))

    def _row(self, b: int) -> tuple[np.ndarray, np.ndarray, float]:
        """U(b, .) as one piecewise-linear row for ``interp``, and s(b); cached per b."""
        row = self._rows.get(b)
        if row is None:
            row = self._rows[b] = (*self.uniform.row(b), self.skew(b))
        return row

    def __call__(self, b: int, total_context: int, max_context: int) -> float:
        xs, ys, skew = self._row(b)       # the same arithmetic as ``many``, so runs repeat steps exactly
        um, longest = interp((total_context / b, max_context), xs, ys).tolist()
        return self.scale * (um + skew * (longest - um))

    def many(self, b: int, total_context: np.ndarray, max_context: np.ndarray) -> np.ndarray:
        """``__call__`` over arrays, in place where it can: the same operations
        on each element (IEEE products and sums commute, and 1.0 * x is x)."""
        xs, ys, skew = self._row(b)
        um = interp(total_context / b, xs, ys)
        out = interp(max_context, xs, ys)
        out -= um
        out *= skew
        out += um
        if self.scale != 1.0:
            out *= self.scale
        return out


@dataclass(frozen=True)
class PrefillAttention:
    """``coef . prefill_features(...)``."""

    coef: tuple[float, ...]
    block_m: int
    num_heads: int
    num_sms: int

    def __call__(self, new_tokens, context_tokens) -> float:
        c0, c1, c2, c3, c4 = self.coef
        _, tiles, causal, context, wave = _features(new_tokens, context_tokens, self.block_m, self.num_heads,
                                                    self.num_sms)
        return c0 + c1 * tiles + c2 * causal + c3 * context + c4 * wave


def _features(new_tokens, context_tokens, block_m: int, num_heads: int, num_sms: int) -> tuple[float, ...]:
    tiles = causal = context = longest = 0
    for n, c in zip(new_tokens, context_tokens):
        t = -(-n // block_m)
        tiles += t
        causal += block_m * t * (t + 1) // 2 - (t * block_m - n)
        context += t * c
        longest = max(longest, n + c)
    h = num_heads
    return 1.0, float(h * tiles), float(h * causal), float(h * context), max(longest, h * (causal + context) / num_sms)


def prefill_features(new_tokens, context_tokens, block_m: int, num_heads: int, num_sms: int) -> np.ndarray:
    """Work of the prefill kernel, which runs one program per (query tile of
    ``block_m`` tokens, head), each streaming its keys (cached context, then
    new tokens up to the tile's end): a constant; programs; causal keys and
    context keys streamed by all programs; and the wave term ``max(longest
    sequence, all keys / SMs)`` -- the longest program's keys when the grid
    is small, the per-SM share when it is full."""
    return np.array(_features(new_tokens, context_tokens, block_m, num_heads, num_sms))


# ---- loading -----------------------------------------------------------------
def _operator_tables(frames: list[tuple[pd.DataFrame, Path]], num_layers: int):
    """Per layout: summed token table; and the summed sequence table."""
    tokens: dict[str, list[tuple[PiecewiseLinear, float]]] = {lay: [] for lay in LAYOUTS}
    seqs: list[tuple[PiecewiseLinear, float]] = []
    for df, path in frames:
        for col, allowed in (("scope", ("layer", "step")), ("axis", ("tokens", "seqs")),
                             ("layout", ("any", *LAYOUTS))):
            check_enum(df, col, allowed, path)
        for (op, scope, axis, layout), g in df.groupby(["op", "scope", "axis", "layout"], sort=True):
            if g["count"].duplicated().any():
                raise ValueError(f"{path}: operator {op} ({layout}) has duplicate counts")
            g = g.sort_values("count")
            # non-decreasing: a grid count where cuBLAS picked a slow kernel is
            # lowered to the next larger count's time instead of spreading to
            # its neighbours (docs/calibration.md)
            envelope = np.minimum.accumulate(g["seconds"].to_numpy(float)[::-1])[::-1]
            curve = PiecewiseLinear(g["count"].to_numpy(float), envelope)
            weight = float(g["calls"].iloc[0]) * (num_layers if scope == "layer" else 1)
            if axis == "seqs":
                seqs.append((curve, weight))
            else:
                for lay in (LAYOUTS if layout == "any" else (layout,)):
                    tokens[lay].append((curve, weight))
    return {lay: _summed(parts) for lay, parts in tokens.items()}, _summed(seqs)


def _decode_attention(df: pd.DataFrame, path: Path, layout: str, scale: float) -> DecodeAttention:
    """Uniform (B, c) table and fitted skew weights of one layout."""
    rows = df[df["layout"] == layout]
    uni, skewed = rows[rows["kind"] == "uniform"], rows[rows["kind"] == "skewed"]
    bs = sorted(float(b) for b in uni["batch"].unique())
    cs = sorted(float(c) for c in uni["mean_context_tokens"].unique())
    if len(bs) < 2 or len(cs) < 2 or skewed.empty:
        raise ValueError(f"{path}: layout {layout} needs uniform rows over >= 2 batch sizes and >= 2 "
                         f"contexts, and skewed rows")
    values = np.empty((len(bs), len(cs)))
    for i, b in enumerate(bs):
        r = uni[uni["batch"] == b]
        if len(r) < 2:
            raise ValueError(f"{path}: layout {layout}, batch {b:g} has {len(r)} uniform context(s); needs >= 2")
        values[i] = PiecewiseLinear(r["mean_context_tokens"], r["seconds"]).many(np.asarray(cs))
    uniform = Bilinear(bs, cs, values)
    weights: dict[float, list[float]] = {}
    for b, mean, top, sec in skewed[["batch", "mean_context_tokens", "max_context_tokens", "seconds"]].itertuples(
            index=False):
        um, ux = uniform(b, mean), uniform(b, top)
        if ux - um > 1e-3 * um:
            weights.setdefault(float(b), []).append((sec - um) / (ux - um))
    if not weights:
        raise ValueError(f"{path}: layout {layout}: no skewed row has max context above its mean")
    keys = sorted(weights)
    skew = PiecewiseLinear(keys, [float(np.clip(np.median(weights[k]), 0, 1)) for k in keys], extrapolate=False)
    return DecodeAttention(uniform, skew, scale)


def _fit_prefill(df: pd.DataFrame, path: Path, layout: str, shape: tuple[int, int, int]) -> tuple[float, ...]:
    """Non-negative least squares on relative error (drop the most negative
    feature until none is negative)."""
    rows = df[df["layout"].isin(("any", layout))]
    new, ctx = json_lists(rows, "new_tokens", path), json_lists(rows, "context_tokens", path)
    if len(rows) < 5 or any(len(n) != len(c) or not n for n, c in zip(new, ctx)):
        raise ValueError(f"{path}: layout {layout} needs >= 5 prompt mixes (layout 'any' or '{layout}') "
                         f"with as many context counts as prompts")
    x = np.array([prefill_features(n, c, *shape) for n, c in zip(new, ctx)])
    y = rows["seconds"].to_numpy(float)
    a = x / np.maximum(y, 1e-12)[:, None]
    norm = np.where(np.abs(a).max(axis=0) > 0, np.abs(a).max(axis=0), 1.0)
    active = [j for j in range(x.shape[1]) if np.abs(x[:, j]).max() > 0]
    return tuple(float(c) for c in nnls(a / norm, np.ones(len(y)), active) / norm)


def _calibration_residual_s(path: Path, cost: "ProfiledCostModel") -> float:
    """Median of (measured - summed operators) over the profile's calibration
    steps: what a whole step costs beyond its operators timed alone (kernel
    transitions). 0 without ``steps.csv``. Held-out rows are never read."""
    if not path.is_file():
        return 0.0
    steps = read_csv(path, ("split", "layout", "prefill_new_tokens", "prefill_context_tokens",
                             "decode_context_tokens", "measured_s"))
    calib = steps[steps["split"] == "calibration"]
    if calib.empty:
        return 0.0
    check_enum(calib, "layout", LAYOUTS, path)
    lists = [json_lists(calib, c, path) for c in ("prefill_new_tokens", "prefill_context_tokens",
                                                    "decode_context_tokens")]
    predicted = [cost.step_time(Batch(tuple(n), tuple(c), tuple(d), kv_layout=lay))
                 for n, c, d, lay in zip(*lists, calib["layout"])]
    return float(np.median(pd.to_numeric(calib["measured_s"], errors="raise").to_numpy(float) - predicted))


def _read_provenance(path: Path, model: ModelSpec) -> dict:
    try:
        prov = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: missing profile file (run `pagesim calibrate` on the GPU)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(prov, dict):
        raise ValueError(f"{path}: expected a JSON object")
    geometry = prov.get("geometry", {})
    for field in GEOMETRY_FIELDS:
        if field in geometry and geometry[field] != getattr(model, field):
            raise ValueError(f"{path}: profiled {prov.get('model', '?')} has {field} {geometry[field]!r}, "
                             f"model {model.name} has {getattr(model, field)!r}")
    return prov


# ---- the model ---------------------------------------------------------------
class ProfiledCostModel:
    """Step time summed from GPU-profiled operators; see the module docstring."""

    name = "profiled"

    def __init__(self, *, num_layers: int, tokens: dict[str, PiecewiseLinear], seqs: PiecewiseLinear,
                 decode: dict[str, DecodeAttention], prefill: dict[str, PrefillAttention],
                 fixed_s: float, swap_s_per_token: float, source: str = "",
                 engine: EngineTerms | None = None) -> None:
        self.num_layers, self.tokens, self.seqs = num_layers, tokens, seqs
        self.decode, self.prefill = decode, prefill
        self.fixed_s, self.swap_s_per_token, self.source = fixed_s, swap_s_per_token, source
        self._engine = engine
        self._decode_terms: dict[tuple[str, int], tuple] = {}   # (layout, batch) -> decode run's fixed terms

    @property
    def engine(self) -> EngineTerms | None:
        return self._engine

    @engine.setter
    def engine(self, terms: EngineTerms | None) -> None:
        self._engine = terms
        self._decode_terms = {}

    @classmethod
    def from_dir(cls, path: str | Path, model: ModelSpec, hardware: HardwareSpec,
                 paged_attention_overhead: float | None = None,
                 max_batch_size: int = 256, engine: bool = True) -> "ProfiledCostModel":
        """Read ``path`` (a ``kernels/profiles/<hw>/<model>/`` folder). With
        ``paged_attention_overhead`` set, paged attention is the contiguous
        kernel's time times that ratio instead of the measured paged kernel's.
        ``max_batch_size`` fixes the engine's CUDA-graph batch sizes;
        ``engine=False`` prices GPU time alone, every step as one CUDA graph
        (what ``steps.csv`` measures), ignoring ``engine_steps.csv``."""
        path = Path(path)
        ratio = paged_attention_overhead
        if ratio is not None and not (np.isfinite(ratio) and ratio > 0):
            raise ValueError(f"paged_attention_overhead must be a positive number or None, got {ratio!r}")
        prov = _read_provenance(path / "provenance.json", model)
        frames = [(read_csv(path / f, OPERATOR_COLUMNS), path / f) for f in ("gemm.csv", "elementwise.csv")]
        tokens, seqs = _operator_tables(frames, model.num_layers)
        dec_path, pre_path = path / "decode_attention.csv", path / "prefill_attention.csv"
        dec = read_csv(dec_path, ("layout", "kind", "batch", "mean_context_tokens", "max_context_tokens",
                                   "seconds"))
        check_enum(dec, "kind", ("uniform", "skewed"), dec_path)
        pre = read_csv(pre_path, ("layout", "new_tokens", "context_tokens", "seconds"))
        check_enum(pre, "layout", ("any", *LAYOUTS), pre_path)
        shape = (int(prov.get("prefill_block_m", 128)), model.num_heads, int(prov.get("num_sms", hardware.num_sms)))
        prefill = {lay: PrefillAttention(_fit_prefill(pre, pre_path, lay, shape), *shape) for lay in LAYOUTS}
        decode = {lay: _decode_attention(dec, dec_path, lay, 1.0) for lay in LAYOUTS}
        overhead = read_csv(path / "overhead.csv", ("name", "seconds"))
        cost = cls(num_layers=model.num_layers, tokens=tokens, seqs=seqs, decode=decode, prefill=prefill,
                   fixed_s=float(overhead.loc[overhead["name"].isin(FIXED_OVERHEADS), "seconds"].sum()),
                   swap_s_per_token=model.kv_bytes_per_token / hardware.pcie_bandwidth_Bps, source=str(path))
        cost.fixed_s += _calibration_residual_s(path / "steps.csv", cost)
        cost._decode_terms.clear()
        if ratio is not None:
            c = prefill["contiguous"].coef
            prefill["paged"] = PrefillAttention((*c[:3], c[3] * ratio, c[4]), *shape)
            decode["paged"] = _decode_attention(dec, dec_path, "contiguous", float(ratio))
        if engine:
            cost.engine = fit_engine_terms(path / "engine_steps.csv", cost, max_batch_size)
        return cost

    def gpu_s(self, layout: str, rows: int, new, context, decode_seqs: int, decode_context_sum: int,
              decode_context_max: int) -> float:
        """GPU time of a step computing ``rows`` rows (padding included) of
        which ``new``/``context`` are the prefills and the decodes attend
        ``decode_context_sum`` keys in all (at most ``decode_context_max``)."""
        t = self.tokens[layout](rows) + self.seqs(rows - sum(new) + len(new)) + self.fixed_s
        if decode_seqs:
            t += self.num_layers * self.decode[layout](decode_seqs, decode_context_sum, decode_context_max)
        if new:
            t += self.num_layers * self.prefill[layout](new, context)
        return t

    def step_parts(self, layout: str, new, context, decode_seqs: int, decode_context_sum: int,
                   decode_context_max: int, swap_tokens: int = 0) -> tuple[float, float, float]:
        """``(host, device, swap)`` seconds of a step of this shape: the
        engine's host time (0 without engine terms), the GPU time as launched,
        and the swap copies."""
        swap = swap_tokens * self.swap_s_per_token
        rows = sum(new) + decode_seqs
        engine = self._engine
        if rows == 0:
            return (engine.host_s(len(new) + decode_seqs, 0, False) if engine else 0.0), 0.0, swap
        args = (new, context, decode_seqs, decode_context_sum, decode_context_max)
        if engine is None:
            return 0.0, self.gpu_s(layout, rows, *args), swap
        bucket = None if new else bucket_for(engine.graph_sizes, decode_seqs)
        if bucket is not None:
            device = self.gpu_s(layout, bucket, *args) + engine.graph_residual_s
        else:
            device = max(self.gpu_s(layout, rows, *args), engine.issue_s(bool(new), bool(decode_seqs))) \
                + engine.eager_residual_s
        return engine.host_s(len(new) + decode_seqs, sum(new), bucket is not None), device, swap

    def step_time(self, batch: Batch) -> float:
        host, device, swap = self.step_parts(
            batch.kv_layout, batch.prefill_new_tokens, batch.prefill_context_tokens,
            len(batch.decode_context_tokens), *batch.decode_totals(), batch.swap_in_tokens + batch.swap_out_tokens)
        return swap + device + host

    def decode_run_times(self, batch: Batch, num_steps: int, first_step: int = 0) -> np.ndarray:
        """Vectorised over the run for a pure decode batch; the same numbers as
        ``decode_run_times_by_steps`` (which any other batch falls back to)."""
        b = len(batch.decode_context_tokens)
        if batch.prefill_new_tokens or not b or batch.swap_in_tokens or batch.swap_out_tokens:
            return decode_run_times_by_steps(self, batch, num_steps, first_step)
        layout, engine = batch.kv_layout, self._engine
        key = (layout, b)
        terms = self._decode_terms.get(key)
        if terms is None:        # the same additions, in the same order, as step_time
            bucket = bucket_for(engine.graph_sizes, b) if engine is not None else None
            rows = bucket or b
            terms = (self.tokens[layout](rows) + self.seqs(rows) + self.fixed_s, bucket,
                     engine.host_s(b, 0, bucket is not None) if engine is not None else 0.0)
            self._decode_terms[key] = terms
        fixed, bucket, host = terms
        dec_sum, dec_max = batch.decode_totals()
        if num_steps <= SHORT_RUN_STEPS:
            return np.array(self._short_run(layout, b, dec_sum + first_step * b, dec_max + first_step,
                                            num_steps, terms))
        step = np.arange(first_step, first_step + num_steps, dtype=np.int64)
        total = step * b
        total += dec_sum
        step += dec_max
        gpu = self.decode[layout].many(b, total, step)
        gpu *= self.num_layers          # the step's attention
        gpu += fixed                    # step_time's sums in its order; its 0.0 + x is x for x > 0
        if engine is None:
            return gpu
        if bucket is not None:
            gpu += engine.graph_residual_s
        else:
            np.maximum(gpu, engine.issue_s(False, True), out=gpu)
            gpu += engine.eager_residual_s
        gpu += host
        return gpu

    def _short_run(self, layout: str, b: int, total: int, longest: int, num_steps: int,
                   terms: tuple) -> list[float]:
        """``decode_run_times`` of a few steps in Python floats (a run an
        arrival soon cuts): one interpolation call for all of them, then each
        step's products and sums exactly as the vectorised path does them."""
        attn = self.decode[layout]
        xs, ys, skew = attn._row(b)
        # the steps' mean contexts (total + i * b) / b, then their longest contexts (no Python frames)
        at = interp([*map(truediv, range(total, total + num_steps * b, b), repeat(b, num_steps)),
                     *range(longest, longest + num_steps)], xs, ys).tolist()
        fixed, bucket, host = terms
        engine, layers, scale = self._engine, self.num_layers, attn.scale
        out = []
        for um, top in zip(at[:num_steps], at[num_steps:]):
            gpu = (top - um) * skew + um
            if scale != 1.0:
                gpu *= scale
            gpu = gpu * layers + fixed
            if engine is not None:
                if bucket is not None:
                    gpu += engine.graph_residual_s
                else:
                    gpu = max(gpu, engine.issue_s(False, True)) + engine.eager_residual_s
                gpu += host
            out.append(gpu)
        return out
