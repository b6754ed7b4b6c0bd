"""Summary statistics of a workload, as a table and as a histogram figure.

Arrival statistics use the inter-arrival gaps ``g = diff(arrival_s)``:

* ``mean_rate_rps = (n - 1) / duration_s`` (undefined when all arrive at once);
* ``interarrival_cv = std(g) / mean(g)``: 1 for Poisson, 0 for a fixed
  interval, > 1 for bursty traffic;
* ``burstiness = (std(g) - mean(g)) / (std(g) + mean(g))`` (Goh & Barabasi,
  2008): -1 perfectly regular, 0 Poisson, towards 1 very bursty.

Undefined values are ``None``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workloads.types import Workload

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PERCENTILES = (50, 90, 99)


def _length_stats(tokens: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(tokens, PERCENTILES)
    return {"mean": float(np.mean(tokens)), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": int(np.max(tokens))}


def trace_stats(workload: Workload) -> dict:
    """Counts, arrival-rate figures and length percentiles of ``workload``."""
    if len(workload) == 0:
        raise ValueError("cannot compute statistics of an empty workload")
    gaps_s = np.diff(workload.arrival_s)
    duration_s = workload.duration_s
    mean_gap_s = float(np.mean(gaps_s)) if len(gaps_s) else 0.0
    std_gap_s = float(np.std(gaps_s)) if len(gaps_s) else 0.0
    defined = len(gaps_s) >= 2 and mean_gap_s > 0
    return {
        "name": workload.name,
        "num_requests": len(workload),
        "duration_s": duration_s,
        "mean_rate_rps": (len(workload) - 1) / duration_s if duration_s > 0 else None,
        "interarrival_cv": std_gap_s / mean_gap_s if defined else None,
        "burstiness": (std_gap_s - mean_gap_s) / (std_gap_s + mean_gap_s) if defined else None,
        "prompt_tokens": _length_stats(workload.prompt_tokens),
        "output_tokens": _length_stats(workload.output_tokens),
        "total_tokens": _length_stats(workload.final_tokens),
        "prefix_reuse": prefix_reuse(workload),
    }


def prefix_reuse(workload: Workload) -> float | None:
    """Share of prompt tokens an unbounded prefix cache could reuse: tokens in
    segments whose whole prefix (every segment up to and including it) an
    earlier request had, prompt or answer. None when the workload does not
    say its content."""
    if workload.segments is None:
        return None
    seen: set[int] = set()
    reusable = 0
    for segments, prompt in zip(workload.segments, workload.prompt_tokens.tolist()):
        key, position = 0, 0
        for cid, length in segments:
            key = hash((key, cid, length))
            if position < prompt and key in seen:
                reusable += min(length, prompt - position)
            seen.add(key)
            position += length
    return reusable / float(workload.prompt_tokens.sum())


def _number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def format_stats(stats: dict) -> str:
    """A small fixed-width text table of ``trace_stats`` output."""
    lines = [
        f"workload          {stats['name']}",
        f"requests          {stats['num_requests']}",
        f"duration_s        {_number(stats['duration_s'])}",
        f"mean_rate_rps     {_number(stats['mean_rate_rps'])}",
        f"interarrival_cv   {_number(stats['interarrival_cv'])}",
        f"burstiness        {_number(stats['burstiness'])}",
        f"prefix_reuse      {_number(stats.get('prefix_reuse'))}"
        + ("  (share of prompt tokens an unbounded prefix cache could reuse)"
           if stats.get("prefix_reuse") is not None else "  (the trace does not say its content)"),
        "",
        f"{'tokens':<16}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for key in ("prompt_tokens", "output_tokens", "total_tokens"):
        row = stats[key]
        cells = "".join(f"{_number(row[column], 1):>10}" for column in ("mean", "p50", "p90", "p99"))
        lines.append(f"{key.removesuffix('_tokens'):<16}{cells}{row['max']:>10}")
    return "\n".join(lines)


def check_plot_path(path: Path) -> str:
    """The image format of ``path`` (its suffix), or one line on why pagesim
    cannot write a plot there; checked before any work."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if path.is_dir():
        raise ValueError(f"--plot {path}: is a directory; give an image file such as lengths.png")
    file_format = path.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg.get_supported_filetypes()
    if file_format not in supported:
        raise ValueError(f"{path}: unsupported image format {file_format!r}; allowed: {', '.join(sorted(supported))}")
    return file_format


def plot_length_histograms(workload: Workload, path: str | Path) -> Path:
    """Log-x histograms of prompt and output lengths, written atomically to
    ``path`` (format from its suffix, e.g. .png or .pdf)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(workload) == 0:
        raise ValueError("cannot plot an empty workload")
    path = Path(path)
    file_format = check_plot_path(path)
    largest = max(int(workload.prompt_tokens.max()), int(workload.output_tokens.max()), 2)
    bins = np.geomspace(1, largest * 1.05, 60)
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, tokens in (("prompt", workload.prompt_tokens), ("output", workload.output_tokens)):
        axes.hist(tokens, bins=bins, alpha=0.55,
                  label=f"{label} (mean {np.mean(tokens):.0f}, p50 {np.median(tokens):.0f})")
    axes.set_xscale("log")
    axes.set_xlabel("tokens")
    axes.set_ylabel("requests")
    axes.set_title(f"{workload.name}: {len(workload)} requests")
    axes.legend()
    _save_atomically(figure, path, file_format)
    return path


def _save_atomically(figure: Figure, path: Path, file_format: str) -> None:
    """Write to a temporary file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        figure.savefig(temp_name, format=file_format)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp_name, 0o666 & ~mask)     # mkstemp makes 0600; a plot is as readable as any output
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
