"""Figures of one run: latency CDFs, batch size and KV memory, queue lengths."""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from experiments.plots.common import (
    KV_LAYERS,
    _config_label,
    _no_data,
    _plots_dir,
    bin_timeline,
    draw_kv_area,
    draw_timeline_lines,
    read_parquet_columns,
    save_figure,
)

CDF_POINTS = 2000  # quantiles drawn per latency CDF

LATENCY_LABELS = MappingProxyType({
    "ttft_s": "TTFT (s)",
    "tpot_s": "TPOT (s/token)",
    "normalized_latency_s_per_token": "normalized latency (s/token)",
})
REQUEST_COLUMNS = ("status", *LATENCY_LABELS)
QUEUE_COLUMNS = ("running", "waiting", "swapped")
TIMELINE_COLUMNS = ("t_s", "replica", "step_s", "batch_seqs", *QUEUE_COLUMNS,
                    *KV_LAYERS, "kv_total_slots")


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
