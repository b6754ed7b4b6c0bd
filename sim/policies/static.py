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

    def run_ignores_arrivals(self) -> bool:
        """A running batch admits nobody until it ends."""
        return self._rows > 0

    def _queue_could_join(self) -> bool:
        return False              # nobody joins a running batch

    def run_batch(self, batch: Batch) -> Batch:
        """After the batch's prefill every row decodes, padded to the longest
        context."""
        if not batch.prefill_new_tokens:
            return batch
        run = self._run
        return Batch(decode_context_tokens=(self._padded_prompt + 1,) * self._rows,
                     kv_layout=self.kv.layout,  # type: ignore[arg-type]
                     requests=tuple(run.reqs))

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
        self._admitted_cached.clear()      # a static batch pads every prompt: it reuses no prefix
        while self.waiting and self._run.n < self.spec.max_batch_size:
            if self._try_admit_head(now) is None:
                break
        if not self._run.n:
            # The engine is idle and memory is empty, yet the oldest request
            # does not fit: it never will (e.g. a paged watermark). Reject it
            # rather than deadlock.
            self._reject_head("does not fit in the empty KV cache")
            return self.schedule(now)  # type: ignore[return-value]
        run = self._run
        self._rows = run.n
        self._padded_prompt = run.context_totals()[1]      # the longest prompt admitted
        self._decode_steps = 0
        self._emitting = slice(0, run.n)
        self._prefilling = range(run.n)
        requests, held, *_ = self._batch_rows(0, 0)
        return Batch(
            prefill_new_tokens=(self._padded_prompt,) * self._rows,
            prefill_context_tokens=(0,) * self._rows,
            kv_layout=self.kv.layout,  # type: ignore[arg-type]
            requests=requests,
            held_tokens=held,
            seq_ids=self._seq_ids(slice(0, run.n), 0),
            block_copies=self._take_copies(),
        )

    def _decode_step(self) -> Batch:
        active, _, _ = self._reserve_one_each(self._preempt_recompute)
        self._decode_steps += 1
        self._emitting = slice(0, active)
        self._prefilling = range(0)
        requests, held, *_ = self._batch_rows(active, active)
        return Batch(
            decode_context_tokens=(self._padded_prompt + self._decode_steps,) * self._rows,
            kv_layout=self.kv.layout,  # type: ignore[arg-type]
            requests=requests,
            held_tokens=held,
            seq_ids=self._seq_ids(slice(0, 0), active),
            block_copies=self._take_copies(),
        )

    def _retire_done(self, now: float) -> None:
        super()._retire_done(now)
        if not self._run.n:
            self._rows = 0          # the batch is over: the engine is idle

    def advance_decode_run(self, batch: Batch, step_ends_s: list[float]) -> None:
        self._decode_steps += len(step_ends_s) - 1
        super().advance_decode_run(batch, step_ends_s)
