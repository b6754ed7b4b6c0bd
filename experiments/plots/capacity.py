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


def _front_figure(x: np.ndarray, y: np.ndarray, names, path: Path, *, xlabel: str, ylabel: str, title: str,
                  lower_y_better: bool = False, log_y: bool = False, vline: float | None = None) -> Path:
    """Scatter of every configuration, its Pareto front joined and named:
    lower x and higher y are better, or (``lower_y_better``) higher x and lower y."""
    # pareto_front(a, b): lower a and higher b are better
    front = pareto_front(y, x) if lower_y_better else pareto_front(x, y)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x[~front], y[~front], color="0.6", label="dominated (see capacity.csv)")
    ax.scatter(x[front], y[front], color="tab:red", label="Pareto front")
    order = np.argsort(x[front])
    ax.plot(x[front][order], y[front][order], color="tab:red", lw=1)
    _annotate(ax, x[front], y[front], names[front])
    if vline is not None:
        ax.axvline(vline, color="k", ls="--", lw=1, label=f"target {vline:g} req/s")
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


def plot_capacity(table: pd.DataFrame, plots_dir: Path, target_rps: float | None = None) -> list[Path]:
    """``pareto.png`` (capacity per GPU against p99 TTFT) and, with prices,
    ``cost.png`` ($ per 1M output tokens against capacity)."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    have = table[table["max_rate_rps"].notna()] if "max_rate_rps" in table else table.iloc[0:0]
    if "ttft_s_p99" in have:
        have = have[have["ttft_s_p99"].notna()]
    paths = []
    if have.empty:
        return paths
    names = have["short" if "short" in have else "config"].to_numpy()
    if "ttft_s_p99" in have:
        paths.append(_front_figure(
            have["ttft_s_p99"].to_numpy(float), have["goodput_per_gpu_rps"].to_numpy(float), names,
            plots_dir / "pareto.png", xlabel="p99 TTFT at capacity, steady state (s)",
            ylabel="capacity per GPU (req/s per GPU)", title="Capacity per GPU vs tail latency"))
    if "dollars_per_1m_output_tokens" in have:
        paths.append(_front_figure(
            have["max_rate_rps"].to_numpy(float), have["dollars_per_1m_output_tokens"].to_numpy(float), names,
            plots_dir / "cost.png", xlabel="capacity of one configuration (req/s)",
            ylabel="$ per 1M output tokens at capacity", title="Cost vs capacity", lower_y_better=True,
            log_y=True, vline=target_rps))
    return paths
