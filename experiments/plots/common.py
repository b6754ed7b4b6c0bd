"""Shared pieces of the run and sweep figures: reading output files, binning
timelines, KV fractions, drawing helpers, colours and saving."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from experiments.atomic import atomic_path

MAX_TIMELINE_BINS = 1000
DPI = 110

KV_LAYERS = MappingProxyType({  # timeline column -> (legend label, colour), bottom to top
    "kv_token_slots_used": ("real tokens", "tab:blue"),
    "kv_internal_slots": ("internal fragmentation", "tab:orange"),
    "kv_reserved_slots": ("reserved, unused", "tab:red"),
    "kv_external_slots": ("external fragmentation", "tab:purple"),
})
FREE_LAYER = ("free", "0.88")


# ---------------------------------------------------------------- reading

def require_columns(present: Sequence[str], required: Sequence[str], path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` and every required column it lacks."""
    missing = [name for name in required if name not in present]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise ValueError(f"{path}: missing required column(s) {names}; "
                         f"required: {', '.join(required)}")


def read_parquet_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read only ``columns`` of a parquet file, with clear errors for a
    missing or unreadable file or a missing column."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError / ArrowInvalid
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from exc
    require_columns(names, columns, path)
    return pd.read_parquet(path, columns=list(columns))


def _config_label(run_dir: Path) -> str:
    """``config_label`` from ``summary.json`` if the run has one, else the
    directory's name."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return run_dir.name
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    label = summary.get("config_label") if isinstance(summary, dict) else None
    return str(label) if label else run_dir.name


# --------------------------------------------------------------- timelines

def bin_timeline(timeline: pd.DataFrame,
                 num_bins: int = MAX_TIMELINE_BINS) -> tuple[np.ndarray, pd.DataFrame]:
    """Reduce a timeline to equal time bins, summed over replicas.

    Bins span from the first step's ``t_s`` to the end (``t_s + step_s``) of
    the last. Returns ``(edges_s, binned)``: ``num_bins + 1`` bin edges and one
    row per bin holding, per value column, the step-duration-weighted mean within the
    bin (plain mean where every step in it lasted 0 s), carried forward over
    bins with no step, then summed over replicas.
    """
    value_columns = [c for c in timeline.columns if c not in ("t_s", "replica", "step_s")]
    if timeline.empty:
        return np.zeros(1), pd.DataFrame(columns=value_columns, dtype=float)
    t_s = timeline["t_s"].to_numpy(float)
    weights = np.nan_to_num(timeline["step_s"].to_numpy(float)).clip(min=0.0)
    start_s = float(t_s.min())
    span_s = float(np.max(t_s + weights)) - start_s  # the last step lasts until its end
    num_bins = num_bins if span_s > 0 else 1
    scaled = (t_s - start_s) / span_s * num_bins if span_s > 0 else np.zeros_like(t_s)
    bins = np.minimum(scaled.astype(np.int64), num_bins - 1)
    values = {c: np.nan_to_num(timeline[c].to_numpy(float)) for c in value_columns}
    total = pd.DataFrame(0.0, index=range(num_bins), columns=value_columns)
    for rows in timeline.groupby("replica", sort=False).indices.values():
        per_replica = _binned_means(bins[rows], weights[rows],
                                    {c: v[rows] for c, v in values.items()}, num_bins)
        filled = per_replica.ffill()
        if "kv_total_slots" in filled:  # a replica's memory exists before its first step
            filled["kv_total_slots"] = filled["kv_total_slots"].bfill()
        total += filled.fillna(0.0)
    edges_s = start_s + np.linspace(0.0, span_s, num_bins + 1)
    return edges_s, total


def _binned_means(bins: np.ndarray, weights: np.ndarray,
                  values: dict[str, np.ndarray], num_bins: int) -> pd.DataFrame:
    weight_sum = np.bincount(bins, weights, num_bins)
    count = np.bincount(bins, minlength=num_bins).astype(float)
    means = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for column, value in values.items():
            weighted = np.bincount(bins, value * weights, num_bins) / weight_sum
            plain = np.bincount(bins, value, num_bins) / count
            means[column] = np.where(weight_sum > 0, weighted, plain)
    return pd.DataFrame(means)


def kv_fractions(timeline: pd.DataFrame) -> dict[str, float]:
    """Time-weighted fraction of all KV slots in each layer (and ``free``)
    over a whole timeline, replicas pooled; weights are ``step_s`` (equal
    weights if every step lasted 0 s)."""
    weights = np.nan_to_num(timeline["step_s"].to_numpy(float)).clip(min=0.0)
    if weights.sum() <= 0:
        weights = np.ones(len(timeline))
    total = float(np.dot(weights, timeline["kv_total_slots"].to_numpy(float)))
    if total <= 0:
        return {}
    fractions = {c: float(np.dot(weights, timeline[c].to_numpy(float))) / total for c in KV_LAYERS}
    fractions["free"] = max(1.0 - sum(fractions.values()), 0.0)
    return fractions


def _stepped(values: pd.Series | np.ndarray) -> np.ndarray:
    """Bin values extended by their last one, to draw against bin edges with
    ``step="post"``."""
    values = np.asarray(values, dtype=float)
    return np.append(values, values[-1:])


def draw_kv_area(ax: Axes, edges_s: np.ndarray, binned: pd.DataFrame, legend: bool = True) -> None:
    """Stacked area of KV slots by layer, as fractions of all slots."""
    if binned.empty:
        _no_data(ax, "no steps recorded")
        return
    total = binned["kv_total_slots"].to_numpy(float)
    total = np.where(total > 0, total, np.nan)
    bottom = np.zeros(len(binned))
    for column, (label, colour) in KV_LAYERS.items():
        top = bottom + binned[column].to_numpy(float) / total
        ax.fill_between(edges_s, _stepped(bottom), _stepped(top), step="post",
                        color=colour, label=label, linewidth=0)
        bottom = top
    label, colour = FREE_LAYER
    ax.fill_between(edges_s, _stepped(bottom), _stepped(np.where(np.isnan(bottom), np.nan, 1.0)),
                    step="post", color=colour, label=label, linewidth=0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of all KV slots")
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="x-small")


def draw_timeline_lines(ax: Axes, edges_s: np.ndarray, binned: pd.DataFrame,
                        columns: Sequence[str], ylabel: str, colour: tuple | None = None) -> None:
    """One stepped line per column of a binned timeline."""
    if binned.empty:
        _no_data(ax, "no steps recorded")
        return
    for column in columns:
        ax.step(edges_s, _stepped(binned[column]), where="post", label=column, linewidth=1,
                color=colour)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))      # these are counts
    if len(columns) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="x-small")


# ----------------------------------------------------------------- helpers

def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")


def series_colours(names: Sequence[str]) -> dict[str, tuple]:
    """One fixed colour per series name, the same in every figure."""
    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(sorted(names))}


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; never leaves the temporary
    file behind."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _plots_dir(directory: Path) -> Path:
    plots = directory / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    return plots
