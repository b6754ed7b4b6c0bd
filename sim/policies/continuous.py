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
"""
from __future__ import annotations

from sim.batch import Batch
from sim.policies.base import Policy
from sim.request import Request, Status


class ContinuousPolicy(Policy):
    name = "continuous"

    def rejection_reason(self, req: Request) -> str | None:
        if req.prompt_tokens > self.spec.max_batch_tokens:
            return (f"prompt of {req.prompt_tokens} tokens exceeds "
                    f"engine.batching.max_batch_tokens={self.spec.max_batch_tokens}")
        return super().rejection_reason(req)

    # ---- schedule ------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        prefills: list[Request] = []
        decodes: list[Request] = []
        swap_in: list[tuple[int, int]] = []
        swap_out: list[tuple[int, int]] = []
        swap_in_tokens = swap_out_tokens = 0
        if not self.spec.mixed_prefill_decode and not self.swapped:
            prefills = self._admit(now, 0)          # a step with admissions is prefill-only
        if not prefills:
            decodes, swap_out_tokens, num_evicted = self._reserve_decode_slots(swap_out)
            # A step that preempts admits nothing; the next one may, so it
            # cannot start a run of identical steps.
            self._repeatable = num_evicted == 0
            if num_evicted == 0:
                swap_in_tokens = self._swap_in(swap_in)
                if self.spec.mixed_prefill_decode:
                    prefills = self._admit(now, len(decodes))
        if not prefills and not decodes and not swap_in_tokens and not swap_out_tokens:
            if self.waiting and not self._running and not self.swapped:
                # Memory is empty, yet the oldest request cannot be admitted:
                # it never will be. Reject it rather than deadlock.
                self._reject_head("does not fit in the empty KV cache")
                return self.schedule(now)
            return None
        return Batch(
            prefill_new_tokens=tuple(req.computed_tokens for req in prefills),
            prefill_context_tokens=(0,) * len(prefills),
            decode_context_tokens=tuple(req.computed_tokens for req in decodes),
            kv_layout=self.kv.layout,  # type: ignore[arg-type]
            swap_in_tokens=swap_in_tokens,
            swap_out_tokens=swap_out_tokens,
            requests=tuple(prefills) + tuple(decodes),
            swap_out_blocks=tuple(swap_out),
            swap_in_blocks=tuple(swap_in),
        )

    def _reserve_decode_slots(self, swap_out: list[tuple[int, int]]) -> tuple[list[Request], int, int]:
        """Append one KV slot for every running sequence, preempting from the
        back (latest admitted first) when memory runs out. Victims always
        come from behind the cursor, so no sequence loses a slot it got.
        Returns the decoding sequences, the KV tokens swapped out and the
        number of sequences preempted; the swap's block copies go to ``swap_out``."""
        kv = self.kv
        running = self._running
        if kv.append_all([req.request_id for req in running], 1):   # the usual case
            for req in running:
                req.computed_tokens += 1
            return list(running), 0, 0
        decodes: list[Request] = []
        swapped_tokens = num_evicted = 0
        i = 0
        while i < len(self._running):
            req = self._running[i]
            if kv.can_append(req.request_id, 1):
                kv.append(req.request_id, 1)
                req.computed_tokens += 1
                decodes.append(req)
                i += 1
            else:
                swapped_tokens += self._evict(self._running.pop(), swap_out)
                num_evicted += 1
        return decodes, swapped_tokens, num_evicted

    def _evict(self, req: Request, swap_out: list[tuple[int, int]]) -> int:
        """Preempt ``req``; returns KV tokens moved to swap space."""
        if self.spec.preemption == "swap" and self.kv.can_swap_out(req.request_id):
            moved = self.kv.num_tokens(req.request_id)
            swap_out.extend(self.kv.swap_out(req.request_id))
            req.status = Status.SWAPPED
            req.preemptions += 1
            self.num_preemptions += 1
            self.swapped.append(req)
            return moved
        self._preempt_recompute(req)
        return 0

    def _swap_in(self, swap_in: list[tuple[int, int]]) -> int:
        moved = 0
        while self.swapped and len(self._running) < self.spec.max_batch_size:
            req = self.swapped[0]
            rid = req.request_id
            if not self.kv.can_swap_in(rid):
                break
            self.swapped.popleft()
            moved += self.kv.num_tokens(rid)
            swap_in.extend(self.kv.swap_in(rid))
            req.status = Status.RUNNING
            self._running.append(req)
            # it rejoins as a decode next step; this step only copies it back
        return moved

    def _admit(self, now: float, num_decodes: int) -> list[Request]:
        budget = self.spec.max_batch_tokens - num_decodes
        admitted: list[Request] = []
        while self.waiting and len(self._running) < self.spec.max_batch_size:
            # a lone prefill may exceed the budget (a recompute of a long context)
            req = self._try_admit_head(now, budget if admitted or num_decodes else None)
            if req is None:
                break
            admitted.append(req)
            budget -= req.computed_tokens
        return admitted
