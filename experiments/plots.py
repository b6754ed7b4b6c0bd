"""Figures of one run and of a sweep, drawn from the files a run writes.

``plot_run`` reads a run directory (``requests.parquet``, ``timeline.parquet``
and, if present, ``summary.json`` for the title); ``plot_sweep`` reads a sweep
directory (``sweep.csv`` and ``points/<point_id>/timeline.parquet``). Both write
PNGs under ``<dir>/plots/`` and return the paths written; docs/plots.md says
how to read each figure.

Figures are ``matplotlib.figure.Figure`` objects drawn with the Agg canvas,
never through pyplot: nothing is shown, no global figure registry fills up.
Each PNG is written to a temporary file beside its target and renamed into
place, so a reader never sees half a file. Timelines are reduced to at most
``MAX_TIMELINE_BINS`` equal time bins (means weighted by each step's
``step_s``, held over bins with no step), so steps need not be equally spaced
and a run of millions of steps plots in well under a second.
"""
from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments.atomic import atomic_path

MAX_TIMELINE_BINS = 1000
CDF_POINTS = 2000  # quantiles drawn per latency CDF
DPI = 110

LATENCY_LABELS = MappingProxyType({
    "ttft_s": "TTFT (s)",
    "tpot_s": "TPOT (s/token)",
    "normalized_latency_s_per_token": "normalized latency (s/token)",
})
REQUEST_COLUMNS = ("status", *LATENCY_LABELS)
QUEUE_COLUMNS = ("running", "waiting", "swapped")
KV_LAYERS = MappingProxyType({  # timeline column -> (legend label, colour), bottom to top
    "kv_token_slots_used": ("real tokens", "tab:blue"),
    "kv_internal_slots": ("internal fragmentation", "tab:orange"),
    "kv_reserved_slots": ("reserved, unused", "tab:red"),
    "kv_external_slots": ("external fragmentation", "tab:purple"),
})
FREE_LAYER = ("free", "0.88")
TIMELINE_COLUMNS = ("t_s", "replica", "step_s", "batch_seqs", *QUEUE_COLUMNS,
                    *KV_LAYERS, "kv_total_slots")


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
    ax.set_ylabel("fraction of KV slots")
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
    if len(columns) > 1:
        ax.legend(loc="upper left", fontsize="x-small")


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


# --------------------------------------------------------------------- run

def plot_run(run_dir: Path) -> list[Path]:
    """Draw one run's figures into ``run_dir/plots/`` and return their paths:
    ``latency_cdf.png``, ``batch_and_kv.png``, ``queues.png``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: run directory not found")
    requests = read_parquet_columns(run_dir / "requests.parquet", REQUEST_COLUMNS)
    timeline = read_parquet_columns(run_dir / "timeline.parquet", TIMELINE_COLUMNS)
    label = _config_label(run_dir)
    edges_s, binned = bin_timeline(timeline)
    num_replicas = int(timeline["replica"].nunique())
    scope = f"{num_replicas} replicas summed" if num_replicas > 1 else "one replica"
    plots = _plots_dir(run_dir)
    return [
        save_figure(_latency_cdf_figure(requests, label), plots / "latency_cdf.png"),
        save_figure(_batch_kv_figure(edges_s, binned, f"{label} ({scope})"),
                    plots / "batch_and_kv.png"),
        save_figure(_queues_figure(edges_s, binned, f"{label} ({scope})"), plots / "queues.png"),
    ]


def _latency_cdf_figure(requests: pd.DataFrame, label: str) -> Figure:
    finished = requests[requests["status"] == "finished"]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, len(LATENCY_LABELS))
    for ax, (column, xlabel) in zip(axes, LATENCY_LABELS.items()):
        values = finished[column].to_numpy(float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            _no_data(ax, "no finished requests")
        else:
            fractions = np.linspace(0.0, 1.0, min(values.size, CDF_POINTS))
            ax.step(np.quantile(values, fractions), fractions, where="post")
            for q in (0.5, 0.99):
                ax.axvline(np.quantile(values, q), color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of finished requests")
    fig.suptitle(f"{label}: latency CDFs of {len(finished)} finished of {len(requests)} requests "
                 "(dotted: p50, p99)")
    return fig


def _batch_kv_figure(edges_s: np.ndarray, binned: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(10, 6), layout="constrained")
    batch_ax, kv_ax = fig.subplots(2, 1, sharex=True)
    draw_timeline_lines(batch_ax, edges_s, binned, ["batch_seqs"], "sequences in batch")
    draw_kv_area(kv_ax, edges_s, binned)
    kv_ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"{title}: batch size and KV memory over time")
    return fig


def _queues_figure(edges_s: np.ndarray, binned: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax = fig.subplots()
    draw_timeline_lines(ax, edges_s, binned, QUEUE_COLUMNS, "requests")
    ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"{title}: queue lengths over time")
    return fig


# ------------------------------------------------------------------- sweep

DEFAULT_X_KEY = "workload.arrival.rate_rps"
SWEEP_COLUMNS = ("point_id", "config_label", "throughput_rps", "throughput_tokens_per_s",
                 "normalized_latency_s_per_token_mean", "ttft_s_p50", "ttft_s_p99",
                 "tpot_s_p50", "tpot_s_p99")
# A swept key is a dotted config path or one of these top-level config fields;
# every other column of sweep.csv comes from the summary.
TOP_LEVEL_CONFIG_KEYS = frozenset({"name", "seed", "model", "hardware", "horizon_s",
                                   "fast_forward"})
SWEEP_TIMELINE_COLUMNS = ("t_s", "replica", "step_s", "batch_seqs", *KV_LAYERS, "kv_total_slots")
# One panel: y label and its lines as (column, line style, legend suffix).
LinePanel = tuple[str, tuple[tuple[str, str, str], ...]]
THROUGHPUT_PANELS: tuple[LinePanel, ...] = (
    ("throughput (requests/s)", (("throughput_rps", "-", ""),)),
    ("throughput (output tokens/s)", (("throughput_tokens_per_s", "-", ""),)),
)
NORMALIZED_LATENCY_PANELS: tuple[LinePanel, ...] = (
    ("mean normalized latency (s/token)", (("normalized_latency_s_per_token_mean", "-", ""),)),
)
TTFT_TPOT_PANELS: tuple[LinePanel, ...] = (
    ("TTFT (s)", (("ttft_s_p50", "-", " p50"), ("ttft_s_p99", "--", " p99"))),
    ("TPOT (s/token)", (("tpot_s_p50", "-", " p50"), ("tpot_s_p99", "--", " p99"))),
)


@dataclass(frozen=True)
class SweepAxis:
    """The swept key on the x axis: its numeric values, or, when any value is
    not a number, categories placed at 0, 1, 2... in the order the sweep lists
    them."""

    key: str
    categories: tuple[str, ...] = ()

    def label(self, x: float) -> str:
        return self.categories[int(x)] if self.categories else f"{x:g}"

    def decorate(self, ax: Axes) -> None:
        ax.set_xlabel(self.key)
        if self.categories:
            ax.set_xticks(range(len(self.categories)), self.categories)


def read_sweep(sweep_dir: Path, x_key: str) -> tuple[pd.DataFrame, SweepAxis]:
    """``sweep.csv`` as one row per (series, x): a series is a
    ``config_label`` plus the value of every other swept key that varies."""
    path = sweep_dir / "sweep.csv"
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        sweep = pd.read_csv(path, dtype={"point_id": str, "config_label": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from exc
    require_columns(list(sweep.columns), (*SWEEP_COLUMNS, x_key), path)
    x, categories = _x_positions(sweep[x_key])
    table = sweep[list(SWEEP_COLUMNS)].copy()
    for column in SWEEP_COLUMNS[2:]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["series"] = _series_names(sweep, x_key)
    table["x"] = x
    table = table.dropna(subset=["x"]).drop_duplicates(["series", "x"])
    if table.empty:
        raise ValueError(f"{path}: no row has a value in column {x_key!r}")
    return table, SweepAxis(x_key, categories)


def _x_positions(values: pd.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    if values.dtype != bool:
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum():
            return numeric.to_numpy(float), ()
    categories = tuple(dict.fromkeys(str(v) for v in values.dropna()))
    positions = {name: float(i) for i, name in enumerate(categories)}
    return np.array([positions[str(v)] if pd.notna(v) else np.nan for v in values]), categories


def _series_names(sweep: pd.DataFrame, x_key: str) -> pd.Series:
    """``config_label``, extended by ``key=value`` for each other swept key
    that takes several values under one name so far (keys that only restate
    the label, such as the batching policy, add nothing)."""
    names = sweep["config_label"].fillna("?").astype(str)
    for column in sweep.columns:
        swept = column != x_key and ("." in column or column in TOP_LEVEL_CONFIG_KEYS)
        if swept and sweep.groupby(names)[column].nunique(dropna=False).max() > 1:
            names = names + f", {column.rsplit('.', 1)[-1]}=" + sweep[column].astype(str)
    return names


def choose_x(table: pd.DataFrame, sweep_dir: Path) -> tuple[float | None, list[str]]:
    """The highest x at which every series has a point with a timeline (or,
    if no x has all, the highest covered by the most series), and the series
    lacking one there. ``None`` if no point has a timeline."""
    has_timeline = table["point_id"].map(
        lambda pid: isinstance(pid, str) and _timeline_path(sweep_dir, pid).is_file())
    covered = table[has_timeline]
    if covered.empty:
        return None, sorted(table["series"].unique())
    count = covered.groupby("x")["series"].nunique()
    chosen_x = float(count[count == count.max()].index.max())
    present = set(covered.loc[covered["x"] == chosen_x, "series"])
    return chosen_x, sorted(set(table["series"]) - present)


def _timeline_path(sweep_dir: Path, point_id: str) -> Path:
    return sweep_dir / "points" / point_id / "timeline.parquet"


def plot_sweep(sweep_dir: Path, x_key: str = DEFAULT_X_KEY, *,
               log_latency: bool = False) -> list[Path]:
    """Draw a sweep's figures into ``sweep_dir/plots/`` and return their paths:
    ``throughput.png``, ``normalized_latency.png`` (log y if ``log_latency``),
    ``ttft_tpot.png``, ``kv_waste.png``, ``timelines.png``."""
    sweep_dir = Path(sweep_dir)
    table, axis = read_sweep(sweep_dir, x_key)
    names = sorted(table["series"].unique())
    colours = series_colours(names)
    plots = _plots_dir(sweep_dir)
    written = [
        save_figure(_line_figure(table, axis, colours, THROUGHPUT_PANELS, "Throughput"),
                    plots / "throughput.png"),
        save_figure(_line_figure(table, axis, colours, NORMALIZED_LATENCY_PANELS,
                                 "Normalized latency", log_y=log_latency),
                    plots / "normalized_latency.png"),
        save_figure(_line_figure(table, axis, colours, TTFT_TPOT_PANELS,
                                 "TTFT and TPOT (solid p50, dashed p99)"),
                    plots / "ttft_tpot.png"),
    ]
    chosen_x, missing = choose_x(table, sweep_dir)
    timelines = {} if chosen_x is None else {
        row.series: read_parquet_columns(_timeline_path(sweep_dir, row.point_id),
                                         SWEEP_TIMELINE_COLUMNS)
        for row in table[table["x"] == chosen_x].itertuples() if row.series not in missing}
    where = _chosen_x_note(axis, chosen_x, missing)
    written.append(save_figure(_kv_waste_figure(names, timelines, where), plots / "kv_waste.png"))
    written.append(save_figure(_timelines_figure(names, colours, timelines, where),
                               plots / "timelines.png"))
    return written


def _chosen_x_note(axis: SweepAxis, chosen_x: float | None, missing: list[str]) -> str:
    if chosen_x is None:
        return "no point has a timeline"
    where = f"{axis.key} = {axis.label(chosen_x)}"
    if not missing:
        return f"{where}\n(highest value with data for every configuration)"
    note = f"(highest value with the most data; missing: {', '.join(missing)})"
    return f"{where}\n{textwrap.fill(note, width=70)}"


def _line_figure(table: pd.DataFrame, axis: SweepAxis, colours: dict[str, tuple],
                 panels: Sequence[LinePanel], title: str, log_y: bool = False) -> Figure:
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (ylabel, lines) in zip(axes, panels):
        for name, rows in table.sort_values("x").groupby("series"):
            for column, linestyle, suffix in lines:
                points = rows.dropna(subset=[column])
                ax.plot(points["x"], points[column], linestyle=linestyle, marker="o",
                        markersize=4, color=colours[name], label=f"{name}{suffix}")
        axis.decorate(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
    axes[0].legend(fontsize="x-small")
    fig.suptitle(f"{title} vs {axis.key}")
    return fig


def _kv_waste_figure(names: list[str], timelines: dict[str, pd.DataFrame], where: str) -> Figure:
    fractions = {name: kv_fractions(timeline) for name, timeline in timelines.items()}
    fig = Figure(figsize=(max(7.0, 1.2 * len(names) + 4), 4.8), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(names))
    bottom = np.zeros(len(names))
    for column, (label, colour) in {**KV_LAYERS, "free": FREE_LAYER}.items():
        heights = np.array([fractions.get(name, {}).get(column, 0.0) for name in names])
        ax.bar(positions, heights, bottom=bottom, color=colour, label=label)
        bottom += heights
    for position, name in zip(positions, names):
        real = fractions.get(name, {}).get("kv_token_slots_used")
        text = "no data" if real is None else f"{real:.0%} real"
        ax.text(position, 1.01, text, ha="center", va="bottom", fontsize="small")
    ax.set_xticks(positions, names, rotation=15, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("time-weighted fraction of KV slots")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.suptitle(f"Where KV memory goes, at {where}", fontsize="medium")
    return fig


def _timelines_figure(names: list[str], colours: dict[str, tuple],
                      timelines: dict[str, pd.DataFrame], where: str) -> Figure:
    fig = Figure(figsize=(12, 1.0 + 2.4 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 2, squeeze=False, sharex="row")
    legend_row = next((row for row, name in enumerate(names) if name in timelines), None)
    for row, name in enumerate(names):
        batch_ax, kv_ax = axes[row]
        batch_ax.set_title(name, loc="left", fontsize="small")
        if name not in timelines:
            _no_data(batch_ax, "no point with a timeline here")
            _no_data(kv_ax, "no point with a timeline here")
            continue
        edges_s, binned = bin_timeline(timelines[name])
        draw_timeline_lines(batch_ax, edges_s, binned, ["batch_seqs"], "sequences in batch",
                            colours[name])
        draw_kv_area(kv_ax, edges_s, binned, legend=row == legend_row)
    for ax in axes[-1]:
        ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"Batch size and KV memory over time, at {where}", fontsize="medium")
    return fig
