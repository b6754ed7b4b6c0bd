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
        self._blocks: list[pd.DataFrame] = []

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
        const = lambda v: np.full(k, v)  # noqa: E731
        self._blocks.append(pd.DataFrame({
            "t_s": starts_s, "replica": const(replica), "step_s": steps_s,
            "running": const(len(policy.running)), "waiting": const(len(policy.waiting)),
            "swapped": const(len(policy.swapped)), "batch_seqs": const(n),
            "batch_rows": const(batch.num_seqs), "batch_tokens": const(batch.num_tokens),
            "prefill_tokens": const(0), "decode_seqs": const(batch.num_decode_seqs),
            "kv_token_slots_used": real, "kv_token_slots_reserved": internal + reserved,
            "kv_internal_slots": internal, "kv_reserved_slots": reserved,
            "kv_external_slots": const(external_slots(policy)), "kv_free_slots": free,
            "kv_total_slots": const(u.total),
        }))

    def to_frame(self) -> pd.DataFrame:
        parts = [pd.DataFrame(self._rows, columns=list(COLUMNS))] + self._blocks
        df = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
            else pd.DataFrame(columns=list(COLUMNS))
        df = df.astype({c: "int64" for c in COLUMNS if c not in ("t_s", "step_s")})
        return df.sort_values(["replica", "t_s"], kind="stable").reset_index(drop=True)
