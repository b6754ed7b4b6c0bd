"""What produced a simulated result: a hash of the simulator's code and data.

A sweep (``points/<id>/``) and a capacity search (``probes/``) reuse finished
results when run again; they reuse only those the same simulator produced,
so a result computed before an upgrade (or an edit) is computed again
instead of being mixed with new ones. The hash covers the Python files of
``sim``, ``workloads`` and ``experiments``, the embedded traces and the
committed kernel profiles (which the profiled clock reads); a change to any
of them, even one that changes no result, counts.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name} not found")
    return Path(spec.origin).parent


def _files() -> list[tuple[str, Path]]:
    parts: list[tuple[str, Path]] = []
    for package in ("sim", "workloads", "experiments"):
        root = _package_dir(package)
        parts += [(f"{package}/{p.relative_to(root)}", p) for p in root.rglob("*.py") if "results" not in p.parts]
    from kernels import PROFILES_DIR

    for label, root in (("workloads/data", _package_dir("workloads") / "data"), ("kernels/profiles", PROFILES_DIR)):
        if root.is_dir():
            parts += [(f"{label}/{p.relative_to(root)}", p) for p in root.rglob("*")
                      if p.is_file() and p.suffix in (".csv", ".json", ".gz")]
    return sorted(parts)


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """Hex digest over the relative path and bytes of every file above."""
    digest = hashlib.sha1()
    for name, path in _files():
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
