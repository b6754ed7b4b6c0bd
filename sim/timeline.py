"""Per-step samples of the engine: queue lengths, batch shape, KV slots.

One row per step, recorded when the step starts (after the policy reserved
its KV slots). A decode run that the driver jumps over is recorded as the
same rows stepping would give, computed in bulk.

Memory is bounded by ``max_rows`` per replica, not by the number of steps:
recorded steps wait in a small buffer and are turned into columns in bulk.
Each replica stores rows of ``2 ** level`` steps (level 0 at first): a
group of that many consecutive steps becomes one row -- ``t_s`` of the
first, ``step_s`` summed, every other column the step-time-weighted mean
(the plain mean if none of them took time), ``steps`` the number it covers
-- and the steps of a group not yet complete wait for the next ones. Once a
replica holds more than ``max_rows`` rows, each pair of adjacent rows merges
the same way and its level goes up by one. So a long run keeps between
``max_rows / 2`` and ``max_rows`` rows, each covering the same number of
steps (but for the last few), from its first step to its last. Every
step-time-weighted figure of the run (KV usage, waste, mean batch size) is
the same from merged rows as from the full ones. ``max_rows=None`` keeps
every step.
"""
from __future__ import annotations

from functools import partial
from itertools import chain
from typing import NamedTuple

import numpy as np
import pandas as pd

from sim.batch import Batch
from sim.policies.base import Policy

COLUMNS = (
    "t_s", "replica", "step_s", "running", "waiting", "swapped",
    "batch_seqs", "batch_rows", "batch_tokens", "prefill_tokens", "decode_seqs",
    "kv_token_slots_used", "kv_token_slots_reserved", "kv_internal_slots",
    "kv_reserved_slots", "kv_external_slots", "kv_free_slots", "kv_total_slots", "kv_shared_slots",
)
VALUE_COLUMNS = COLUMNS[3:]
DEFAULT_MAX_ROWS = 200_000
FLUSH_EVERY = 4096          # recorded steps and runs buffered before they become columns
HALVE_ROWS = 8192           # stored rows a halving merges at a time


def external_slots(policy: Policy) -> int:
    """Free slots the oldest waiting request cannot use because they are in
    holes too small for it (contiguous memory only; 0 when nobody waits)."""
    if not policy.waiting:
        return 0
    return policy.kv.free_unusable(policy.waiting[0].final_tokens)


_RUN_FIELDS = ("replica", "running", "waiting", "swapped", "batch_seqs", "batch_rows", "batch_tokens",
               "decode_seqs", "external", "real", "used", "reserved", "free", "total", "shared")
"""What stays constant over a decode run, in this order (KV figures at its
first step; ``used`` is real + internal; ``shared``: slots shared beyond one
holder, constant because decodes write private blocks)."""


class _Run(NamedTuple):
    """A decode run as recorded: when its first step starts and when each
    step ends, the ``_RUN_FIELDS`` values, how many sequences' last blocks
    hold each number of tokens (``Policy.last_block_fill``: one entry per
    slot of a block; None: contiguous memory), and per-step
    ``waiting``/``external`` arrays where arrivals joined the queue during
    the run. The values and token counts are taken ``first_step`` steps
    before the run's first step (1: during the step that leads it)."""

    start_s: float
    ends_s: list[float]
    values: tuple
    fill: list[int] | None
    per_step: dict[str, np.ndarray] | None = None
    first_step: int = 0


_new_run = partial(tuple.__new__, _Run)
"""``_Run`` of its six fields in order: the tuple its own ``__new__`` builds,
without that Python function's call (a run is recorded every decision or so)."""


class Timeline:
    def __init__(self, max_rows: int | None = DEFAULT_MAX_ROWS) -> None:
        if max_rows is not None and max_rows < 2:
            raise ValueError(f"max_rows must be >= 2 or None, got {max_rows}")
        self.max_rows = max_rows
        self._rows: list[tuple] = []
        self._runs: list[_Run] = []
        self._chunks: dict[int, list[dict[str, np.ndarray]]] = {}   # replica -> column chunks
        self._pending: dict[int, _Run] = {}                          # replica -> run through arrivals
        self._stored: dict[int, int] = {}                            # replica -> rows in chunks
        self._level: dict[int, int] = {}                             # replica -> its rows hold 2**level steps
        self._carry: dict[int, dict[str, np.ndarray]] = {}           # replica -> steps of an incomplete row

    # ---- recording -------------------------------------------------------
    def record_step(self, t_s: float, replica: int, step_s: float, policy: Policy,
                    batch: Batch) -> None:
        self.append(t_s, replica, step_s, self.snapshot(policy, batch))

    @staticmethod
    def snapshot(policy: Policy, batch: Batch) -> tuple:
        """The state columns of a step that is about to run (after ``schedule``)."""
        u = policy.kv.usage()
        prefills, decodes = batch.prefill_new_tokens, len(batch.decode_context_tokens)
        new = sum(prefills)
        return (policy.num_running, len(policy.waiting), len(policy.swapped),
                len(batch.requests), len(prefills) + decodes, new + decodes, new,
                decodes, u.real, u.internal + u.reserved, u.internal, u.reserved,
                external_slots(policy) if policy.waiting else 0, u.free, u.total, u.shared)

    def append(self, t_s: float, replica: int, step_s: float, snapshot: tuple) -> None:
        """A step's row from a ``snapshot`` taken when it started (a real
        executor learns ``step_s`` only once the step is over)."""
        if len(self._rows) + len(self._runs) >= FLUSH_EVERY:
            self._flush()
        self._rows.append((t_s, replica, step_s, *snapshot))

    def record_run(self, start_s: float, replica: int, ends_s: list[float], policy: Policy, batch: Batch, *,
                   pending: bool = False, first_step: int = 0, snapshot: tuple | None = None) -> None:
        """Rows of a decode run of ``batch`` (a step that only decodes) that
        starts at ``start_s`` and whose steps end at ``ends_s``; step j
        (0-based) has every sequence ``first_step + j`` tokens longer than
        now (0: the run's first step's slots are reserved now; 1: the run
        follows the step that is about to run, which leaves every running
        sequence one token short). Only what stays constant over the run is
        kept here; its KV columns are expanded in bulk later. A run that
        goes on through arrivals is ``pending`` until ``finish_run``
        completes it when it ends (other replicas may record steps
        meanwhile); one still pending when the clock stops is kept as it
        began. ``snapshot``: one taken of the step that leads the run, now
        (the policy's state in it is the run's)."""
        running, waiting, swapped, *_, real, _, internal, reserved, external, free, total, shared = (
            snapshot if snapshot is not None else self.snapshot(policy, batch))
        decodes = len(batch.decode_context_tokens)      # a decode step: its rows, sequences and tokens
        run = _new_run((start_s, ends_s, (
            replica, running, waiting, swapped, len(batch.requests), decodes, decodes, decodes, external, real,
            real + internal, reserved, free, total, shared),
            policy.last_block_fill() if policy.kv.layout == "paged" else None, None, first_step))
        if pending:
            self._pending[replica] = run
            return
        if len(self._rows) + len(self._runs) >= FLUSH_EVERY:
            self._flush()
        self._runs.append(run)

    def finish_run(self, replica: int, queued_s: list[float], policy: Policy) -> None:
        """Record a pending run that went on through arrivals (which could
        not change it): each of its steps sees the requests that joined the
        queue, at ``queued_s``, before it started, as stepping would."""
        run = self._pending.pop(replica)
        if queued_s:
            starts = np.concatenate(([run.start_s], run.ends_s[:-1]))
            joined = np.searchsorted(np.asarray(queued_s), starts, side="right")
            values = dict(zip(_RUN_FIELDS, run.values))
            external = np.full(len(joined), values["external"])
            if values["waiting"] == 0 and policy.waiting:
                # the queue's head is the first arrival: its hole fit, in a run's fixed memory
                external = np.where(joined > 0, external_slots(policy), 0)
            run = run._replace(per_step={"waiting": values["waiting"] + joined, "external": external})
        if len(self._rows) + len(self._runs) >= FLUSH_EVERY:
            self._flush()
        self._runs.append(run)

    # ---- bulk conversion ---------------------------------------------------
    def _flush(self) -> None:
        """Buffered steps and runs -> each replica's stored rows. The single
        steps and the runs' steps of a flush are one part, which ``_add``
        puts in time order, so that a merged row covers consecutive steps."""
        parts = []
        if self._rows:          # (fromiter over the rows' values: a third faster than np.array of tuples)
            arr = np.fromiter(chain.from_iterable(self._rows), np.float64,
                              len(COLUMNS) * len(self._rows)).reshape(-1, len(COLUMNS))
            parts.append({c: arr[:, i] for i, c in enumerate(COLUMNS)})
        if self._runs:
            parts.append(self._expand_runs())
        self._rows, self._runs = [], []
        if not parts:
            return
        part = {c: np.concatenate([np.asarray(p[c], np.float64) for p in parts]) for c in COLUMNS}
        part["steps"] = np.ones(len(part["t_s"]))
        replicas = np.unique(part["replica"]).astype(int).tolist()
        for replica in replicas:
            if len(replicas) == 1:
                self._add(replica, part)
            else:
                mask = part["replica"] == replica
                self._add(replica, {c: v[mask] for c, v in part.items()})

    def _add(self, replica: int, cols: dict[str, np.ndarray]) -> None:
        """Store a replica's newly recorded steps, in time order, as rows of
        ``2 ** level`` steps each; the steps of an incomplete row wait in
        ``_carry``. Halve the rows while they are over ``max_rows``. A
        flush holds its single steps, then its runs' steps: sorted here,
        they are the replica's steps in time order."""
        chunks = self._chunks.setdefault(replica, [])
        order = np.argsort(cols["t_s"], kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
        if self.max_rows is None:
            chunks.append(cols)
            return
        carry = self._carry.pop(replica, None)
        if carry is not None:
            cols = _concat([carry, cols])
        size = 1 << self._level.get(replica, 0)
        ends = np.flatnonzero(np.cumsum(cols["steps"]) % size == 0) + 1   # where a row of `size` steps ends
        n = int(ends[-1]) if len(ends) else 0
        if n < len(cols["t_s"]):
            self._carry[replica] = {c: v[n:] for c, v in cols.items()}
        if n:
            chunks.append(_grouped({c: v[:n] for c, v in cols.items()}, np.r_[0, ends[:-1]]))
            self._stored[replica] = self._stored.get(replica, 0) + len(ends)
        while self._stored.get(replica, 0) > self.max_rows:
            self._halve(replica)

    def _halve(self, replica: int) -> None:
        """Merge each pair of a replica's stored rows (all of ``2 ** level``
        steps) and raise its level; an odd last row joins the carry. The
        stored chunks are merged a few at a time (about ``HALVE_ROWS`` rows),
        so that no temporary array is the size of the whole timeline (fresh
        memory is dear where every first-touched page faults: docs/results.md
        §3)."""
        halved: list[dict[str, np.ndarray]] = []
        stored = 0
        group: list[dict[str, np.ndarray]] = []
        rows = 0
        chunks = self._chunks[replica]
        for i, chunk in enumerate(chunks):
            group.append(chunk)
            rows += len(chunk["t_s"])
            if rows < HALVE_ROWS and i + 1 < len(chunks):
                continue
            cols = _concat(group) if len(group) > 1 else group[0]
            n = rows // 2 * 2
            if n:
                halved.append(_grouped({c: v[:n] for c, v in cols.items()}, np.arange(0, n, 2)))
                stored += n // 2
            group = [{c: v[n:] for c, v in cols.items()}] if n < rows else []    # an odd row waits
            rows -= n
        if group:                       # the odd last row
            carry = self._carry.pop(replica, None)
            self._carry[replica] = _concat([group[0], carry]) if carry is not None else group[0]
        self._chunks[replica] = halved
        self._stored[replica] = stored
        self._level[replica] = self._level.get(replica, 0) + 1

    def _close_rows(self) -> None:
        """The end of the run: each replica's incomplete row is stored as one."""
        for replica, carry in list(self._carry.items()):
            del self._carry[replica]
            self._chunks[replica].append(_grouped(carry, np.zeros(1, np.int64)))
            self._stored[replica] = self._stored.get(replica, 0) + 1
            while self._stored[replica] > self.max_rows:
                self._halve(replica)
                if replica in self._carry:      # the odd row the halving left: the last one still
                    self._chunks[replica].append(self._carry.pop(replica))
                    self._stored[replica] += 1

    def _expand_runs(self) -> dict[str, np.ndarray]:
        """KV columns of every run row. A sequence holding t tokens takes
        ``floor((j + (t - 1) % bs) / bs)`` new blocks over the next j steps, so
        a run's allocation at step j only needs its histogram of
        ``(t - 1) % bs`` (its ``fill``); contiguous reservations and free
        space are fixed."""
        runs = self._runs
        lengths = np.fromiter((len(r.ends_s) for r in runs), np.int64, len(runs))
        values = np.fromiter(chain.from_iterable(r.values for r in runs), np.int64,
                             len(_RUN_FIELDS) * len(runs)).reshape(len(runs), len(_RUN_FIELDS))
        cols = {name: np.repeat(values[:, i], lengths) for i, name in enumerate(_RUN_FIELDS)}
        offsets = np.cumsum(lengths) - lengths
        for i, r in enumerate(runs):
            if r.per_step is not None:          # a run through arrivals: the queue grew step by step
                for name, per_step in r.per_step.items():
                    cols[name][offsets[i]: offsets[i] + lengths[i]] = per_step
        j = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets, lengths)
        if any(r.first_step for r in runs):
            j += np.repeat(np.fromiter((r.first_step for r in runs), np.int64, len(runs)), lengths)
        n = cols["batch_seqs"]
        real = cols["real"] + n * j
        is_paged = np.array([r.fill is not None for r in runs])
        paged_runs = np.flatnonzero(is_paged)
        paged = np.repeat(is_paged, lengths)
        # contiguous: every token lands in its own reservation; paged: no reservations
        reserved = np.where(paged, cols["reserved"], cols["reserved"] - n * j)
        internal = np.where(paged, cols["used"] - real, 0)
        free = cols["free"]
        if len(paged_runs):
            # (j + q) // bs is j // bs, plus 1 where q >= bs - j % bs: the blocks are
            # j // bs for every sequence, plus those whose fill q is that high
            bs = len(runs[paged_runs[0]].fill)
            fill = np.fromiter(chain.from_iterable(runs[i].fill for i in paged_runs), np.int64,
                               bs * len(paged_runs)).reshape(-1, bs)
            above = np.zeros((len(runs), bs + 1), np.int64)       # [r, k]: sequences with q >= k
            above[paged_runs, :bs] = fill[:, ::-1].cumsum(axis=1)[:, ::-1]
            run_of = np.repeat(np.arange(len(runs)), lengths)
            whole, part = np.divmod(j, bs)
            new_blocks = whole * above[run_of, 0] + above[run_of, bs - part]
            internal = np.where(paged, internal + bs * new_blocks, internal)
            free = np.where(paged, free - bs * new_blocks, free)
        ends = np.fromiter(chain.from_iterable(r.ends_s for r in runs), np.float64, int(lengths.sum()))
        starts = np.empty_like(ends)       # each step starts when the one before it ends
        starts[1:] = ends[:-1]
        starts[offsets] = [r.start_s for r in runs]
        return {
            "t_s": starts,
            "step_s": ends - starts,
            **{name: cols[name] for name in ("replica", "running", "waiting", "swapped",
                                             "batch_rows", "batch_tokens", "decode_seqs")},
            "batch_seqs": n, "prefill_tokens": np.zeros_like(n),
            "kv_token_slots_used": real, "kv_internal_slots": internal, "kv_reserved_slots": reserved,
            "kv_token_slots_reserved": internal + reserved, "kv_external_slots": cols["external"],
            "kv_free_slots": free, "kv_total_slots": cols["total"], "kv_shared_slots": cols["shared"],
        }

    # ---- output ---------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per step (``steps == 1``), or per group of merged steps."""
        self._runs.extend(self._pending.values())       # runs the horizon cut short
        self._pending.clear()
        self._flush()
        self._close_rows()
        chunks = [c for replica in sorted(self._chunks) for c in self._chunks[replica]]
        if not chunks:
            return pd.DataFrame({c: pd.Series(dtype="int64" if c not in ("t_s", "step_s") else "float64")
                                 for c in (*COLUMNS, "steps")})
        cols = _sorted(_concat(chunks))
        df = pd.DataFrame({c: cols[c] for c in (*COLUMNS, "steps")})
        merged = (df["steps"] > 1).any()
        ints = [c for c in (*COLUMNS, "steps") if c not in ("t_s", "step_s")]
        if not merged:
            df[ints] = df[ints].astype("int64")
        else:
            df[["replica", "steps"]] = df[["replica", "steps"]].astype("int64")
        return df


def _grouped(cols: dict[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """The rows from each of ``starts`` to the next as one row: ``t_s`` of
    the first, ``step_s`` and ``steps`` summed, every other column the mean
    weighted by step time (the plain mean where none of them took time)."""
    if len(starts) == len(cols["t_s"]):
        return cols
    n = len(cols["t_s"])
    if 2 * len(starts) == n and (np.diff(starts) == 2).all():     # pairs: what a halving merges
        def sums(a: np.ndarray) -> np.ndarray:
            return a[..., 0::2] + a[..., 1::2]         # reduceat's own sum of two, without its per-group loop
    else:
        def sums(a: np.ndarray) -> np.ndarray:
            return np.add.reduceat(a, starts, axis=-1)
    w = np.maximum(cols["step_s"], 0.0)
    ws = sums(w)
    values = np.vstack([cols[c] for c in VALUE_COLUMNS])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums(values * w) / ws
    untimed = ws <= 0
    if untimed.any():
        rows = np.diff(np.r_[starts, n])
        means[:, untimed] = (sums(values) / rows)[:, untimed]
    out = {"t_s": cols["t_s"][starts], "replica": cols["replica"][starts],
           "step_s": sums(cols["step_s"]), "steps": sums(cols["steps"])}
    out.update(zip(VALUE_COLUMNS, means))
    return out


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([ch[c] for ch in chunks]) for c in chunks[0]}


def _sorted(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((cols["t_s"], cols["replica"]))
    return {c: v[order] for c, v in cols.items()}
