"""A step time linear in the batch's token counts, for what-if studies and
analytic tests:

    step_s = base_s
           + per_prefill_token_s * sum(prefill_new_tokens)
           + per_decode_seq_s    * num_decode_seqs
           + per_context_token_s * (sum(decode_context_tokens)
                                    + sum(prefill_context_tokens + prefill_new_tokens))
           + per_swap_token_s    * (swap_in_tokens + swap_out_tokens)

An empty batch costs nothing. The KV layout does not change the cost; fold a
paged overhead into the coefficients when comparing layouts.
"""
from __future__ import annotations

import numpy as np

from sim.batch import Batch


class LinearCostModel:
    name = "linear"

    def __init__(self, base_s: float, per_prefill_token_s: float, per_decode_seq_s: float,
                 per_context_token_s: float, per_swap_token_s: float = 0.0) -> None:
        coefficients = {
            "base_s": base_s,
            "per_prefill_token_s": per_prefill_token_s,
            "per_decode_seq_s": per_decode_seq_s,
            "per_context_token_s": per_context_token_s,
            "per_swap_token_s": per_swap_token_s,
        }
        for field_name, value in coefficients.items():
            if not value >= 0:   # also rejects NaN
                raise ValueError(f"{field_name} must be >= 0 seconds, got {value!r}")
        self.base_s = float(base_s)
        self.per_prefill_token_s = float(per_prefill_token_s)
        self.per_decode_seq_s = float(per_decode_seq_s)
        self.per_context_token_s = float(per_context_token_s)
        self.per_swap_token_s = float(per_swap_token_s)

    def __repr__(self) -> str:
        return (f"LinearCostModel(base_s={self.base_s}, per_prefill_token_s={self.per_prefill_token_s}, "
                f"per_decode_seq_s={self.per_decode_seq_s}, per_context_token_s={self.per_context_token_s}, "
                f"per_swap_token_s={self.per_swap_token_s})")

    def step_time(self, batch: Batch) -> float:
        if batch.is_empty:
            return 0.0
        return self._fixed_s(batch) + self.per_context_token_s * sum(batch.decode_context_tokens)

    def decode_run_times(self, batch: Batch, num_steps: int, first_step: int = 0) -> np.ndarray:
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if batch.is_empty:
            return np.zeros(num_steps, dtype=np.float64)
        num_decode = len(batch.decode_context_tokens)
        total_ctx = sum(batch.decode_context_tokens) + num_decode * np.arange(first_step, first_step + num_steps, dtype=np.int64)
        return self._fixed_s(batch) + self.per_context_token_s * total_ctx.astype(np.float64)

    def _fixed_s(self, batch: Batch) -> float:
        """Everything but the decode contexts, which grow by one a step."""
        new_tokens = sum(batch.prefill_new_tokens)
        prefill_keys = sum(batch.prefill_context_tokens) + new_tokens
        return (self.base_s
                + self.per_prefill_token_s * new_tokens
                + self.per_decode_seq_s * len(batch.decode_context_tokens)
                + self.per_context_token_s * prefill_keys
                + self.per_swap_token_s * (batch.swap_in_tokens + batch.swap_out_tokens))
