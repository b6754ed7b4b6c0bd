"""Request-level (static) batching: HF ``generate`` / FasterTransformer style.

When the engine is idle it forms a batch of up to ``max_batch_size`` waiting
requests (FIFO, while memory allows), optionally waiting up to ``max_wait_s``
after the oldest arrival for the batch to fill. Prompts are padded to the
longest in the batch; the batch then decodes until its longest request ends.
A finished request keeps its row (compute is spent on it as padding) but its
KV memory is released. Each step's shapes are padded: every row computes, and
attends the padded context length.

With paged memory a sequence that cannot grow is preempted by recompute (its
row becomes padding, it re-queues at the front); contiguous memory reserves up
front and never preempts.
"""
from __future__ import annotations

from sim.batch import Batch
from sim.policies.base import Policy
from sim.request import Request


class StaticPolicy(Policy):
    name = "static"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rows = 0                    # batch rows, padding included; 0 = idle
        self._padded_prompt = 0
        self._decode_steps = 0            # decode steps since the prefill

    def next_wakeup_s(self, now: float) -> float | None:
        if self._rows or not self.waiting or self.spec.max_wait_s <= 0:
            return None
        return self.waiting[0].arrival_s + self.spec.max_wait_s

    # ---- schedule ------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        if self._rows:
            return self._decode_step()
        if not self.waiting:
            return None
        full = len(self.waiting) >= self.spec.max_batch_size
        if not full and now < self.waiting[0].arrival_s + self.spec.max_wait_s:
            return None
        return self._form_batch(now)

    def _form_batch(self, now: float) -> Batch:
        batch: list[Request] = []
        while self.waiting and len(batch) < self.spec.max_batch_size:
            req = self._try_admit_head(now)
            if req is None:
                break
            batch.append(req)
        if not batch:
            # The engine is idle and memory is empty, yet the oldest request
            # does not fit: it never will (e.g. a paged watermark). Reject it
            # rather than deadlock.
            self._reject_head("does not fit in the empty KV cache")
            return self.schedule(now)  # type: ignore[return-value]
        self._rows = len(batch)
        self._padded_prompt = max(r.computed_tokens for r in batch)
        self._decode_steps = 0
        return Batch(
            prefill_new_tokens=(self._padded_prompt,) * self._rows,
            prefill_context_tokens=(0,) * self._rows,
            kv_layout=self.kv.layout,  # type: ignore[arg-type]
            requests=tuple(batch),
        )

    def _decode_step(self) -> Batch:
        kv = self.kv
        active = self._running
        i = len(active) if kv.append_all([req.request_id for req in active], 1) else 0
        if i:
            for req in active:
                req.computed_tokens += 1
        while i < len(active):
            req = active[i]
            if kv.can_append(req.request_id, 1):
                kv.append(req.request_id, 1)
                req.computed_tokens += 1
                i += 1
            else:
                self._preempt_recompute(active.pop())
        self._decode_steps += 1
        return Batch(
            decode_context_tokens=(self._padded_prompt + self._decode_steps,) * self._rows,
            kv_layout=self.kv.layout,  # type: ignore[arg-type]
            requests=tuple(active),
        )

    def _retire_done(self, now: float) -> None:
        super()._retire_done(now)
        if not self._running:
            self._rows = 0          # the batch is over: the engine is idle

    def advance_decode_run(self, batch: Batch, step_ends_s: list[float]) -> None:
        self._decode_steps += len(step_ends_s) - 1
        super().advance_decode_run(batch, step_ends_s)
