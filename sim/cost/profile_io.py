"""Reading a profile's CSV files with errors that name the file and row, and
the non-negative least squares the profiled model fits with."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

LAYOUTS = ("paged", "contiguous")


def read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{path}: missing profile file (run `pagesim calibrate` on the GPU)")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    seconds = pd.to_numeric(df["seconds"], errors="coerce") if "seconds" in df else None
    if seconds is not None:
        bad = np.flatnonzero(~np.isfinite(seconds.to_numpy(dtype=float)) | (seconds.to_numpy(dtype=float) < 0))
        if len(bad):
            raise ValueError(f"{path}: row {bad[0] + 2}: seconds must be a finite number >= 0, "
                             f"got {df['seconds'].iloc[bad[0]]!r}")
        df["seconds"] = seconds.astype(float)
    return df


def json_lists(df: pd.DataFrame, column: str, path: Path) -> list[list[int]]:
    out = []
    for i, text in enumerate(df[column]):
        try:
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
                raise ValueError("not a list of non-negative integers")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: row {i + 2}: {column} must be a JSON list of token counts, "
                             f"got {text!r} ({exc})") from exc
        out.append(value)
    return out


def check_enum(df: pd.DataFrame, column: str, allowed: tuple[str, ...], path: Path) -> None:
    bad = ~df[column].isin(allowed)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: row {i + 2}: {column} {df[column].iloc[i]!r}; allowed: {', '.join(allowed)}")


def nnls(x: np.ndarray, y: np.ndarray, active: list[int] | None = None) -> np.ndarray:
    """Least squares with non-negative coefficients: solve on the ``active``
    columns (default all), drop the most negative, repeat until none is
    negative; dropped columns get 0."""
    active = list(range(x.shape[1])) if active is None else list(active)
    while True:
        sol = np.linalg.lstsq(x[:, active], y, rcond=None)[0]
        if (sol >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(sol)))
    coef = np.zeros(x.shape[1])
    coef[active] = np.maximum(sol, 0)
    return coef
