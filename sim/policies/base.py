"""What every batching policy shares: the spec, the queues, rejection and
finishing bookkeeping.

A policy is pure (DESIGN.md rule 1): it sees requests and a KV manager, and
``schedule(now) -> Batch | None`` / ``on_step_done(batch, now)`` are its whole
interface to whoever advances time (the SimPy driver, or a real executor).
"""
from __future__ import annotations

from collections import deque
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from sim.batch import Batch
from sim.memory.base import KVManager
from sim.presets import ModelSpec
from sim.request import Request, Status


class BatchingSpec(BaseModel):
    """``engine.batching`` in a config."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["static", "continuous"] = "continuous"
    max_batch_size: PositiveInt = 256
    max_batch_tokens: PositiveInt = 8192
    """continuous: most tokens (prefill tokens + decode sequences) in one step."""
    mixed_prefill_decode: bool = True
    """continuous: prefills and decodes share a step; if false a step with
    admissions is prefill-only and running sequences wait (vLLM v0)."""
    max_wait_s: float = Field(0.0, ge=0.0)
    """static: how long an idle engine waits for a batch to fill."""
    preemption: Literal["recompute", "swap"] = "recompute"
    """paged memory only: what happens to a sequence evicted when blocks run out."""


class Policy:
    """Queues and bookkeeping common to every policy.

    Invariant: every request handed to ``add`` is in exactly one of
    ``rejected``, ``waiting``, ``swapped``, ``running`` (a policy's batch members)
    or ``finished`` until the run ends.
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
        self._running: list[Request] = []   # hold KV on the GPU, admission order
        self._repeatable = True   # the last schedule() would decide the same way next step
        self.num_preemptions = 0

    # ---- arrivals -----------------------------------------------------
    def rejection_reason(self, req: Request) -> str | None:
        if req.final_tokens > self.model.max_context_tokens:
            return (f"needs {req.final_tokens} tokens of context, "
                    f"{self.model.name} allows {self.model.max_context_tokens}")
        return self.kv.rejection_reason(req.final_tokens)

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
        to be the same decode batch with every context one longer each step
        (no completion, admission, preemption or allocation failure), assuming
        no new arrival. 1 means "don't jump".

        A pure decode step of every running sequence repeats unchanged while
        no sequence finishes (the run may end *on* a finishing step) and
        memory growth fits. Whatever admission or swap-in failed on its first
        step cannot succeed later in the run: decode steps only consume
        memory, and the batch size does not change."""
        if (not self._repeatable or batch.prefill_new_tokens or batch.swap_in_tokens
                or batch.swap_out_tokens or not batch.requests
                or len(batch.requests) != len(self._running)):
            return 1
        max_steps = min(r.output_tokens - r.generated_tokens for r in batch.requests)
        if max_steps <= 1:
            return 1
        return 1 + growth_steps(self.kv, batch.requests, max_steps - 1)

    def advance_decode_run(self, batch: Batch, step_ends_s: list[float]) -> None:
        """Apply ``len(step_ends_s)`` steps of a decode run at once: step 1's
        slots were reserved by ``schedule``; reserve steps 2..k, emit one token
        per step, retire what finished on the last step."""
        k = len(step_ends_s)
        if k > 1 and not self.kv.append_all([req.request_id for req in batch.requests], k - 1):
            raise AssertionError("decode run planned past the free KV memory")
        for req in batch.requests:
            req.computed_tokens += k - 1
            req.generated_tokens += k
            if self.record_token_times:
                req.token_times_s.extend(step_ends_s)  # type: ignore[union-attr]
        self._retire_done(step_ends_s[-1])

    def next_wakeup_s(self, now: float) -> float | None:
        """When an idle policy wants to be asked again even if nothing arrives."""
        return None

    # ---- state --------------------------------------------------------
    @property
    def running(self) -> list[Request]:
        return self._running

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.swapped) + len(self.running)

    def has_work(self) -> bool:
        return self.num_outstanding > 0

    # ---- shared bookkeeping ------------------------------------------
    def _emit_token(self, req: Request, now: float) -> None:
        req.generated_tokens += 1
        if req.first_token_s is None:
            req.first_token_s = now
        if self.record_token_times:
            if req.token_times_s is None:
                req.token_times_s = []
            req.token_times_s.append(now)

    def _finish(self, req: Request, now: float) -> None:
        self.kv.free(req.request_id)
        req.status = Status.FINISHED
        req.finish_s = now
        req.computed_tokens = 0
        self.finished.append(req)

    def on_step_done(self, batch: Batch, now: float) -> None:
        for req in batch.requests:
            self._emit_token(req, now)
        self._retire_done(now)

    def _retire_done(self, now: float) -> None:
        keep: list[Request] = []
        for req in self._running:
            if req.generated_tokens >= req.output_tokens:
                self._finish(req, now)
            else:
                keep.append(req)
        self._running = keep

    def _try_admit_head(self, now: float, token_budget: int | None = None) -> Request | None:
        """Move the oldest waiting request into ``running`` if its (re-)prefill
        fits ``token_budget`` and the KV manager can allocate it; None if not."""
        req = self.waiting[0]
        n = prefill_length(req)
        if token_budget is not None and n > token_budget:
            return None
        if not self.kv.can_allocate(req.request_id, n, req.final_tokens):
            return None
        self.waiting.popleft()
        self.kv.allocate(req.request_id, n, req.final_tokens)
        req.computed_tokens = n
        req.status = Status.RUNNING
        if req.schedule_s is None:
            req.schedule_s = now
        self._running.append(req)
        return req

    def _reject_head(self, why: str) -> None:
        req = self.waiting.popleft()
        req.status, req.reason = Status.REJECTED, why
        self.rejected.append(req)

    def _preempt_recompute(self, req: Request) -> None:
        """Drop a running sequence's KV; it re-prefills prompt + generated tokens."""
        self.kv.free(req.request_id)
        req.computed_tokens = 0
        req.preemptions += 1
        req.status = Status.WAITING
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def finish_run(self) -> list[Request]:
        """End of the horizon: every request still held is UNFINISHED; its KV
        is released so the end-of-run leak check covers the manager."""
        left = list(self.running) + list(self.waiting) + list(self.swapped)
        for req in left:
            if req.status in (Status.RUNNING, Status.SWAPPED):
                self.kv.free(req.request_id)
            req.status = Status.UNFINISHED
        self.waiting.clear()
        self.swapped.clear()
        self._running.clear()
        return left


def growth_steps(kv: KVManager, requests: tuple[Request, ...], max_growth: int) -> int:
    """Largest g <= max_growth such that every sequence can grow by g tokens
    at once (paged: the new blocks they all need fit in the free blocks;
    contiguous: each stays inside its own reservation)."""
    if kv.layout != "paged":
        return max_growth if all(kv.can_append(r.request_id, max_growth) for r in requests) else 0
    bs = kv.block_size  # type: ignore[attr-defined]
    slack = [(-r.computed_tokens) % bs for r in requests]   # free slots in each last block
    free_blocks = kv.num_free_blocks  # type: ignore[attr-defined]

    def blocks_for(g: int) -> int:
        return sum((g - s + bs - 1) // bs for s in slack if g > s)

    if blocks_for(max_growth) <= free_blocks:
        return max_growth
    lo, hi = 0, max_growth          # blocks_for(lo) fits, blocks_for(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks_for(mid) <= free_blocks:
            lo = mid
        else:
            hi = mid
    return lo


def prefill_length(req: Request) -> int:
    """Tokens a (re-)prefill must compute: the prompt plus, after a
    recompute preemption, every token generated so far."""
    return req.prompt_tokens + req.generated_tokens
