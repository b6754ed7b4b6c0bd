"""What pagesim reads, checked without importing anything heavy.

Each check returns the one-line error for an input that is not there (None
when it is), so that the command line can refuse a mistyped path before it
loads pydantic, pandas or torch, and the code that reads the input gives
the same line to callers of the API.
"""
from __future__ import annotations

import argparse
from pathlib import Path

OUTPUT_FILES = {"capacity.csv": "capacity", "sweep.csv": "sweep", "summary.json": "run"}
"""The file that makes a directory each kind of pagesim output, in the order ``pagesim plot`` looks."""


def config_error(path: str | Path) -> str | None:
    return None if Path(path).is_file() else f"{path}: no such config file"


def run_dir_error(path: str | Path) -> str | None:
    return None if (Path(path) / "summary.json").is_file() else f"{path}: not a run directory (no summary.json)"


def output_kind(path: str | Path) -> str | None:
    """``capacity``, ``sweep`` or ``run``: what pagesim wrote into ``path``."""
    return next((kind for name, kind in OUTPUT_FILES.items() if (Path(path) / name).is_file()), None)


def output_dir_error(path: str | Path) -> str | None:
    if output_kind(path) is not None:
        return None
    return f"{path}: not a run (summary.json), sweep (sweep.csv) or capacity (capacity.csv) directory"


def first_input_error(args: argparse.Namespace) -> str | None:
    """The first input that a parsed command line names and that is not
    there: a config or suite file, the run directories of ``fidelity``, the
    output directory of ``plot``."""
    errors = [config_error(getattr(args, name)) for name in ("config", "suite") if hasattr(args, name)]
    errors += [run_dir_error(path) for path in getattr(args, "runs", None) or ()]
    if hasattr(args, "dir"):
        errors.append(output_dir_error(args.dir))
    return next((e for e in errors if e), None)
