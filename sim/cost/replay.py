"""The ``replay`` cost model: the step durations of a real run, in order.

Feeding a real engine's measured step times back through the simulator must
reproduce that run exactly -- the same batch at every step, the same
admissions and preemptions, the same token timestamps up to floating-point
rounding -- because both run the same policy and KV-manager code (DESIGN.md,
"Steady state and fidelity"). This model is how that is checked: it hands
out the recorded durations one step at a time and, given the recorded batch
shapes too, refuses the first step whose batch differs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sim.batch import Batch


class ReplayMismatch(AssertionError):
    """The simulation left the recorded run."""


def batch_shape(batch: Batch) -> tuple:
    """What two executors must agree on for a step to be the same step."""
    return (batch.prefill_new_tokens, batch.prefill_context_tokens, batch.decode_context_tokens,
            batch.swap_in_tokens, batch.swap_out_tokens, tuple(r.request_id for r in batch.requests))


class ReplayCostModel:
    name = "replay"

    def __init__(self, steps_s: Sequence[float], shapes: Sequence[tuple] | None = None) -> None:
        if shapes is not None and len(shapes) != len(steps_s):
            raise ValueError(f"{len(steps_s)} step durations but {len(shapes)} batch shapes")
        self.steps_s = [float(s) for s in steps_s]
        self.shapes = list(shapes) if shapes is not None else None
        self.used = 0

    def step_time(self, batch: Batch) -> float:
        i = self.used
        if i >= len(self.steps_s):
            raise ReplayMismatch(f"step {i}: the simulation runs more steps than the {len(self.steps_s)} recorded")
        if self.shapes is not None and batch_shape(batch) != self.shapes[i]:
            raise ReplayMismatch(f"step {i}: simulated batch {batch_shape(batch)} differs from the "
                                 f"recorded {self.shapes[i]}")
        self.used += 1
        return self.steps_s[i]

    def decode_run_times(self, batch: Batch, num_steps: int, first_step: int = 0) -> np.ndarray:
        raise ReplayMismatch("replay prices one step at a time: simulate with fast_forward: false")
