"""The one interface every cost model implements.

Policies never see a cost model; the driver asks it how long a ``Batch``
takes. A model may also price a *decode run* -- the same decode batch repeated
``num_steps`` times, every context one token longer each step -- which the
driver uses to jump over iterations in which nothing but context lengths
changes. ``decode_run_times`` below is the exact, generic fallback; models
with a closed form override it with a vectorised version that must return the
same numbers.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np

from sim.batch import Batch


@runtime_checkable
class CostModel(Protocol):
    name: str

    def step_time(self, batch: Batch) -> float:
        """Seconds the engine spends on one step computing ``batch``."""
        ...

    def decode_run_times(self, batch: Batch, num_steps: int, first_step: int = 0) -> np.ndarray:
        """Seconds of each of ``num_steps`` consecutive pure-decode steps;
        step ``i`` (0-based) has every decode context ``+ first_step + i``."""
        ...


def decode_run_times_by_steps(model: CostModel, batch: Batch, num_steps: int,
                              first_step: int = 0) -> np.ndarray:
    """Reference implementation: call ``step_time`` once per step."""
    ctx = np.asarray(batch.decode_context_tokens, dtype=np.int64)
    out = np.empty(num_steps, dtype=np.float64)
    for i in range(num_steps):
        out[i] = model.step_time(replace(batch, decode_context_tokens=tuple((ctx + first_step + i).tolist())))
    return out
