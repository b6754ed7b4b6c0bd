"""Token-length distributions for prompts and outputs.

Each distribution is a small frozen value with one method,
``sample(num_requests, rng) -> tokens`` (int64). Every distribution clips its
draws to ``[min_tokens, max_tokens]`` (``max_tokens=None``: no upper bound).

The lognormal is parameterised by the *mean* the user wants, in tokens, and
the ``sigma`` of the underlying normal (its shape). Draws are clipped and then
rounded *stochastically* (``floor(x + u)``, ``u ~ U[0, 1)``), which leaves the
mean of the clipped value unchanged. The location ``mu`` is therefore the one
for which the clipped lognormal has exactly the requested mean; it is found
once by bisection on the closed form of that mean (``lognormal_mu_for_mean``),
so asking for ``mean=161.31`` gives 161.31 in expectation, clipping included.

Presets (``LENGTH_PRESETS``) are documented in docs/workloads.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class LengthDistribution(Protocol):
    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        """``num_requests`` token counts (int64, within the clip bounds)."""
        ...


def _check_bounds(min_tokens: int, max_tokens: int | None) -> None:
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
    if max_tokens is not None and max_tokens < min_tokens:
        raise ValueError(f"max_tokens ({max_tokens}) must be >= min_tokens ({min_tokens})")


def _clip(tokens: np.ndarray, min_tokens: int, max_tokens: int | None) -> np.ndarray:
    return np.clip(tokens, min_tokens, max_tokens).astype(np.int64)


@dataclass(frozen=True)
class FixedLength:
    """Every request has ``value`` tokens (clipped to the bounds)."""

    value: int
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.value < 1:
            raise ValueError(f"value must be >= 1, got {self.value}")
        _check_bounds(self.min_tokens, self.max_tokens)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        return _clip(np.full(num_requests, self.value, dtype=np.int64), self.min_tokens, self.max_tokens)


@dataclass(frozen=True)
class UniformLength:
    """Integers uniform on ``[low, high]``, both ends included."""

    low: int
    high: int
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise ValueError(f"uniform lengths need 1 <= low <= high, got low={self.low}, high={self.high}")
        _check_bounds(self.min_tokens, self.max_tokens)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        tokens = rng.integers(self.low, self.high, size=num_requests, endpoint=True)
        return _clip(tokens, self.min_tokens, self.max_tokens)


@dataclass(frozen=True)
class LognormalLength:
    """Lognormal lengths with the given ``mean`` after clipping (see module doc)."""

    mean: float
    sigma: float
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        _check_bounds(self.min_tokens, self.max_tokens)
        upper = math.inf if self.max_tokens is None else self.max_tokens
        if not (self.min_tokens < self.mean < upper):
            raise ValueError(
                f"lognormal mean must lie strictly between min_tokens ({self.min_tokens}) "
                f"and max_tokens ({self.max_tokens}), got {self.mean}"
            )

    @property
    def mu(self) -> float:
        """Location of the underlying normal that yields ``mean`` after clipping."""
        return lognormal_mu_for_mean(self.mean, self.sigma, self.min_tokens, self.max_tokens)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        upper = np.inf if self.max_tokens is None else self.max_tokens
        raw = rng.lognormal(self.mu, self.sigma, size=num_requests)
        clipped = np.clip(raw, self.min_tokens, upper)
        rounded = np.floor(clipped + rng.random(num_requests))
        return _clip(rounded, self.min_tokens, self.max_tokens)


@dataclass(frozen=True)
class ExponentialLength:
    """Exponential lengths of mean ``mean`` before rounding up to whole
    tokens and clipping (the Anyscale continuous-batching benchmark's output
    lengths: mean 128, capped)."""

    mean: float
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise ValueError(f"mean must be a finite number > 0, got {self.mean}")
        _check_bounds(self.min_tokens, self.max_tokens)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        return _clip(np.ceil(rng.exponential(self.mean, size=num_requests)), self.min_tokens, self.max_tokens)


@dataclass(frozen=True, eq=False)
class EmpiricalLength:
    """Resamples, with replacement, from observed lengths (e.g. a trace column)."""

    values: np.ndarray
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.int64)
        if values.ndim != 1 or len(values) == 0:
            raise ValueError("empirical lengths need a non-empty 1-D array of observed values")
        if np.any(values < 1):
            raise ValueError("empirical lengths must all be >= 1")
        _check_bounds(self.min_tokens, self.max_tokens)
        values.flags.writeable = False
        object.__setattr__(self, "values", values)

    def sample(self, num_requests: int, rng: np.random.Generator) -> np.ndarray:
        picks = rng.integers(0, len(self.values), size=num_requests)
        return _clip(self.values[picks], self.min_tokens, self.max_tokens)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def clipped_lognormal_mean(mu: float, sigma: float, low: float, high: float) -> float:
    """E[clip(X, low, high)] for X = exp(N(mu, sigma^2)); ``high`` may be inf."""
    alpha = (math.log(low) - mu) / sigma
    beta = math.inf if math.isinf(high) else (math.log(high) - mu) / sigma
    inside = math.exp(mu + sigma**2 / 2) * (_normal_cdf(beta - sigma) - _normal_cdf(alpha - sigma))
    above = 0.0 if math.isinf(high) else high * (1.0 - _normal_cdf(beta))
    return low * _normal_cdf(alpha) + inside + above


def lognormal_mu_for_mean(mean: float, sigma: float, min_tokens: int, max_tokens: int | None) -> float:
    """The ``mu`` whose lognormal, clipped to the bounds, has mean ``mean``.

    The clipped mean rises monotonically with ``mu`` from ``min_tokens`` to
    ``max_tokens``, so bisection converges to the unique root.
    """
    high = math.inf if max_tokens is None else float(max_tokens)
    if not (min_tokens < mean < high):
        raise ValueError(f"mean {mean} is not strictly between {min_tokens} and {max_tokens}")
    unclipped = math.log(mean) - sigma**2 / 2
    step = max(sigma, 1.0)
    lo, hi = unclipped - step, unclipped + step
    while clipped_lognormal_mean(lo, sigma, min_tokens, high) > mean:
        lo -= step
    while clipped_lognormal_mean(hi, sigma, min_tokens, high) < mean:
        hi += step
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if clipped_lognormal_mean(mid, sigma, min_tokens, high) < mean:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class LengthPair:
    """Prompt and output distributions, drawn independently."""

    prompt: LengthDistribution
    output: LengthDistribution


# Means from the vLLM paper (SOSP'23, Fig. 11); the paper gives no fitted law,
# so the shape is chosen by a rule, not fitted (details in docs/workloads.md):
# * lognormal, prompt and output independent: positive, right-skewed lengths;
# * sigma 1.0: the unclipped p99 is exp(2.326 - 0.5) ~ 6.2x the mean, i.e. about
#   1,000 prompt and 2,100 output tokens for ShareGPT -- the tail reaches the
#   limits of vLLM's ShareGPT benchmark filter (prompt <= 1024, total <= 2048);
# * clipped to [1, 1024] each, so every pair fits OPT-13B's 2,048-token context;
#   ``mu`` is solved for the clipping, so the published means are kept.
PRESET_SIGMA = 1.0
PRESET_MAX_TOKENS = 1024

LENGTH_PRESETS: dict[str, LengthPair] = {
    "sharegpt": LengthPair(
        prompt=LognormalLength(mean=161.31, sigma=PRESET_SIGMA, max_tokens=PRESET_MAX_TOKENS),
        output=LognormalLength(mean=337.99, sigma=PRESET_SIGMA, max_tokens=PRESET_MAX_TOKENS),
    ),
    "alpaca": LengthPair(
        prompt=LognormalLength(mean=19.31, sigma=PRESET_SIGMA, max_tokens=PRESET_MAX_TOKENS),
        output=LognormalLength(mean=58.45, sigma=PRESET_SIGMA, max_tokens=PRESET_MAX_TOKENS),
    ),
}
