"""Loading a recorded trace as a ``Workload``, with filters and counts.

``load_trace`` reads a file (or an embedded trace by name, see
``EMBEDDED_TRACES``) and applies, in this order:

1. parse and validate every row (``trace_formats``; errors name the row); a
   JSON-lines trace with prompt block hashes (``mooncake``, ``qwen``) also gives each
   request its content segments, so a prefix cache can reuse them;
2. sort by arrival time if the file is out of order (stable, so rows with
   equal times keep their file order), then measure times from the first row;
3. keep the window ``start_s <= t < end_s`` (seconds from the first row);
4. drop rows with 0 prompt or 0 output tokens: such a request produced
   nothing (BurstGPT logs failed requests this way) and cannot be simulated
   as one that ran;
5. drop rows whose prompt + output tokens exceed ``max_context_tokens``;
6. keep the first ``limit`` rows;
7. re-base so the first kept request arrives at 0, then multiply times by
   ``time_scale`` (0.5 replays twice as fast).

Nothing is dropped silently: ``TraceLoad`` counts the rows each step removed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from workloads.trace_formats import (
    HASHED_FORMATS,
    TRACE_FORMATS,
    RawTrace,
    TraceColumns,
    TraceError,
    parse_hashed_trace,
    parse_trace,
    read_header,
    sniff_json_lines,
    sniff_format,
)
from workloads.names import EMBEDDED_TRACES, FORMAT_NAMES
from workloads.types import Workload

@dataclass(frozen=True, eq=False)
class TraceLoad:
    """A loaded trace and what the filters did to it (row counts)."""

    workload: Workload
    path: Path
    format: str
    num_rows: int             # data rows in the file
    num_out_of_order: int     # rows earlier than the row before them (sorted)
    num_outside_window: int
    num_zero_tokens: int      # dropped: 0 prompt or 0 output tokens
    num_over_context: int     # dropped: prompt + output > max_context_tokens
    num_over_limit: int       # cut by ``limit``

    def describe(self) -> str:
        """One line saying what was read and what was left out."""
        return (
            f"{self.path.name} ({self.format}): {self.num_rows} rows read, {len(self.workload)} kept; "
            f"{self.num_out_of_order} out of order (sorted), {self.num_outside_window} outside the window, "
            f"{self.num_zero_tokens} with 0 tokens dropped, {self.num_over_context} over the context limit "
            f"dropped, {self.num_over_limit} beyond the limit"
        )


def resolve_trace_path(path: str | Path) -> Path:
    """An embedded trace's file for its name, else ``path`` itself; the file must exist."""
    text = str(path)
    if text in EMBEDDED_TRACES:
        return Path(str(resources.files("workloads") / "data" / EMBEDDED_TRACES[text]))
    resolved = Path(text).expanduser()
    if not resolved.is_file():
        raise TraceError(f"{text}: no such trace file")
    return resolved


def load_trace(
    path: str | Path,
    *,
    format: str = "auto",
    columns: TraceColumns | None = None,
    limit: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    max_context_tokens: int | None = None,
    time_scale: float = 1.0,
) -> TraceLoad:
    """Read and filter a trace (see the module docstring for the order of steps)."""
    _check_options(format, columns, limit, start_s, end_s, max_context_tokens, time_scale)
    label = str(path)
    resolved = resolve_trace_path(path)
    if format == "auto":
        format = sniff_json_lines(resolved) or sniff_format(read_header(resolved, label), label)
    if format in HASHED_FORMATS:
        raw = parse_hashed_trace(resolved, label, format)
    else:
        raw = parse_trace(resolved, label, columns if format == "csv" else TRACE_FORMATS[format])
    arrival_s, prompt_tokens, output_tokens, order = _sorted_from_zero(raw)

    in_window = (arrival_s >= (start_s or 0.0)) & (arrival_s < (math.inf if end_s is None else end_s))
    nonzero = (prompt_tokens > 0) & (output_tokens > 0)
    fits = np.full(len(arrival_s), True)
    if max_context_tokens is not None:
        fits = prompt_tokens + output_tokens <= max_context_tokens
    matched = np.flatnonzero(in_window & nonzero & fits)
    kept = matched[:limit]
    if len(kept) == 0:
        raise TraceError(f"{label}: no requests left after the filters (window, 0-token rows, context limit)")

    segments = None
    if raw.segments is not None:     # the prompt's blocks, then an answer of its own: ids -2, -3, ...
        # (never -1: Python hashes -1 like -2, and block keys hash content ids)
        segments = tuple(raw.segments[i] + ((-2 - int(i), int(raw.output_tokens[i])),) for i in order[kept])
    workload = Workload(
        arrival_s=(arrival_s[kept] - arrival_s[kept[0]]) * time_scale,
        prompt_tokens=prompt_tokens[kept],
        output_tokens=output_tokens[kept],
        name=label if label in EMBEDDED_TRACES else resolved.stem,
        segments=segments,
    )
    return TraceLoad(
        workload=workload,
        path=resolved,
        format=format,
        num_rows=len(arrival_s),
        num_out_of_order=int(np.count_nonzero(np.diff(raw.arrival_s) < 0)),
        num_outside_window=int(np.count_nonzero(~in_window)),
        num_zero_tokens=int(np.count_nonzero(in_window & ~nonzero)),
        num_over_context=int(np.count_nonzero(in_window & nonzero & ~fits)),
        num_over_limit=len(matched) - len(kept),
    )


def _sorted_from_zero(raw: RawTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows in arrival order (stable), times measured from the first one, and
    the file row of each."""
    order = np.argsort(raw.arrival_s, kind="stable")
    arrival_s = raw.arrival_s[order]
    if len(arrival_s):
        arrival_s = arrival_s - arrival_s[0]
    return arrival_s, raw.prompt_tokens[order], raw.output_tokens[order], order


def _check_options(format: str, columns: TraceColumns | None, limit: int | None, start_s: float | None,
                   end_s: float | None, max_context_tokens: int | None, time_scale: float) -> None:
    if format not in FORMAT_NAMES:
        raise ValueError(f"unknown trace format {format!r}; allowed: {', '.join(FORMAT_NAMES)}")
    if format == "csv" and columns is None:
        raise ValueError("trace format 'csv' needs a column mapping (arrival, prompt and output columns)")
    if format != "csv" and columns is not None:
        raise ValueError(f"a column mapping is only used with format 'csv', not {format!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if start_s is not None and not start_s >= 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    if end_s is not None and not end_s > (start_s or 0.0):
        raise ValueError(f"end_s must be > start_s ({start_s or 0.0}), got {end_s}")
    if max_context_tokens is not None and max_context_tokens < 2:
        raise ValueError(f"max_context_tokens must be >= 2, got {max_context_tokens}")
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be a finite number > 0, got {time_scale}")
