"""Per-step samples of the engine: queue lengths, batch shape, KV slots.

One row per simulated step, recorded when the step starts (after the policy
reserved its KV slots). A decode run that the driver jumps over is recorded
as the same rows stepping would give, computed in bulk.
"""
from __future__ import annotations

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


class Timeline:
    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._runs: list[tuple] = []

    def record_step(self, t_s: float, replica: int, step_s: float, policy: Policy,
                    batch: Batch) -> None:
        u = policy.kv.usage()
        self._rows.append((
            t_s, replica, step_s, len(policy.running), len(policy.waiting), len(policy.swapped),
            len(batch.requests), batch.num_seqs, batch.num_tokens, sum(batch.prefill_new_tokens),
            batch.num_decode_seqs, u.real, u.internal + u.reserved, u.internal, u.reserved,
            external_slots(policy), u.free, u.total,
        ))

    def record_run(self, starts_s: np.ndarray, replica: int, steps_s: np.ndarray,
                   policy: Policy, batch: Batch) -> None:
        """Rows of a decode run whose first step's slots are reserved now;
        step j (0-based) has every sequence ``j`` tokens longer."""
        k = len(starts_s)
        kv: KVManager = policy.kv
        u = kv.usage()
        j = np.arange(k, dtype=np.int64)
        n = len(batch.requests)
        real = u.real + n * j
        if kv.layout == "paged":
            bs = kv.block_size  # type: ignore[attr-defined]
            tokens = np.fromiter((r.computed_tokens for r in batch.requests), np.int64, n)
            held = -(-(tokens[None, :] + j[:, None]) // bs) * bs      # slots per sequence
            allocated = held.sum(axis=1) + (u.real + u.internal - int(tokens.sum())
                                           - int((-(-tokens // bs) * bs - tokens).sum()))
            internal = allocated - real
            reserved = np.zeros(k, np.int64)
            free = u.total - allocated
        else:
            internal = np.zeros(k, np.int64)
            reserved = u.reserved - n * j
            free = np.full(k, u.free, np.int64)
        # one tuple per run, columns in COLUMNS order: arrays or scalars
        self._runs.append((
            starts_s, replica, steps_s, len(policy.running), len(policy.waiting),
            len(policy.swapped), n, batch.num_seqs, batch.num_tokens, 0, batch.num_decode_seqs,
            real, internal + reserved, internal, reserved, external_slots(policy), free, u.total,
        ))

    def to_frame(self) -> pd.DataFrame:
        steps = pd.DataFrame(self._rows, columns=list(COLUMNS))
        lengths = np.fromiter((len(run[0]) for run in self._runs), np.int64, len(self._runs))
        columns: dict[str, np.ndarray] = {}
        for c, name in enumerate(COLUMNS):
            values = [run[c] for run in self._runs]
            if values and np.ndim(values[0]) == 0:       # one value per run
                from_runs = np.repeat(np.asarray(values), lengths)
            else:
                from_runs = np.concatenate(values) if values else np.empty(0)
            dtype = np.float64 if name in ("t_s", "step_s") else np.int64
            columns[name] = np.concatenate([steps[name].to_numpy(), from_runs]).astype(dtype)
        df = pd.DataFrame(columns)
        return df.sort_values(["replica", "t_s"], kind="stable").reset_index(drop=True)
