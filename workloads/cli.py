"""The ``workloads`` command of the ``pagesim`` CLI.

``register(subparsers)`` adds ``workloads stats TRACE ...``; the chosen
subcommand's handler is stored as ``args.func`` and returns an exit code.
Bad input raises ``ValueError`` (``TraceError`` is one), which the top-level
CLI reports as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workloads.names import EMBEDDED_TRACES, FORMAT_NAMES


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``workloads`` command (with its ``stats`` subcommand) to ``subparsers``."""
    parser = subparsers.add_parser(
        "workloads", help="inspect request traces",
        description="Inspect request traces: arrival rate, burstiness and token-length percentiles.",
    )
    commands = parser.add_subparsers(dest="workloads_command", metavar="COMMAND", required=True)
    stats = commands.add_parser(
        "stats", help="print statistics of a trace",
        description="Load a trace (after the given filters) and print its statistics.",
    )
    _add_stats_arguments(stats)
    stats.set_defaults(func=stats_command)
    return parser


def _add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "trace", metavar="TRACE",
        help=f"trace file (CSV, or JSON lines for mooncake), or an embedded trace name "
             f"({', '.join(EMBEDDED_TRACES)})",
    )
    parser.add_argument(
        "--format", choices=FORMAT_NAMES, default="auto",
        help="trace format; 'auto' (default) recognises processed, azure and burstgpt by their header, "
             "mooncake (JSON lines with hash_ids) by its first character",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="keep only the first N requests after filtering")
    parser.add_argument("--start-s", type=float, metavar="S",
                        help="drop requests arriving earlier than S seconds after the trace's first request")
    parser.add_argument("--end-s", type=float, metavar="S",
                        help="drop requests arriving at or after S seconds after the trace's first request")
    parser.add_argument("--max-context-tokens", type=int, metavar="N",
                        help="drop requests whose prompt + output tokens exceed N")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="multiply arrival times by X (0.5 replays twice as fast; default 1)")
    parser.add_argument("--arrival-column", help="with --format csv: column holding arrival times")
    parser.add_argument("--prompt-column", help="with --format csv: column holding prompt token counts")
    parser.add_argument("--output-column", help="with --format csv: column holding output token counts")
    parser.add_argument("--time-unit", choices=("s", "ms", "us", "datetime"), default="s",
                        help="with --format csv: unit of the arrival column (default s)")
    parser.add_argument("--plot", metavar="PATH",
                        help="also save log-x histograms of prompt and output lengths to PATH (.png, .pdf, ...)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")


def _columns(args: argparse.Namespace):
    from workloads.trace_formats import TraceColumns

    names = (args.arrival_column, args.prompt_column, args.output_column)
    if all(name is None for name in names):
        return None
    if any(name is None for name in names):
        raise ValueError("--arrival-column, --prompt-column and --output-column must be given together")
    return TraceColumns(*names, time_unit=args.time_unit)


def stats_command(args: argparse.Namespace) -> int:
    """Print the statistics of ``args.trace``; returns the exit code."""
    from workloads.stats import check_plot_path, format_stats, plot_length_histograms, trace_stats
    from workloads.traces import load_trace

    if args.plot:
        check_plot_path(Path(args.plot))

    loaded = load_trace(
        args.trace, format=args.format, columns=_columns(args), limit=args.limit,
        start_s=args.start_s, end_s=args.end_s, max_context_tokens=args.max_context_tokens,
        time_scale=args.time_scale,
    )
    stats = trace_stats(loaded.workload)
    if args.json:
        print(json.dumps({"load": loaded.describe(), **stats}, indent=2))
    else:
        print(loaded.describe())
        print()
        print(format_stats(stats))
    if args.plot:
        path = plot_length_histograms(loaded.workload, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
