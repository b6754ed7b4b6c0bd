"""``pagesim sweep``: the cartesian product of a config's ``sweep:`` section,
run in parallel processes, resumable, with one combined table and plots.

Layout of OUT: ``points/<point_id>/`` (each the output contract of ``pagesim
run``), ``sweep.csv`` (one row per point, in grid order: its id,
configuration label, swept values and flattened summary), ``plots/`` and the
``.pagesim`` marker. A point's id is a hash of its resolved config alone --
not of its place in the grid -- so a re-run reuses every finished point with
the same config, whatever was added to the grid or reordered, and computes
only the rest.

A point is reused only if the same simulator computed it: each finished
point records ``experiments.fingerprint.code_fingerprint()`` (``.code``),
and a point from another version of pagesim (or from before points recorded
it) is computed again, with one line on stderr saying how many.

Interrupting (Ctrl-C) stops the worker processes at once and keeps every
finished point; running the same command again resumes. Points run in local
processes or as Ray tasks (``--backend ray``, experiments/backends.py).
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.atomic import atomic_path
from experiments.config import ExperimentConfig, resolved_dict, set_path, tree_id, validate
from experiments.fingerprint import code_fingerprint
from experiments.outputs import write_marker
from experiments.progress import Progress
from sim.metrics import flatten

CODE_FILE = ".code"      # in a finished point: the fingerprint of the code that computed it


def point_id(point: ExperimentConfig) -> str:
    """A finished point is reused by any sweep whose point resolves to the same config."""
    return tree_id(resolved_dict(point))


def sweep_points(raw: dict, cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any], ExperimentConfig]]:
    """(point_id, swept values, validated config of the point) for every
    distinct point, in grid order (a value listed twice is one point)."""
    grid = cfg.sweep or {}
    keys = list(grid)
    base = copy.deepcopy(raw)
    base.pop("sweep", None)
    points, seen = [], set()
    for values in itertools.product(*(grid[k] for k in keys)):
        point = copy.deepcopy(base)
        swept = dict(zip(keys, values))
        for key, value in swept.items():
            set_path(point, key, value)
        point_cfg = validate(point)
        pid = point_id(point_cfg)
        if pid not in seen:
            seen.add(pid)
            points.append((pid, swept, point_cfg))
    return points


def _run_point(job: tuple[str, ExperimentConfig, str, bool]):
    """Simulate one point; write it here (a local worker) or hand its tables
    back for the parent to write (a Ray task, maybe on another machine)."""
    from experiments.runner import RunOutput, run_experiment, write_outputs

    pid, point, point_dir, write_here = job
    out = run_experiment(point, progress=False)
    if not write_here:
        return pid, RunOutput(out.config, None, out.requests, out.timeline, out.summary, out.notes)
    write_outputs(out, Path(point_dir), plots=False)
    return pid, None


def _finish_point(pid: str, payload, points_dir: Path) -> dict:
    from experiments.runner import write_outputs

    if payload is not None:
        write_outputs(payload, points_dir / pid, plots=False)
    with atomic_path(points_dir / pid / CODE_FILE) as tmp:
        tmp.write_text(code_fingerprint() + "\n")
    # the written file, as a resumed sweep reads it: one column order either way
    return json.loads((points_dir / pid / "summary.json").read_text())


def _same_code(point_dir: Path) -> bool:
    try:
        return (point_dir / CODE_FILE).read_text().strip() == code_fingerprint()
    except OSError:
        return False


def _row(point_id: str, swept: dict, summary: dict) -> dict:
    return {"point_id": point_id, "config_label": summary.get("config_label", ""),
            **swept, **flatten(summary)}


def run_sweep(raw: dict, cfg: ExperimentConfig, out_dir: Path, jobs: int | None = None,
              x_key: str = "workload.arrival.rate_rps", plots: bool = True,
              progress: bool = True, backend: str = "local", address: str | None = None) -> pd.DataFrame:
    """Run every point not already in ``out_dir`` (the caller checked that
    ``out_dir`` is absent, empty or pagesim's own), on ``backend``
    (experiments/backends.py)."""
    from experiments.runner import check_memory

    out_dir = Path(out_dir)
    points = sweep_points(raw, cfg)
    for _, _, point in points:
        check_memory(point)                 # refuse an impossible point before running any
    points_dir = out_dir / "points"
    created = not out_dir.exists()
    points_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, "sweep")
    rows: dict[str, dict] = {}
    todo, stale = [], 0
    for pid, swept, point in points:
        done = points_dir / pid / "summary.json"
        if done.is_file() and _same_code(points_dir / pid):
            rows[pid] = _row(pid, swept, json.loads(done.read_text()))
        else:
            stale += done.is_file()
            todo.append((pid, swept, point))
    if stale and progress:
        print(f"pagesim: {stale} finished point(s) in {points_dir} were simulated by another version of "
              f"pagesim; computing them again", file=sys.stderr)
    try:
        _run_points(todo, rows, points_dir, cfg.name, len(points), jobs, progress, backend, address)
    finally:
        _remove_partial_points(points_dir)
        if created and not rows:            # nothing finished: leave no trace of this sweep
            shutil.rmtree(out_dir, ignore_errors=True)
    table = pd.DataFrame([rows[pid] for pid, _, _ in points])
    with atomic_path(out_dir / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False)
    if plots:
        from experiments.plots import plot_sweep

        plot_sweep(out_dir, x_key=x_key if x_key in table.columns else (list(cfg.sweep or {}) or [x_key])[0])
    return table


def _run_points(todo: list, rows: dict, points_dir: Path, name: str, total: int, jobs: int | None,
                progress: bool, backend: str = "local", address: str | None = None) -> None:
    from experiments.backends import pool

    bar = Progress(total, name, "points", initial=total - len(todo), enabled=progress)
    swept_of = {pid: swept for pid, swept, _ in todo}
    workers = pool(backend, max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1)), address)
    work = [(pid, point, str(points_dir / pid), not workers.remote) for pid, _, point in todo]
    try:
        for pid, payload in workers.imap_unordered(_run_point, work):
            rows[pid] = _row(pid, swept_of[pid], _finish_point(pid, payload, points_dir))
            bar.update(1)
    finally:
        bar.close()


def _remove_partial_points(points_dir: Path) -> None:
    """A point stopped mid-write leaves only its own temporary directory
    (``write_outputs`` swaps a finished point into place): remove those."""
    for entry in points_dir.glob(".*.tmp-*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
