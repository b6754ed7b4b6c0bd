"""Arrival processes: when requests reach the server.

Each process is a small frozen value with one method,
``sample(num_requests, rng) -> arrival_s``, which returns ``num_requests``
non-decreasing float64 times in seconds. The first request arrives at 0 and
the following ones after ``num_requests - 1`` inter-arrival gaps, so a run's
clock starts with its first request and the measured rate over the run is
``(num_requests - 1) / arrival_s[-1]``. (For a Poisson process this is the
same as conditioning on an arrival at time 0.)

All randomness comes from the passed ``numpy.random.Generator``; processes
that need none ignore it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ArrivalProcess(Protocol):
    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        """``num_requests`` arrival times in seconds, first at 0."""
        ...


def _check_num_requests(num_requests: int) -> None:
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")


def _check_rate(rate_rps: float) -> None:
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps must be a finite number > 0, got {rate_rps}")


def _times_from_gaps(gaps_s: np.ndarray) -> np.ndarray:
    """Arrival times for one request at 0 followed by one per gap."""
    return np.concatenate(([0.0], np.cumsum(gaps_s, dtype=np.float64)))


@dataclass(frozen=True)
class PoissonArrivals:
    """Independent exponential gaps with mean ``1 / rate_rps``."""

    rate_rps: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_rps)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        _check_num_requests(num_requests)
        if num_requests == 0:
            return np.empty(0)
        return _times_from_gaps(rng.exponential(1.0 / self.rate_rps, size=num_requests - 1))


@dataclass(frozen=True)
class GammaArrivals:
    """Gamma-distributed gaps with mean ``1 / rate_rps`` and coefficient of
    variation ``cv`` (std / mean of the gaps). ``cv == 1`` is Poisson, ``cv > 1``
    bursty, ``cv < 1`` more regular. Shape ``k = 1 / cv**2``, scale
    ``1 / (rate_rps * k)``."""

    rate_rps: float
    cv: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_rps)
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"cv must be a finite number > 0, got {self.cv}")

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        _check_num_requests(num_requests)
        if num_requests == 0:
            return np.empty(0)
        shape = 1.0 / self.cv**2
        scale_s = 1.0 / (self.rate_rps * shape)
        return _times_from_gaps(rng.gamma(shape, scale_s, size=num_requests - 1))


@dataclass(frozen=True)
class ConstantArrivals:
    """One request every ``1 / rate_rps`` seconds exactly."""

    rate_rps: float

    def __post_init__(self) -> None:
        _check_rate(self.rate_rps)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        _check_num_requests(num_requests)
        return np.arange(num_requests, dtype=np.float64) / self.rate_rps


@dataclass(frozen=True)
class AllAtOnce:
    """An offline batch: every request arrives at time 0."""

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        _check_num_requests(num_requests)
        return np.zeros(num_requests, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class TraceArrivals:
    """Replays recorded arrival times, multiplied by ``time_scale``
    (0.5 replays twice as fast). ``times_s`` must be non-decreasing; they are
    re-based so the first replayed request arrives at 0."""

    times_s: np.ndarray
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        times_s = np.array(self.times_s, dtype=np.float64)
        if times_s.ndim != 1 or len(times_s) == 0:
            raise ValueError("TraceArrivals needs a non-empty 1-D array of times")
        if not np.all(np.isfinite(times_s)) or np.any(np.diff(times_s) < 0):
            raise ValueError("TraceArrivals times must be finite and non-decreasing")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {self.time_scale}")
        times_s.flags.writeable = False
        object.__setattr__(self, "times_s", times_s)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        _check_num_requests(num_requests)
        if num_requests > len(self.times_s):
            raise ValueError(
                f"the trace holds {len(self.times_s)} arrivals, fewer than the {num_requests} requested"
            )
        chosen_s = self.times_s[:num_requests]
        if num_requests == 0:
            return chosen_s.copy()
        return (chosen_s - chosen_s[0]) * self.time_scale
