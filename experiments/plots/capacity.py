"""Figures of ``pagesim capacity``: the Pareto front of capacity per GPU
against tail latency, and (with prices) cost against capacity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from experiments.plots.common import save_figure


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both axes (higher ``y``
    is better, lower ``x`` is better)."""
    keep = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        better = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not better.any()
    return keep


def _annotate(ax, x, y, names) -> None:
    """Name the Pareto-front points (capacity.csv's ``short`` labels)."""
    for xi, yi, name in zip(x, y, list(names)):
        ax.annotate(name, (xi, yi), fontsize=8, xytext=(4, 4), textcoords="offset points")


def plot_capacity(table: pd.DataFrame, plots_dir: Path, target_rps: float | None = None) -> list[Path]:
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    have = table[table["max_rate_rps"].notna()] if "max_rate_rps" in table else table.iloc[0:0]
    paths = []
    if "ttft_s_p99" in have:
        have = have[have["ttft_s_p99"].notna()]
    if not have.empty and "ttft_s_p99" in have:
        fig = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.add_subplot()
        x, y = have["ttft_s_p99"].to_numpy(float), have["goodput_per_gpu_rps"].to_numpy(float)
        front = pareto_front(x, y)
        ax.scatter(x[~front], y[~front], color="0.6", label="dominated (see capacity.csv)")
        ax.scatter(x[front], y[front], color="tab:red", label="Pareto front")
        order = np.argsort(x[front])
        ax.plot(x[front][order], y[front][order], color="tab:red", lw=1)
        _annotate(ax, x[front], y[front], have["short"][front])
        ax.set_xscale("log")
        ax.set_xlabel("p99 TTFT at capacity, steady state (s)")
        ax.set_ylabel("capacity per GPU (req/s per GPU)")
        ax.set_title("Capacity per GPU vs tail latency")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        paths.append(save_figure(fig, plots_dir / "pareto.png"))
    if not have.empty and "dollars_per_1m_output_tokens" in have:
        fig = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.add_subplot()
        rate, cost = have["max_rate_rps"].to_numpy(float), have["dollars_per_1m_output_tokens"].to_numpy(float)
        front = pareto_front(cost, rate)
        ax.scatter(rate[~front], cost[~front], color="0.6", label="dominated (see capacity.csv)")
        ax.scatter(rate[front], cost[front], color="tab:red", label="Pareto front")
        _annotate(ax, rate[front], cost[front], have["short"][front])
        if target_rps is not None:
            ax.axvline(target_rps, color="k", ls="--", lw=1, label=f"target {target_rps:g} req/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("capacity of one configuration (req/s)")
        ax.set_ylabel("$ per 1M output tokens at capacity")
        ax.set_title("Cost vs capacity")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        paths.append(save_figure(fig, plots_dir / "cost.png"))
    return paths
