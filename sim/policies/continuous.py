"""Iteration-level (continuous) batching: Orca with contiguous KV, vLLM with
paged KV.

Each step, in order:

1. every running sequence needs room for one more token; when paged memory
   runs out, the most recently admitted running sequence is preempted
   (``recompute``: its blocks are freed and it re-queues at the front;
   ``swap``: its blocks move to CPU swap space) until the rest fit;
2. if nothing was preempted, swapped sequences come back first (FIFO), then
   waiting requests are admitted in arrival order while ``max_batch_size``,
   ``max_batch_tokens`` and ``kv.can_allocate`` allow -- admission stops at the
   first request that does not fit (no overtaking, so no starvation);
3. with ``mixed_prefill_decode`` the new prefills share the step with the
   decodes; otherwise a step with admissions runs prefills only.

Contiguous memory reserves each sequence's final length up front, so step 1
never fails for it and it never preempts.

**Chunked prefill** (``chunked_prefill: true``, Sarathi-Serve, vLLM): each
step has ``max_batch_tokens`` to spend. The decodes take one each; what is
left goes to prefill *chunks*, first of the partially prefilled sequences (in
admission order), then of new admissions from the queue (in arrival order,
no overtaking). A sequence's KV for its whole prefill is allocated when it is
admitted; its chunks compute it over the context computed before them, and
its first token comes with its last chunk. The running set stays ordered
decodes first, then partially prefilled sequences. A preempted partial
prefill is always recomputed (nothing of it is worth swapping), and swapped
sequences return only when no prefill is partial.

The running set is in admission order: the decodes first, then the
sequences swapped back in this step (they only copy back), then this step's
admissions.
"""
from __future__ import annotations

import numpy as np

from sim.batch import Batch
from sim.policies.base import Policy
from sim.request import Request, Status


def sum_todo(run, start: int) -> int:
    """Prefill tokens the partially prefilled sequences from ``start`` still need."""
    return int(run.todo[start: run.n].sum())


class ContinuousPolicy(Policy):
    name = "continuous"

    def rejection_reason(self, req: Request) -> str | None:
        if req.prompt_tokens > self.spec.max_batch_tokens and not self.spec.chunked_prefill:
            return (f"prompt of {req.prompt_tokens} tokens exceeds "
                    f"engine.batching.max_batch_tokens={self.spec.max_batch_tokens}")
        return super().rejection_reason(req)

    # ---- schedule ------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        if self.spec.chunked_prefill:
            return self._schedule_chunked(now)
        run = self._run
        swap_in: list[tuple[int, int]] = []
        swap_out: list[tuple[int, int]] = []
        swap_in_tokens = swap_out_tokens = num_decodes = 0
        admitted = 0
        decode_totals = None
        first_admitted = run.n
        self._admitted_cached.clear()
        if not self.spec.mixed_prefill_decode and not self.swapped:
            admitted = self._admit(now, 0)          # a step with admissions is prefill-only
        if not admitted:
            num_decodes, swap_out_tokens, num_evicted = self._reserve_one_each(
                lambda req: self._evict(req, swap_out))
            decode_totals = run.context_totals() if num_decodes == run.n else None
            # A step that preempts admits nothing; the next one may, so it
            # cannot start a run of identical steps.
            self._repeatable = num_evicted == 0
            first_admitted = run.n
            if num_evicted == 0:
                swap_in_tokens = self._swap_in(swap_in) if self.swapped else 0
                first_admitted = run.n
                if self.waiting and self.spec.mixed_prefill_decode:
                    admitted = self._admit(now, num_decodes)
        if not admitted and not num_decodes and not swap_in_tokens and not swap_out_tokens:
            if self.waiting and not run.n and not self.swapped:
                # Memory is empty, yet the oldest request cannot be admitted:
                # it never will be. Reject it rather than deadlock.
                self._reject_head("does not fit in the empty KV cache")
                return self.schedule(now)
            return None
        self._prefilling = range(first_admitted, run.n)
        if first_admitted == num_decodes:
            self._emitting = slice(0, run.n)
        else:            # skip the sequences that only swapped back in
            self._emitting = np.r_[0:num_decodes, first_admitted:run.n]
        requests, held, contexts, prefills = self._batch_rows(first_admitted, num_decodes)
        cached = tuple(self._admitted_cached) if any(self._admitted_cached) else (0,) * len(prefills)
        return Batch(
            prefill_new_tokens=tuple(p - c for p, c in zip(prefills, cached)) if any(cached) else prefills,
            prefill_context_tokens=cached,
            decode_context_tokens=contexts,
            kv_layout=self.kv.layout,  # type: ignore[arg-type]
            swap_in_tokens=swap_in_tokens,
            swap_out_tokens=swap_out_tokens,
            requests=requests,
            swap_out_blocks=tuple(swap_out),
            swap_in_blocks=tuple(swap_in),
            held_tokens=held,
            seq_ids=self._seq_ids(slice(first_admitted, run.n), num_decodes) if run.num_multi_rows else (),
            block_copies=self._take_copies() if self._copies else (),
            decode_sum_max=decode_totals,
        )

    def _schedule_chunked(self, now: float) -> Batch | None:
        run = self._run
        self._admitted_cached.clear()
        swap_out: list[tuple[int, int]] = []
        swap_in: list[tuple[int, int]] = []
        decodes = int(np.count_nonzero(run.todo[: run.n] == 0))      # the prefix of the running set
        num_decodes, swap_out_tokens, num_evicted = self._reserve_one_each(
            lambda req: self._evict(req, swap_out), decodes)
        self._repeatable = num_evicted == 0
        swap_in_tokens = 0
        if num_evicted == 0 and run.n == num_decodes:
            swap_in_tokens = self._swap_in(swap_in)
        first_chunk = run.n if swap_in_tokens else num_decodes       # swapped-in rows only copy back
        budget = self.spec.max_batch_tokens - num_decodes
        if num_evicted == 0:
            while self.waiting and self._has_room(self.waiting[0]) and budget > sum_todo(run, first_chunk):
                if self._try_admit_head(now, budget - sum_todo(run, first_chunk), chunked=True) is None:
                    break
        new, context, positions = [], [], []
        for i in range(first_chunk, run.n):
            if budget < 1:
                break
            todo = int(run.todo[i])
            chunk = min(todo, budget)
            new.append(chunk)
            context.append(run.context(i) - todo)
            run.todo[i] = todo - chunk
            budget -= chunk
            positions.append(i)
        if not num_decodes and not new and not swap_in_tokens and not swap_out_tokens:
            if self.waiting and not run.n and not self.swapped:
                self._reject_head("does not fit in the empty KV cache")
                return self._schedule_chunked(now)
            return None
        done = [i for i in positions if run.todo[i] == 0]             # their last chunk: a first token
        self._emitting = np.concatenate((np.arange(num_decodes), done)) if done else slice(0, num_decodes)
        self._prefilling = done
        contexts = tuple(run.contexts(num_decodes).tolist())
        reqs = tuple([run.reqs[i] for i in positions] + run.reqs[:num_decodes])
        held = tuple(c + n for c, n in zip(context, new)) + contexts   # KV that holds tokens after the step
        return Batch(
            prefill_new_tokens=tuple(new), prefill_context_tokens=tuple(context),
            decode_context_tokens=contexts, kv_layout=self.kv.layout,  # type: ignore[arg-type]
            swap_in_tokens=swap_in_tokens, swap_out_tokens=swap_out_tokens, requests=reqs,
            swap_out_blocks=tuple(swap_out), swap_in_blocks=tuple(swap_in), held_tokens=held,
            seq_ids=self._seq_ids(positions, num_decodes),
            block_copies=self._take_copies(),
        )

    def run_ignores_arrivals(self) -> bool:
        """An arrival joins the back of the queue: it cannot change a decode
        run when the batch is full or the queue's head could not be admitted
        at the run's start (decode steps only consume memory)."""
        if self.swapped:
            return False
        if self._run.n + self._joining >= self.spec.max_batch_size:
            return True
        return bool(self.waiting) and not self._head_admissible(self._run.n)

    def _queue_could_join(self) -> bool:
        """After a step that prefills, the next decodes every running
        sequence unless something swapped comes back or the queue's head
        fits it (a step with admissions is prefill-only when steps are not
        mixed: its lone prefill has no token budget)."""
        if self.swapped:
            return True
        if not self.waiting or not self._has_room(self.waiting[0]):
            return False
        return self._head_admissible(self._run.n if self.spec.mixed_prefill_decode else None)

    def _head_admissible(self, num_decodes: int | None) -> bool:
        """Whether the queue's head fits a step beside ``num_decodes`` decodes
        (None: alone, a prefill-only step's first) and in memory."""
        budget = None if num_decodes is None else self.spec.max_batch_tokens - num_decodes
        return self._head_fits(budget, self.spec.chunked_prefill)

    def _evict(self, req: Request, swap_out: list[tuple[int, int]]) -> int:
        """Preempt ``req``; returns KV tokens moved to swap space."""
        if self.spec.preemption == "swap" and not req.pending_prefill and self.kv.can_swap_out(req.request_id):
            moved = self.kv.num_tokens(req.request_id)
            swap_out.extend(self.kv.swap_out(req.request_id))
            req.status = Status.SWAPPED
            req.preemptions += 1
            self.num_preemptions += 1
            self.swapped.append(req)
            return moved
        return self._preempt_recompute(req)

    def _swap_in(self, swap_in: list[tuple[int, int]]) -> int:
        moved = 0
        while self.swapped and self._run.n + self._joining < self.spec.max_batch_size:
            req = self.swapped[0]
            rid = req.request_id
            if not self.kv.can_swap_in(rid):
                break
            self.swapped.popleft()
            moved += self.kv.num_tokens(rid)
            swap_in.extend(self.kv.swap_in(rid))
            req.status = Status.RUNNING
            self._run.add(req, self.kv.slot(rid))
            # it rejoins as a decode next step; this step only copies it back
        return moved

    def _admit(self, now: float, num_decodes: int) -> int:
        budget = self.spec.max_batch_tokens - num_decodes
        admitted = 0
        while self.waiting and self._has_room(self.waiting[0]):
            # a lone prefill may exceed the budget (a recompute of a long context)
            req = self._try_admit_head(now, budget if admitted or num_decodes else None)
            if req is None:
                break
            admitted += 1
            budget -= req.computed_tokens - self._admitted_cached[-1]
        return admitted
