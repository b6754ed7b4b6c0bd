"""A request stream: when each request arrives and how long it is.

A ``Workload`` is a small immutable value handed from ``workloads`` to the
simulator. It holds three aligned columns, one entry per request in arrival
order:

* ``arrival_s`` -- float64 seconds on the simulation clock, non-decreasing and
  >= 0. Every generator in this package puts the first arrival at 0.
* ``prompt_tokens`` -- int64, >= 1.
* ``output_tokens`` -- int64, >= 1 (tokens the request will generate).

and optionally ``segments``: per request, what its tokens are (prompt then
output) as ``(content id, length)`` pairs whose lengths add up to prompt +
output tokens -- what a prefix cache compares (``sim/memory/prefix.py``).

The arrays are copied on construction and made read-only, so a workload can be
shared freely between runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _column(values: object, dtype: type, field: str) -> np.ndarray:
    raw = np.asarray(values)
    if dtype is np.int64 and raw.dtype.kind == "f" and not np.all(np.mod(raw, 1) == 0):
        raise ValueError(f"Workload.{field} must hold whole token counts")
    array = np.array(raw, dtype=dtype, copy=True)
    if array.ndim != 1:
        raise ValueError(f"Workload.{field} must be one-dimensional, got shape {array.shape}")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Workload:
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "custom"
    segments: tuple | None = None

    def __post_init__(self) -> None:
        arrival_s = _column(self.arrival_s, np.float64, "arrival_s")
        prompt_tokens = _column(self.prompt_tokens, np.int64, "prompt_tokens")
        output_tokens = _column(self.output_tokens, np.int64, "output_tokens")
        if not len(arrival_s) == len(prompt_tokens) == len(output_tokens):
            raise ValueError(
                "Workload columns differ in length: "
                f"arrival_s {len(arrival_s)}, prompt_tokens {len(prompt_tokens)}, "
                f"output_tokens {len(output_tokens)}"
            )
        _check_values(arrival_s, prompt_tokens, output_tokens)
        if self.segments is not None:
            segments = tuple(self.segments)
            if len(segments) != len(arrival_s):
                raise ValueError(f"Workload.segments has {len(segments)} entries for {len(arrival_s)} requests")
            for i, seg in enumerate(segments):
                if sum(length for _, length in seg) != prompt_tokens[i] + output_tokens[i]:
                    raise ValueError(f"Workload.segments[{i}] covers {sum(length for _, length in seg)} tokens, "
                                     f"the request has {prompt_tokens[i] + output_tokens[i]}")
            object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "arrival_s", arrival_s)
        object.__setattr__(self, "prompt_tokens", prompt_tokens)
        object.__setattr__(self, "output_tokens", output_tokens)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def __getitem__(self, index: slice) -> Workload:
        """A sub-stream; only slices with a positive step keep arrival order."""
        if not isinstance(index, slice):
            raise TypeError(f"Workload indices must be slices, not {type(index).__name__}")
        if index.step is not None and index.step < 1:
            raise ValueError("Workload slices need a positive step (arrival order must be kept)")
        return Workload(
            arrival_s=self.arrival_s[index],
            prompt_tokens=self.prompt_tokens[index],
            output_tokens=self.output_tokens[index],
            name=self.name,
            segments=None if self.segments is None else self.segments[index],
        )

    def head(self, num_requests: int) -> Workload:
        """The first ``num_requests`` requests (all of them if there are fewer)."""
        if num_requests < 0:
            raise ValueError(f"head() needs num_requests >= 0, got {num_requests}")
        return self[:num_requests]

    @property
    def final_tokens(self) -> np.ndarray:
        """Context length of each request once its last output token exists."""
        return self.prompt_tokens + self.output_tokens

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival (0 for fewer than two)."""
        if len(self) < 2:
            return 0.0
        return float(self.arrival_s[-1] - self.arrival_s[0])


def _check_values(arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
    if not np.all(np.isfinite(arrival_s)):
        raise ValueError(f"Workload.arrival_s has a non-finite value at index {_first(~np.isfinite(arrival_s))}")
    if np.any(arrival_s < 0):
        raise ValueError(f"Workload.arrival_s is negative at index {_first(arrival_s < 0)}")
    decreasing = np.diff(arrival_s) < 0
    if np.any(decreasing):
        raise ValueError(f"Workload.arrival_s decreases at index {_first(decreasing) + 1}")
    for field, tokens in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens)):
        if np.any(tokens < 1):
            raise ValueError(f"Workload.{field} must be >= 1, got {tokens[tokens < 1][0]} at index {_first(tokens < 1)}")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])
