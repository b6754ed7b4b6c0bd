"""Per-step samples of the engine: queue lengths, batch shape, KV slots.

One row per simulated step, recorded when the step starts (after the policy
reserved its KV slots). A decode run that the driver jumps over is recorded
as the same rows stepping would give, computed in bulk.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from sim.batch import Batch
from sim.memory.base import KVManager
from sim.policies.base import Policy

COLUMNS = (
    "t_s", "replica", "step_s", "running", "waiting", "swapped",
    "batch_seqs", "batch_rows", "batch_tokens", "prefill_tokens", "decode_seqs",
    "kv_token_slots_used", "kv_token_slots_reserved", "kv_internal_slots",
    "kv_reserved_slots", "kv_external_slots", "kv_free_slots", "kv_total_slots",
)


def external_slots(policy: Policy) -> int:
    """Free slots the oldest waiting request cannot use because they are in
    holes too small for it (contiguous memory only; 0 when nobody waits)."""
    if not policy.waiting:
        return 0
    return policy.kv.free_unusable(policy.waiting[0].final_tokens)


class _Run(NamedTuple):
    """What stays constant over a decode run (KV figures at its first step)."""

    starts_s: np.ndarray
    steps_s: np.ndarray
    replica: int
    running: int
    waiting: int
    swapped: int
    batch_seqs: int
    batch_rows: int
    batch_tokens: int
    decode_seqs: int
    external: int
    real: int
    used: int                      # real + internal
    reserved: int
    free: int
    total: int
    block_hist: list[int] | None   # paged: sequences by (tokens - 1) % block_size


class Timeline:
    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._runs: list[_Run] = []

    def record_step(self, t_s: float, replica: int, step_s: float, policy: Policy,
                    batch: Batch) -> None:
        self.append(t_s, replica, step_s, self.snapshot(policy, batch))

    @staticmethod
    def snapshot(policy: Policy, batch: Batch) -> tuple:
        """The state columns of a step that is about to run (after ``schedule``)."""
        u = policy.kv.usage()
        return (policy.num_running, len(policy.waiting), len(policy.swapped),
                len(batch.requests), batch.num_seqs, batch.num_tokens, sum(batch.prefill_new_tokens),
                batch.num_decode_seqs, u.real, u.internal + u.reserved, u.internal, u.reserved,
                external_slots(policy), u.free, u.total)

    def append(self, t_s: float, replica: int, step_s: float, snapshot: tuple) -> None:
        """A step's row from a ``snapshot`` taken when it started (a real
        executor learns ``step_s`` only once the step is over)."""
        self._rows.append((t_s, replica, step_s, *snapshot))

    def record_run(self, starts_s: np.ndarray, replica: int, steps_s: np.ndarray,
                   policy: Policy, batch: Batch) -> None:
        """Rows of a decode run whose first step's slots are reserved now;
        step j (0-based) has every sequence ``j`` tokens longer. Only what
        stays constant over the run is kept here; ``to_frame`` expands all
        runs' KV columns at once."""
        kv: KVManager = policy.kv
        u = kv.usage()
        block_hist = None
        if kv.layout == "paged":
            bs = kv.block_size  # type: ignore[attr-defined]
            # sequences by (tokens - 1) % block_size
            block_hist = np.bincount((policy.decode_contexts() - 1) % bs, minlength=bs).tolist()
        self._runs.append(_Run(
            starts_s, steps_s, replica, policy.num_running, len(policy.waiting),
            len(policy.swapped), len(batch.requests), batch.num_seqs, batch.num_tokens,
            batch.num_decode_seqs, external_slots(policy), u.real, u.real + u.internal,
            u.reserved, u.free, u.total, block_hist,
        ))

    def _expand_runs(self) -> dict[str, np.ndarray]:
        """KV columns of every run row. A sequence holding t tokens takes
        ``floor((j + (t - 1) % bs) / bs)`` new blocks over the next j steps, so
        a run's allocation at step j only needs its histogram of
        ``(t - 1) % bs``; contiguous reservations and free space are fixed."""
        runs = self._runs
        lengths = np.array([len(r.starts_s) for r in runs], np.int64)

        def rep(field: str) -> np.ndarray:     # a per-run constant, one value per row
            return np.repeat(np.array([getattr(r, field) for r in runs], np.int64), lengths)

        j = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        n = rep("batch_seqs")
        real = rep("real") + n * j
        paged = np.repeat(np.array([r.block_hist is not None for r in runs]), lengths)
        # contiguous: every token lands in its own reservation; paged: no reservations
        reserved = np.where(paged, rep("reserved"), rep("reserved") - n * j)
        internal = np.where(paged, rep("used") - real, 0)
        free = rep("free")
        if paged.any():
            bs = len(next(r.block_hist for r in runs if r.block_hist is not None))
            hist = np.array([r.block_hist or [0] * bs for r in runs], np.int64)
            new_blocks = np.zeros_like(j)
            for q in np.flatnonzero(hist.any(axis=0)):
                new_blocks += np.repeat(hist[:, q], lengths) * ((j + q) // bs)
            internal = np.where(paged, internal + bs * new_blocks, internal)
            free = np.where(paged, free - bs * new_blocks, free)
        cols = {
            "t_s": np.concatenate([r.starts_s for r in runs]),
            "step_s": np.concatenate([r.steps_s for r in runs]),
            **{name: rep(name) for name in ("replica", "running", "waiting", "swapped",
                                            "batch_rows", "batch_tokens", "decode_seqs")},
            "batch_seqs": n, "prefill_tokens": np.zeros_like(n),
            "kv_token_slots_used": real, "kv_internal_slots": internal, "kv_reserved_slots": reserved,
            "kv_token_slots_reserved": internal + reserved, "kv_external_slots": rep("external"),
            "kv_free_slots": free, "kv_total_slots": rep("total"),
        }
        return cols

    def to_frame(self) -> pd.DataFrame:
        steps = pd.DataFrame(self._rows, columns=list(COLUMNS))
        if self._runs:
            runs = self._expand_runs()
            steps = pd.concat([steps, pd.DataFrame({c: runs[c] for c in COLUMNS})], ignore_index=True)
        df = steps.astype({c: ("float64" if c in ("t_s", "step_s") else "int64") for c in COLUMNS})
        return df.sort_values(["replica", "t_s"], kind="stable").reset_index(drop=True)
