"""One request's life: arrival, scheduling, tokens, finish.

A request is mutable state owned by exactly one policy at a time. Times are
simulated seconds; token counts are ``*_tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    WAITING = "waiting"        # arrived, no KV memory held
    RUNNING = "running"        # holds KV memory on the GPU
    SWAPPED = "swapped"        # KV blocks parked in CPU swap space
    FINISHED = "finished"
    REJECTED = "rejected"      # can never run; ``reason`` says why
    UNFINISHED = "unfinished"  # still in flight when the horizon ended


MAX_SEQS = 1024
"""Sequence ids of a request's extra samples are ``-(request_id * MAX_SEQS + i)``."""


@dataclass(eq=False, slots=True)
class Request:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    status: Status = Status.WAITING
    reason: str = ""
    generated_tokens: int = 0      # output tokens produced so far
    computed_tokens: int = 0       # tokens whose KV is in the cache now
    schedule_s: float | None = None  # first time it entered a batch
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    replica: int = -1
    token_times_s: list[float] | None = field(default=None)
    segments: tuple[tuple[int, int], ...] | None = field(default=None, repr=False)
    """What its tokens are, prompt then output: ``(content id, length)``
    pairs (sim/memory/prefix.py); None: content unknown, nothing shared."""
    cached_tokens: int = 0         # prefill tokens reused from the prefix cache, over all admissions
    pending_prefill: int = 0       # chunked prefill: tokens of its prefill not computed yet
    num_seqs: int = 1              # parallel sampling: sequences sharing the prompt, each output_tokens long
    beam: bool = False             # the num_seqs sequences are beams: re-selected after every token

    @property
    def seq_ids(self) -> list[int]:
        """KV sequence ids: the request's own, then its extra samples' (negative)."""
        if self.num_seqs == 1:
            return [self.request_id]
        return [self.request_id] + [-(self.request_id * MAX_SEQS + i) for i in range(1, self.num_seqs)]

    @property
    def final_tokens(self) -> int:
        """Context length once the last output token exists."""
        return self.prompt_tokens + self.output_tokens

    @property
    def context_tokens(self) -> int:
        """Tokens that must be in the KV cache before the next decode step:
        the prompt plus every generated token but the newest, which is the
        next step's input."""
        return self.prompt_tokens + max(self.generated_tokens - 1, 0)

    @property
    def remaining_tokens(self) -> int:
        return self.output_tokens - self.generated_tokens

    @property
    def is_done(self) -> bool:
        return self.generated_tokens >= self.output_tokens
