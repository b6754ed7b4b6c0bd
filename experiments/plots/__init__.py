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

The code lives in three modules: ``common`` (reading, binning, KV fractions,
drawing helpers, colours, saving), ``run`` (``plot_run`` and its figures) and
``sweep`` (``plot_sweep`` and its figures).
"""
from experiments.plots.common import (
    DPI,
    FREE_LAYER,
    KV_LAYERS,
    MAX_TIMELINE_BINS,
    bin_timeline,
    draw_kv_area,
    draw_timeline_lines,
    kv_fractions,
    read_parquet_columns,
    require_columns,
    save_figure,
    series_colours,
)
from experiments.plots.run import (
    CDF_POINTS,
    LATENCY_LABELS,
    QUEUE_COLUMNS,
    REQUEST_COLUMNS,
    TIMELINE_COLUMNS,
    plot_run,
)
from experiments.plots.sweep import (
    DEFAULT_X_KEY,
    NORMALIZED_LATENCY_PANELS,
    SWEEP_COLUMNS,
    SWEEP_TIMELINE_COLUMNS,
    THROUGHPUT_PANELS,
    TOP_LEVEL_CONFIG_KEYS,
    TTFT_TPOT_PANELS,
    LinePanel,
    SweepAxis,
    choose_x,
    plot_sweep,
    read_sweep,
)

__all__ = [
    "CDF_POINTS", "DEFAULT_X_KEY", "DPI", "FREE_LAYER", "KV_LAYERS", "LATENCY_LABELS",
    "MAX_TIMELINE_BINS", "NORMALIZED_LATENCY_PANELS", "QUEUE_COLUMNS", "REQUEST_COLUMNS",
    "SWEEP_COLUMNS", "SWEEP_TIMELINE_COLUMNS", "THROUGHPUT_PANELS", "TIMELINE_COLUMNS",
    "TOP_LEVEL_CONFIG_KEYS", "TTFT_TPOT_PANELS", "LinePanel", "SweepAxis", "bin_timeline",
    "choose_x", "draw_kv_area", "draw_timeline_lines", "kv_fractions", "plot_run", "plot_sweep",
    "read_parquet_columns", "read_sweep", "require_columns", "save_figure", "series_colours",
]
