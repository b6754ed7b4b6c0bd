"""Figures of a sweep: throughput and latency against the swept key, and KV
memory and batch size over time at one chosen value of it."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from experiments.plots.common import (
    FREE_LAYER,
    KV_LAYERS,
    _no_data,
    _plots_dir,
    bin_timeline,
    draw_kv_area,
    draw_timeline_lines,
    kv_fractions,
    read_parquet_columns,
    require_columns,
    save_figure,
    series_colours,
)

DEFAULT_X_KEY = "workload.arrival.rate_rps"
SWEEP_COLUMNS = ("point_id", "config_label", "throughput_rps", "throughput_tokens_per_s",
                 "normalized_latency_s_per_token_mean", "ttft_s_p50", "ttft_s_p99",
                 "tpot_s_p50", "tpot_s_p99")
VERDICT = "steady_state_verdict"     # optional: sweeps written before it lack the column
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
# one panel per metric: a static batch's TTFT can be 100x continuous batching's,
# and on a shared axis the smaller one would lie flat on zero
TTFT_TPOT_PANELS: tuple[LinePanel, ...] = (
    ("TTFT p50 (s)", (("ttft_s_p50", "-", ""),)),
    ("TTFT p99 (s)", (("ttft_s_p99", "-", ""),)),
    ("TPOT p50 (s/token)", (("tpot_s_p50", "-", ""),)),
    ("TPOT p99 (s/token)", (("tpot_s_p99", "-", ""),)),
)
# KV sharing: drawn when some point shared anything (prefix cache, samples, beams)
SHARING_COLUMNS = ("prefix_cache_hit_rate_tokens", "kv_sharing_saving")
SHARING_PANELS: tuple[LinePanel, ...] = (
    ("prefix cache hit rate (share of prefill tokens)", (("prefix_cache_hit_rate_tokens", "-", ""),)),
    ("KV saved by sharing (share of slots held)", (("kv_sharing_saving", "-", ""),)),
)
# the swept key as a quantity and unit, for the x axis
AXIS_LABELS = {
    "workload.arrival.rate_rps": "request rate (req/s)",
    "workload.arrival.cv": "inter-arrival CV",
    "workload.arrival.time_scale": "trace time scale (x recorded)",
    "workload.num_requests": "requests",
    "engine.batching.max_batch_size": "max batch size (sequences)",
    "engine.batching.max_batch_tokens": "max batch tokens",
    "engine.batching.max_wait_s": "max wait for a batch (s)",
    "engine.batching.policy": "batching policy",
    "engine.memory.layout": "KV layout",
    "engine.memory.block_size": "block size (tokens)",
    "engine.memory.reservation": "contiguous reservation",
    "engine.memory.gpu_memory_utilization": "GPU memory utilization",
    "engine.memory.num_blocks": "KV blocks",
    "engine.memory.num_tokens": "KV token slots",
    "engine.memory.watermark": "watermark (fraction of blocks)",
    "engine.memory.swap_space_gb": "swap space (GB)",
    "engine.replicas": "replicas",
    "horizon_s": "horizon (s)",
}
LOG_SPAN = 8.0      # an x (or latency) range of at least this ratio is drawn on a log scale


@dataclass(frozen=True)
class SweepAxis:
    """The swept key on the x axis: its numeric values, or, when any value is
    not a number, categories placed at 0, 1, 2... in the order the sweep lists
    them."""

    key: str
    categories: tuple[str, ...] = ()

    def label(self, x: float) -> str:
        return self.categories[int(x)] if self.categories else f"{x:g}"

    @property
    def title(self) -> str:
        """The quantity and its unit (``request rate (req/s)``), not the config key."""
        if self.key in AXIS_LABELS:
            return AXIS_LABELS[self.key]
        name = self.key.rsplit(".", 1)[-1]
        for suffix, unit in (("_rps", " (req/s)"), ("_gb", " (GB)"), ("_s", " (s)")):
            if name.endswith(suffix):
                return name[: -len(suffix)].replace("_", " ") + unit
        return name.replace("_", " ")

    def decorate(self, ax: Axes, values: np.ndarray) -> None:
        """Label the axis; categories at 0, 1, ...; a positive range that
        spans ``LOG_SPAN`` or more (rates that double) on a log scale, ticked
        at the swept values."""
        ax.set_xlabel(self.title)
        if self.categories:
            ax.set_xticks(range(len(self.categories)), self.categories)
            return
        ticks = np.unique(values[np.isfinite(values)])
        if len(ticks) >= 3 and ticks.min() > 0 and ticks.max() / ticks.min() >= LOG_SPAN:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}" for t in ticks])


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
    for column in SHARING_COLUMNS:           # optional: sweeps written before them lack the columns
        if column in sweep.columns:
            table[column] = pd.to_numeric(sweep[column], errors="coerce")
    table["saturated"] = (sweep[VERDICT] == "saturated") if VERDICT in sweep.columns else False
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
        if swept and sweep[column].astype(str).groupby(names).nunique(dropna=False).max() > 1:
            names = names + ", " + _value_names(column, sweep[column])
    return names


def _value_names(column: str, values: pd.Series) -> pd.Series:
    """``key=value`` for a swept column; a swept mapping (a whole
    ``engine.batching``, say) names only the entries that differ between
    its values, so legends stay short."""
    maps = [_mapping(v) for v in values]
    if all(m is not None for m in maps):
        keys = list(dict.fromkeys(k for m in maps for k in m))
        differ = [k for k in keys if len({repr(m.get(k)) for m in maps}) > 1]
        return pd.Series([", ".join(f"{k}={m.get(k)}" for k in differ) for m in maps], index=values.index)
    return f"{column.rsplit('.', 1)[-1]}=" + values.astype(str)


def _mapping(value) -> dict | None:
    """A swept value as a mapping: a dict, or its text as sweep.csv keeps it."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.startswith("{"):
        import ast

        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


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
    ``throughput.png``, ``normalized_latency.png`` (log y if ``log_latency``,
    or where the values span ``LOG_SPAN``),
    ``ttft_tpot.png``, ``kv_waste.png``, ``timelines.png``, and
    ``sharing.png`` (prefix cache hit rate, KV saved by sharing) when some
    point shared KV."""
    sweep_dir = Path(sweep_dir)
    table, axis = read_sweep(sweep_dir, x_key)
    names = sorted(table["series"].unique())
    colours = series_colours(names)
    plots = _plots_dir(sweep_dir)
    written = [
        save_figure(_line_figure(table, axis, colours, THROUGHPUT_PANELS, "Throughput"),
                    plots / "throughput.png"),
        save_figure(_line_figure(table, axis, colours, NORMALIZED_LATENCY_PANELS,
                                 "Normalized latency", log_y=True if log_latency else None),
                    plots / "normalized_latency.png"),
        save_figure(_line_figure(table, axis, colours, TTFT_TPOT_PANELS, "TTFT and TPOT", log_y=None),
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
    shared = [c for c in SHARING_COLUMNS if c in table and table[c].fillna(0).gt(0).any()]
    if shared:
        panels = tuple(p for p in SHARING_PANELS if p[1][0][0] in shared)
        written.append(save_figure(_line_figure(table, axis, colours, panels, "KV sharing"),
                                   plots / "sharing.png"))
    return written


def _chosen_x_note(axis: SweepAxis, chosen_x: float | None, missing: list[str]) -> str:
    if chosen_x is None:
        return "no point has a timeline"
    where = f"{axis.title} = {axis.label(chosen_x)}"
    if not missing:
        return f"{where}\n(highest value with data for every configuration)"
    note = f"(highest value with the most data; missing: {', '.join(missing)})"
    return f"{where}\n{textwrap.fill(note, width=70)}"


def _line_figure(table: pd.DataFrame, axis: SweepAxis, colours: dict[str, tuple],
                 panels: Sequence[LinePanel], title: str, log_y: bool | None = False,
                 columns: int = 2) -> Figure:
    """One panel per entry of ``panels`` (at most ``columns`` a row), one
    legend outside them all. ``log_y=None``: log where a panel's positive
    values span ``LOG_SPAN`` or more."""
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.6 * columns + 2.2, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (ylabel, lines) in zip(axes, panels):
        shown = []
        for name, series in table.sort_values("x").groupby("series"):
            for column, linestyle, suffix in lines:
                points = series.dropna(subset=[column])
                ax.plot(points["x"], points[column], linestyle=linestyle, marker="o",
                        markersize=4, color=colours[name], label=f"{name}{suffix}")
                over = points[points["saturated"]]      # hollow: the run could not keep up
                ax.plot(over["x"], over[column], linestyle="none", marker="o", markersize=7,
                        markerfacecolor="white", markeredgecolor=colours[name])
                shown.append(points[column].to_numpy(float))
        axis.decorate(ax, table["x"].to_numpy(float))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        values = np.concatenate(shown) if shown else np.array([])
        positive = values[np.isfinite(values) & (values > 0)]
        span = positive.max() / positive.min() if len(positive) else 1.0
        if log_y or (log_y is None and span >= LOG_SPAN):
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    saturated = "\n(hollow: saturated, the queue grew through the run)" if table["saturated"].any() else ""
    fig.suptitle(f"{title} vs {axis.title}{saturated}")
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
        f = fractions.get(name, {})
        real = f.get("kv_token_slots_used")
        held = sum(f.get(c, 0.0) for c in ("kv_token_slots_used", "kv_internal_slots", "kv_reserved_slots"))
        if real is None:
            text = "no data"
        else:   # the second figure is summary.json's kv_utilization_mean (real / held)
            text = f"real: {real:.0%} of all\n{real / held:.0%} of held" if held > 0 else f"real: {real:.0%} of all"
        ax.text(position, 1.01, text, ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(positions, names, rotation=15, ha="right")
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("time-weighted fraction of all KV slots")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.suptitle(f"Where KV memory goes, at {where}", fontsize="medium")
    return fig


def _timelines_figure(names: list[str], colours: dict[str, tuple],
                      timelines: dict[str, pd.DataFrame], where: str) -> Figure:
    fig = Figure(figsize=(12, 1.0 + 2.4 * len(names)), layout="constrained")
    # one time axis for every configuration, one batch-size scale for every row
    axes = fig.subplots(len(names), 2, squeeze=False, sharex=True)
    for batch_ax in axes[1:, 0]:
        batch_ax.sharey(axes[0, 0])
    legend_row = next((row for row, name in enumerate(names) if name in timelines), None)
    most = 1.0
    for row, name in enumerate(names):
        batch_ax, kv_ax = axes[row]
        batch_ax.set_title(name, loc="left", fontsize="small")
        if name not in timelines:
            _no_data(batch_ax, "no point with a timeline here")
            _no_data(kv_ax, "no point with a timeline here")
            continue
        edges_s, binned = bin_timeline(timelines[name])
        if not binned.empty:
            most = max(most, float(binned["batch_seqs"].max()))
        draw_timeline_lines(batch_ax, edges_s, binned, ["batch_seqs"], "sequences in batch",
                            colours[name])
        draw_kv_area(kv_ax, edges_s, binned, legend=row == legend_row)
    axes[0, 0].set_ylim(0, most * 1.05)       # shared by every row's batch panel
    for ax in axes[-1]:
        ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"Batch size and KV memory over time, at {where}", fontsize="medium")
    return fig
