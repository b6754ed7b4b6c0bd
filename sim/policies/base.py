"""What every batching policy shares: the spec, the queues, rejection and
finishing bookkeeping.

A policy is pure (DESIGN.md rule 1): it sees requests and a KV manager, and
``schedule(now) -> Batch | None`` / ``on_step_done(batch, now)`` are its whole
interface to whoever advances time (the SimPy driver, or a real executor).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.batch import SMALL_COUNTS, Batch, TokenCounts, token_counts
from sim.fields import Count
from sim.memory.base import KVManager
from sim.presets import ModelSpec
from sim.policies.running import RunningSet
from sim.request import Request, Status


class BatchingSpec(BaseModel):
    """``engine.batching`` in a config."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["static", "continuous"] = "continuous"
    max_batch_size: Count = 256
    max_batch_tokens: Count = 8192
    """continuous: most tokens (prefill tokens + decode sequences) in one step."""
    mixed_prefill_decode: bool = True
    """continuous: prefills and decodes share a step; if false a step with
    admissions is prefill-only and running sequences wait (vLLM v0)."""
    max_wait_s: float = Field(0.0, ge=0.0)
    """static: how long an idle engine waits for a batch to fill."""
    preemption: Literal["recompute", "swap"] = "recompute"
    """paged memory only: what happens to a sequence evicted when blocks run out."""
    chunked_prefill: bool = False
    """continuous: each step's ``max_batch_tokens`` go to the running decodes
    first, then to prefill chunks (a prompt may take several steps; its first
    token comes after its last chunk)."""

    @model_validator(mode="after")
    def _chunking_mixes(self) -> "BatchingSpec":
        if self.chunked_prefill and not self.mixed_prefill_decode:
            raise ValueError("chunked_prefill: chunks share steps with decodes; it needs "
                             "mixed_prefill_decode: true")
        if self.chunked_prefill and self.policy != "continuous":
            raise ValueError("chunked_prefill: applies to policy: continuous only")
        return self


class Policy:
    """Queues and bookkeeping common to every policy.

    Invariant: every request handed to ``add`` is in exactly one of
    ``rejected``, ``waiting``, ``swapped``, running (``self._run``, the
    sequences holding KV on the GPU, in admission order) or ``finished``
    until the run ends. Running sequences live in arrays (``RunningSet``):
    a decision costs a few array operations, not a loop over the batch.
    """

    name = "base"

    def __init__(self, spec: BatchingSpec, kv: KVManager, model: ModelSpec,
                 record_token_times: bool = False) -> None:
        self.spec = spec
        self.kv = kv
        self.model = model
        self.record_token_times = record_token_times
        self.waiting: deque[Request] = deque()
        self.swapped: deque[Request] = deque()
        self.finished: list[Request] = []
        self.rejected: list[Request] = []
        self._run = RunningSet()
        self._emitting: slice | np.ndarray = slice(0, 0)   # running positions the last batch computes
        self._prefilling: range | list[int] = range(0)      # those of them that end a prefill (or chunked: its last chunk)
        self._admitted_cached: list[int] = []   # this step's admissions: prefix tokens reused, in order
        self._repeatable = True   # the last schedule() would decide the same way next step
        self._joining = 0         # extra samples of running requests, joining at their first token
        self._copies: list = getattr(kv, "block_copies", [])   # the KV manager's copy-on-write log
        self.num_preemptions = 0

    # ---- arrivals -----------------------------------------------------
    def rejection_reason(self, req: Request) -> str | None:
        final = req.final_tokens
        if final > self.model.max_context_tokens:
            return (f"needs {final} tokens of context, "
                    f"{self.model.name} allows {self.model.max_context_tokens}")
        if req.num_seqs > self.spec.max_batch_size:
            return (f"runs {req.num_seqs} sequences, engine.batching.max_batch_size allows "
                    f"{self.spec.max_batch_size}")
        if req.num_seqs > 1 and self.kv.layout == "paged":
            # its samples together: the prompt once, then each sample's output and its copy
            # of the prompt's partial last block
            return self.kv.rejection_reason(
                req.prompt_tokens + req.num_seqs * (req.output_tokens + self.kv.block_size))
        if req.num_seqs > 1:       # contiguous: a reservation each
            one = self.kv.rejection_reason(final)
            if one is not None:
                return one
            per = self.kv.reservation_tokens(final)
            if per * req.num_seqs > self.kv.total_tokens:
                return (f"{req.num_seqs} samples need {per * req.num_seqs} reserved tokens, "
                        f"the KV cache has {self.kv.total_tokens}")
            return None
        return self.kv.rejection_reason(final)

    def _has_room(self, req: Request) -> bool:
        """Whether ``max_batch_size`` leaves rows for every sequence of
        ``req`` (its samples count from admission, as vLLM counts them)."""
        return self._run.n + self._joining + req.num_seqs <= self.spec.max_batch_size

    def add(self, req: Request, now: float) -> bool:
        """Queue an arrived request; False (and status REJECTED) if it can never run."""
        reason = self.rejection_reason(req)
        if reason is not None:
            req.status, req.reason = Status.REJECTED, reason
            self.rejected.append(req)
            return False
        req.status = Status.WAITING
        self.waiting.append(req)
        return True

    # ---- the policy interface -----------------------------------------
    def schedule(self, now: float) -> Batch | None:
        raise NotImplementedError

    def decode_run_length(self, batch: Batch) -> int:
        """How many consecutive steps, starting with ``batch``, are guaranteed
        to follow each other with no decision to take between them, assuming
        no new arrival: ``batch``, then decode steps of every running sequence
        with every context one longer each step (no completion, admission,
        preemption or allocation failure). 1 means "don't jump".

        ``batch`` itself may be a pure decode step of every running sequence
        or a step that prefills (a *led* run): then every running sequence
        must emit a token on it (no partial prefill, no sequence that only
        swapped back in, no samples to join) and the queue must have nothing
        the next step could admit. The run ends *on* the step on which the
        first sequence finishes, or before memory growth would not fit.
        Whatever admission or swap-in failed on a decode step cannot succeed
        later in the run: decode steps only consume memory, and the batch
        size does not change."""
        run = self._run
        if (not self._repeatable or batch.swap_in_tokens or batch.swap_out_tokens or not batch.requests
                or run.num_beam_rows):        # beams are re-selected after every step
            return 1
        if batch.prefill_new_tokens:
            if run.num_multi_rows or self._joining or not self._all_emit() or self._queue_could_join():
                return 1
        elif len(batch.requests) != run.n:
            return 1
        max_steps = run.steps_to_finish()
        if max_steps <= 1:
            return 1
        return 1 + self.kv.growth_steps(run.live_slots, max_steps - 1)

    def _all_emit(self) -> bool:
        """Whether every running sequence emits a token on the scheduled step."""
        rows = self._emitting
        if isinstance(rows, slice):
            return not rows.start and rows.stop == self._run.n
        return len(rows) == self._run.n

    def _queue_could_join(self) -> bool:
        """Whether a waiting or swapped request could join the step after a
        step that prefills (a policy that admits while running says when)."""
        return bool(self.waiting or self.swapped)

    def run_batch(self, batch: Batch) -> Batch:
        """The decode step that repeats in a run that starts with ``batch``:
        ``batch`` itself when it decodes, else the step after it (every
        running sequence decodes one more token)."""
        if not batch.prefill_new_tokens:
            return batch
        run = self._run
        total, longest = run.context_totals()
        return Batch(decode_context_tokens=token_counts(run.contexts(run.n, 1)),
                     kv_layout=self.kv.layout,  # type: ignore[arg-type]
                     requests=tuple(run.reqs),
                     decode_sum_max=(total + run.n, longest + 1))

    def run_ignores_arrivals(self) -> bool:
        """Whether an arrival during the current decode run could not change
        any of its steps, so the run may continue through it. Policies say
        when (a running static batch, a full or blocked continuous batch)."""
        return False

    def advance_decode_run(self, batch: Batch, step_ends_s: list[float]) -> None:
        """Apply the ``len(step_ends_s)`` steps of a run that starts with
        ``batch`` at once: ``batch``'s slots were reserved by ``schedule``
        (a led run: its step is done as ``on_step_done`` does it); reserve
        the decode steps 2..k, emit one token per step, retire what finished
        on the last step."""
        run, k = self._run, len(step_ends_s)
        lead = 0
        if batch.prefill_new_tokens:
            self.on_step_done(batch, step_ends_s[0])
            lead = 1
        if k > 1 and not self.kv.append_slots(run.live_slots, k - 1):
            raise AssertionError("decode run planned past the free KV memory")
        run.grow(run.n, k - 1)
        run.emit_all(k - lead)
        if self.record_token_times:
            ends = step_ends_s[lead:]
            for i in np.flatnonzero(run.seq[: run.n] >= 0):    # a request's own row, not its extra samples
                run.reqs[i].token_times_s.extend(ends)
        self._retire_done(step_ends_s[-1])

    def next_wakeup_s(self, now: float) -> float | None:
        """When an idle policy wants to be asked again even if nothing arrives."""
        return None

    # ---- state --------------------------------------------------------
    @property
    def running(self) -> list[Request]:
        """The running requests, admission order, synchronised (for observers)."""
        return self._run.requests()

    @property
    def num_running(self) -> int:
        return self._run.n

    def last_block_fill(self) -> list[int]:
        """Paged KV: how many running sequences hold each number of tokens
        in their last block (entry q: q + 1 tokens; see ``fill_counts``)."""
        run = self._run
        return self.kv.fill_counts(run.live_slots)

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.swapped) + self._run.n

    def has_work(self) -> bool:
        return self.num_outstanding > 0

    # ---- shared bookkeeping ------------------------------------------
    def _batch_rows(self, prefill_from: int, decode_to: int) -> tuple[tuple, Sequence[int], Sequence[int], tuple]:
        """``(requests, held tokens, decode contexts, prefill rows' held
        tokens)`` of a batch whose prefills are running positions
        ``prefill_from:`` and decodes ``:decode_to``, prefills listed first;
        the counts of many rows as ``TokenCounts`` (``sim.batch.token_counts``)."""
        run = self._run
        if prefill_from == run.n:         # a pure decode step
            contexts = token_counts(run.contexts(decode_to))
            return tuple(run.reqs if decode_to == run.n else run.reqs[:decode_to]), contexts, contexts, ()
        reqs, held = run.reqs, run.contexts(run.n)
        rows = tuple(reqs[prefill_from:] + reqs[:decode_to])
        if run.n <= SMALL_COUNTS:         # a few rows: one tolist, then tuples of its slices
            counts = held.tolist()
            return (rows, tuple(counts[prefill_from:] + counts[:decode_to]), tuple(counts[:decode_to]),
                    tuple(counts[prefill_from:]))
        prefills = held[prefill_from:]
        # in the batch's order, prefills first: the running set turned, unless rows that only
        # swap back in sit between the decodes and the prefills
        rows_held = TokenCounts(held, prefill_from) if decode_to == prefill_from else \
            token_counts(np.concatenate((prefills, held[:decode_to])))
        return rows, rows_held, token_counts(held[:decode_to]), tuple(prefills.tolist())

    def _seq_ids(self, prefill_rows, num_decodes: int) -> tuple[int, ...]:
        """``Batch.seq_ids`` of a batch whose prefills are the running
        positions ``prefill_rows`` (a slice or a list) and whose decodes are
        ``:num_decodes``, prefills first: empty unless some running request
        has several sequences."""
        run = self._run
        if not run.num_multi_rows:
            return ()
        seq = run.seq[: run.n]
        return tuple(seq[prefill_rows].tolist()) + tuple(seq[:num_decodes].tolist())

    def _take_copies(self) -> tuple[tuple[int, int], ...]:
        """The copy-on-write block copies this step's reservations made."""
        if not self._copies:
            return ()
        copies = tuple(self._copies)
        self._copies.clear()
        return copies

    def on_step_done(self, batch: Batch, now: float) -> None:
        """The batch's sequences (``self._emitting``, set by ``schedule``) each
        emit a token at ``now``; the first token of a request sets its TTFT."""
        run = self._run
        first = False
        for i in self._prefilling:          # only a prefill's last chunk gives a first token
            if run.generated(i) == 0:
                run.reqs[i].first_token_s = now
                first = True
        rows = self._emitting
        if isinstance(rows, slice) and not rows.start and rows.stop == run.n:   # every row
            run.emit_all()
        else:
            run.emit(rows)
        if self.record_token_times:
            rows = np.arange(run.n)[self._emitting]
            for i in rows[run.seq[rows] >= 0]:          # a request's own row, not its extra samples
                req = run.reqs[i]
                if req.token_times_s is None:
                    req.token_times_s = []
                req.token_times_s.append(now)
        if first and run.num_multi_rows:
            self._start_samples()
        self._retire_done(now)
        if run.num_beam_rows:
            self._select_beams()

    def _select_beams(self) -> None:
        """Beam search: after each token every request keeps ``num_seqs``
        beams, each the continuation of a beam of the step before. Which ones
        depends on the model's scores, which a simulation does not have: each
        new beam's parent is drawn uniformly from the current beams (a
        Wright-Fisher process; seeded by request and step, so runs repeat).
        Paged: a beam whose line dies is freed, and a parent with k new beams
        is forked k - 1 times into the freed sequence ids (its blocks shared,
        its partial last block copied on the next write). Contiguous: each
        beam keeps its reservation (the parent's KV is copied into it), so
        memory does not change."""
        if self.kv.layout != "paged":
            return
        run = self._run
        i = 0
        while i < run.n:
            req = run.reqs[i]
            w = req.num_seqs
            if not run.beam[i] or i + w > run.n or run.reqs[i + w - 1] is not req:
                i += 1                     # not a beam request, or its beams have not joined yet
                continue
            seqs = run.seq[i: i + w].tolist()
            rng = np.random.default_rng((req.request_id, run.generated(i)))
            parents = rng.integers(0, w, size=w)
            children = {p: [j for j in range(w) if parents[j] == p] for p in set(parents.tolist())}
            spare = [seqs[d] for d in range(w) if d not in children]
            for d in spare:
                self.kv.free(d)
            new = list(seqs)
            for p, kids in children.items():
                new[kids[0]] = seqs[p]
                for k in kids[1:]:
                    new[k] = spare.pop()
                    self.kv.fork(seqs[p], new[k])
            run.seq[i: i + w] = new
            run.slot[i: i + w] = [self.kv.slot(s) for s in new]
            i += w

    def _start_samples(self) -> None:
        """Requests that sample several sequences: once the prompt has given
        the first token, the extra samples (holding KV since admission) join
        the running set right after the request's row."""
        run = self._run
        for i in range(run.n - 1, -1, -1):              # from the back: inserting shifts only later rows
            req = run.reqs[i]
            if req.num_seqs > 1 and run.generated(i) == 1 and run.seq[i] == req.request_id \
                    and (i + 1 == run.n or run.reqs[i + 1] is not req):
                seqs = req.seq_ids[1:]
                run.insert_samples(i, req, [self.kv.slot(s) for s in seqs], seqs)
                self._joining -= len(seqs)

    def _finish(self, req: Request, now: float) -> None:
        if req.num_seqs == 1:         # its one sequence (without building ``seq_ids``)
            self.kv.free(req.request_id)
        else:
            for seq in req.seq_ids:
                self.kv.free(seq)
        req.status = Status.FINISHED
        req.finish_s = now
        req.computed_tokens = 0
        self.finished.append(req)

    def _retire_done(self, now: float) -> None:
        run = self._run
        if run.steps_to_finish() > 0:
            return
        done = run.done_rows()
        if len(done):
            finished = run.remove(done)     # a request's samples all finish on the same step
            for req in dict.fromkeys(finished):
                self._finish(req, now)

    def _try_admit_head(self, now: float, token_budget: int | None = None, chunked: bool = False) -> Request | None:
        """Move the oldest waiting request into the running set if its
        (re-)prefill fits ``token_budget`` (``chunked``: if any of it does) and
        the KV manager can allocate it; None if not. The KV of the whole
        prefill is allocated at once; with ``chunked`` the sequence joins with
        all its uncached tokens still to compute (``todo``)."""
        req = self.waiting[0]
        n = prefill_length(req)
        if token_budget is not None and not self._within_budget(req, n, token_budget, chunked):
            return None
        cached = self.kv.try_allocate(req.request_id, n, req.final_tokens, req.segments)
        if cached is None:
            return None
        if req.num_seqs > 1 and not self._hold_samples(req, n):
            self.kv.free(req.request_id)
            return None
        self.waiting.popleft()
        self._joining += req.num_seqs - 1
        req.cached_tokens += cached
        self._admitted_cached.append(cached)
        req.computed_tokens = n
        req.status = Status.RUNNING
        if req.schedule_s is None:
            req.schedule_s = now
        self._run.add(req, self.kv.slot(req.request_id), n - cached if chunked else 0)
        return req

    def _head_fits(self, token_budget: int | None, chunked: bool) -> bool:
        """Whether the oldest waiting request's (re-)prefill fits
        ``token_budget`` (None: any; ``chunked``: if any of it does) and the
        KV manager can allocate it."""
        req = self.waiting[0]
        n = prefill_length(req)
        if token_budget is not None and not self._within_budget(req, n, token_budget, chunked):
            return False
        return self.kv.can_allocate(req.request_id, n, req.final_tokens, req.segments)

    def _within_budget(self, req: Request, n: int, token_budget: int, chunked: bool) -> bool:
        """Whether a (re-)prefill of ``n`` tokens fits ``token_budget``: its
        tokens not cached (``chunked``: any of them)."""
        if chunked:
            return token_budget >= 1
        cached = self.kv.prefix_hit_tokens(n, req.segments) if req.segments is not None else 0
        return n - cached <= token_budget

    def _hold_samples(self, req: Request, n: int) -> bool:
        """KV for a request's extra samples at admission: paged blocks share
        the prompt's (``fork``: copied on write when a sample writes into a
        shared partial block); a contiguous reservation each, holding a copy
        of the prompt. False (nothing held) if they do not fit."""
        held = []
        for seq in req.seq_ids[1:]:
            if self.kv.layout == "paged":
                self.kv.fork(req.request_id, seq)
            elif self.kv.can_allocate(seq, n, req.final_tokens):
                self.kv.allocate(seq, n, req.final_tokens)
            else:
                for s in held:
                    self.kv.free(s)
                return False
            held.append(seq)
        return True

    def _reserve_one_each(self, preempt, count: int | None = None) -> tuple[int, int, int]:
        """One more KV slot for every running sequence (the first ``count``:
        the decodes, when partially prefilled sequences follow them); when
        memory runs out, ``preempt(request)`` the most recently admitted until
        the rest fit (victims always come from behind the cursor, so no
        sequence loses a slot it got). Returns the sequences that got their
        slot (positions ``:count``), the KV tokens swapped out and the
        sequences preempted."""
        run = self._run
        count = run.n if count is None else count
        if self.kv.append_slots(run.live_slots if count == run.n else run.slot[:count], 1):   # the usual case
            run.grow(count)
            return count, 0, 0
        swapped_tokens = num_evicted = i = 0
        while i < min(count, run.n):
            rid = int(run.seq[i])
            if self.kv.can_append(rid, 1):
                self.kv.append(rid, 1)
                run.grow_row(i)
                i += 1
            else:
                swapped_tokens += preempt(run.pop())
                num_evicted += 1
        return min(count, run.n), swapped_tokens, num_evicted

    def _reject_head(self, why: str) -> None:
        req = self.waiting.popleft()
        req.status, req.reason = Status.REJECTED, why
        self.rejected.append(req)

    def _preempt_recompute(self, req: Request) -> int:
        """Drop a running sequence's KV; it re-prefills prompt + generated
        tokens. A request that samples several sequences (its rows are the
        last ones, together) drops them all and starts its samples again."""
        run = self._run
        while run.n and run.reqs[run.n - 1] is req:
            run.pop()
        if req.num_seqs > 1 and req.generated_tokens == 0:
            self._joining -= req.num_seqs - 1     # before its first token: its samples had not joined
        for seq in req.seq_ids:
            self.kv.free(seq, complete=False)
        if req.num_seqs > 1:
            req.generated_tokens = 0
        req.computed_tokens = 0
        req.pending_prefill = 0
        req.preemptions += 1
        req.status = Status.WAITING
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        return 0

    def finish_run(self) -> list[Request]:
        """End of the horizon: every request still held is UNFINISHED; its KV
        is released so the end-of-run leak check covers the manager."""
        left = list(dict.fromkeys(self._run.clear())) + list(self.waiting) + list(self.swapped)
        for req in left:
            if req.status in (Status.RUNNING, Status.SWAPPED):
                for seq in req.seq_ids:
                    self.kv.free(seq, complete=False)
            req.status = Status.UNFINISHED
        self.waiting.clear()
        self.swapped.clear()
        self._joining = 0
        return left


def prefill_length(req: Request) -> int:
    """Tokens a (re-)prefill must compute: the prompt plus, after a
    recompute preemption, every token generated so far."""
    return req.prompt_tokens + req.generated_tokens
