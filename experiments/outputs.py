"""Where pagesim writes, and what it may replace.

Every directory pagesim writes holds a marker file, ``.pagesim`` (JSON: the
command that wrote it). A command may replace, or add to, an existing
directory only if that directory is pagesim's own (it holds the marker) or
is empty; a directory of the user's is refused with one line unless
``--force``, and a file, the current directory or one of its parents never
(pagesim would have to delete them). Whether the location can be written is
checked before any work starts, so a run of minutes does not fail at the
end. Single files pagesim writes (reports) are replaced only if they carry
pagesim's own first line, likewise unless ``--force``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from experiments.atomic import atomic_path

MARKER = ".pagesim"


class OutputError(ValueError):
    """An output location pagesim must not or cannot write: one line."""


def is_pagesim_dir(path: Path) -> bool:
    """The marker; or, for directories written before markers existed, the
    output contract's own files (a run's, or a sweep's)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    run = all((path / name).is_file() for name in ("config.yaml", "summary.json", "timeline.parquet"))
    return run or ((path / "sweep.csv").is_file() and (path / "points").is_dir())


def write_marker(directory: Path, what: str) -> None:
    """Mark ``directory`` as written by pagesim (``what``: run, sweep, ...)."""
    record = {"written_by": "pagesim", "what": what, "command": " ".join(["pagesim", *sys.argv[1:]])}
    with atomic_path(Path(directory) / MARKER) as tmp:
        tmp.write_text(json.dumps(record) + "\n")


def check_out_dir(out: Path, *, force: bool = False, flag: str = "--out", replace: bool = True,
                  ours: Callable[[Path], bool] = is_pagesim_dir, can_force: bool = True) -> None:
    """Refuse, in one line, an output directory pagesim must not replace or
    cannot write (see the module docstring). ``ours`` recognises a directory
    pagesim wrote (default: the marker; kernel profiles and benchmarks also
    know their own files)."""
    out = Path(out)
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise OutputError(f"{flag} {out}: is the current directory or one of its parents; "
                          f"give a new subdirectory")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out}: exists and is not a directory; pagesim writes a directory "
                          f"there and never deletes a file")
    if out.is_dir() and not force and not ours(out) and any(out.iterdir()):
        raise OutputError(f"{flag} {out}: exists and was not written by pagesim (no {MARKER} marker); "
                          f"choose a new directory" + (", or pass --force to replace it" if can_force else ""))
    _check_writable(out, flag, replace)


def check_out_file(path: Path, first_line: str, *, force: bool = False, flag: str) -> None:
    """A report file may be replaced only if pagesim wrote it (it starts
    with ``first_line``)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a directory; give a file")
    if path.exists() and not force:
        try:
            with path.open(encoding="utf-8") as f:
                head = f.readline().rstrip("\n")
        except (OSError, UnicodeDecodeError):
            head = ""
        if head != first_line:
            raise OutputError(f"{flag} {path}: exists and was not written by pagesim; "
                              f"choose another file, or pass --force to replace it")
    _check_writable(path, flag, True)


def _check_writable(path: Path, flag: str, replace: bool) -> None:
    """``path``'s nearest existing ancestor must take new entries (where a
    replacement or a new directory is made), and an existing ``path`` too."""
    existing = path if path.exists() and not replace else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {path}: {existing} is a file, so nothing can be written below it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {existing} is not writable")
    if path.exists() and path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: is not writable")
