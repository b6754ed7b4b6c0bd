"""``pagesim sweep``: the cartesian product of a config's ``sweep:`` section,
run in parallel processes, resumable, with one combined table and plots.

Layout of OUT: ``points/<point_id>/`` (each the output contract of ``pagesim
run``), ``sweep.csv`` (one row per point: its id, configuration label, swept
values and flattened summary) and ``plots/``. A point's id includes a hash of
its resolved config, so a re-run skips points already written with the same
config and recomputes those whose config changed.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.atomic import atomic_path
from experiments.config import ExperimentConfig, resolved_dict, set_path, validate
from sim.metrics import flatten


def sweep_points(raw: dict, cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any], dict]]:
    """(point_id, swept values, raw config of the point) for every point."""
    grid = cfg.sweep or {}
    keys = list(grid)
    base = copy.deepcopy(raw)
    base.pop("sweep", None)
    points = []
    for i, values in enumerate(itertools.product(*(grid[k] for k in keys))):
        point = copy.deepcopy(base)
        swept = dict(zip(keys, values))
        for key, value in swept.items():
            set_path(point, key, value)
        digest = hashlib.sha1(json.dumps(resolved_dict(validate(point)), sort_keys=True).encode())
        points.append((f"{i:03d}-{digest.hexdigest()[:8]}", swept, point))
    return points


def _run_point(point_raw: dict, point_dir: str) -> dict:
    from experiments.runner import run_experiment, write_outputs

    cfg = validate(point_raw)
    out = run_experiment(cfg, progress=False)
    write_outputs(out, Path(point_dir), plots=False)
    # the written file, as a resumed sweep reads it: one column order either way
    return json.loads((Path(point_dir) / "summary.json").read_text())


def _row(point_id: str, swept: dict, summary: dict) -> dict:
    return {"point_id": point_id, "config_label": summary.get("config_label", ""),
            **swept, **flatten(summary)}


def run_sweep(raw: dict, cfg: ExperimentConfig, out_dir: Path, jobs: int | None = None,
              x_key: str = "workload.arrival.rate_rps", plots: bool = True,
              progress: bool = True) -> pd.DataFrame:
    out_dir = Path(out_dir)
    points = sweep_points(raw, cfg)
    existed = out_dir.exists()
    try:
        return _run_points(points, cfg, out_dir, jobs, x_key, plots, progress)
    except BaseException:
        if not existed:            # a failed first run leaves nothing behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _run_points(points, cfg: ExperimentConfig, out_dir: Path, jobs: int | None, x_key: str,
                plots: bool, progress: bool) -> pd.DataFrame:
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    todo = []
    for point_id, swept, point in points:
        done = out_dir / "points" / point_id / "summary.json"
        if done.is_file():
            rows[point_id] = _row(point_id, swept, json.loads(done.read_text()))
        else:
            todo.append((point_id, swept, point))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=cfg.name,
                   unit="point", file=sys.stderr, leave=False, disable=None)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    if todo:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_run_point, point, str(out_dir / "points" / pid)): (pid, swept)
                       for pid, swept, point in todo}
            for fut in as_completed(futures):
                pid, swept = futures[fut]
                rows[pid] = _row(pid, swept, fut.result())
                if bar:
                    bar.update(1)
    if bar:
        bar.close()
    table = pd.DataFrame([rows[pid] for pid, _, _ in points])
    _write_csv_atomic(table, out_dir / "sweep.csv")
    if plots:
        from experiments.plots import plot_sweep

        plot_sweep(out_dir, x_key=x_key if x_key in table.columns else (list(cfg.sweep or {}) or [x_key])[0])
    return table


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
