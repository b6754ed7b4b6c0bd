"""The running set of a policy: sequences that hold KV on the GPU, in
admission order, as parallel arrays.

A scheduling decision touches every running sequence (one more token each),
so the set keeps their state in numpy arrays and a decision costs a few array
operations however many sequences run. The ``Request`` objects are the
user-facing records: their ``computed_tokens`` and ``generated_tokens`` are
written back (``sync``) whenever a sequence leaves the set -- finished,
preempted, swapped out -- or an observer asks for the running requests;
while a sequence runs, the arrays are the truth.

Columns: ``reqs`` (the Request objects), ``slot`` (the KV manager's row for
the sequence), ``computed`` (tokens whose KV is held, the slot reserved for
the next token included), ``generated`` (output tokens so far) and
``target`` (output tokens wanted), ``todo`` (chunked prefill: tokens of
the current prefill not computed yet; 0 once it has produced its first token)
and ``seq`` (the KV manager's sequence id: the request id, or, for the
extra samples of a request that samples several, ``Request.seq_ids``; a
request's rows are adjacent) and ``beam`` (1 for a beam-search request's rows).
"""
from __future__ import annotations

import numpy as np

from sim.request import Request

_INT_COLUMNS = ("slot", "computed", "generated", "target", "todo", "seq", "beam")


class RunningSet:
    def __init__(self, capacity: int = 64) -> None:
        self.n = 0
        self.reqs = np.empty(capacity, object)
        self.slot = np.zeros(capacity, np.int64)
        self.computed = np.zeros(capacity, np.int64)
        self.generated = np.zeros(capacity, np.int64)
        self.target = np.zeros(capacity, np.int64)
        self.todo = np.zeros(capacity, np.int64)
        self.seq = np.zeros(capacity, np.int64)
        self.beam = np.zeros(capacity, np.int64)

    def __len__(self) -> int:
        return self.n

    def add(self, req: Request, slot: int, todo: int = 0) -> None:
        """Append a sequence that just took KV (its Request is up to date);
        ``todo``: prefill tokens it has still to compute (chunked prefill)."""
        if self.n == len(self.reqs):
            self._grow()
        i = self.n
        self.reqs[i] = req
        self.slot[i], self.computed[i] = slot, req.computed_tokens
        self.generated[i], self.target[i] = req.generated_tokens, req.output_tokens
        self.todo[i] = todo
        self.seq[i] = req.request_id
        self.beam[i] = int(req.beam)
        self.n += 1

    def insert_samples(self, position: int, req: Request, slots: list[int], seqs: list[int]) -> None:
        """Put a request's extra samples right after its row at ``position``,
        each a copy of that row but for its KV slot and sequence id (a
        request's rows stay together)."""
        k = len(slots)
        while self.n + k > len(self.reqs):
            self._grow()
        tail = slice(position + 1, self.n)
        moved = slice(position + 1 + k, self.n + k)
        self.reqs[moved] = self.reqs[tail].copy()
        for name in _INT_COLUMNS:
            col = getattr(self, name)
            col[moved] = col[tail].copy()
            col[position + 1: position + 1 + k] = col[position]
        self.reqs[position + 1: position + 1 + k] = [req] * k
        self.slot[position + 1: position + 1 + k] = slots
        self.seq[position + 1: position + 1 + k] = seqs
        self.n += k

    def pop(self) -> Request:
        """Remove the most recently admitted sequence, synchronised."""
        self.n -= 1
        req = self._sync(self.n)
        self.reqs[self.n] = None
        return req

    def remove(self, positions: np.ndarray) -> list[Request]:
        """Remove the sequences at ``positions`` (keeping the others' order);
        returns their Requests, synchronised."""
        removed = [self._sync(int(i)) for i in positions]
        keep = np.ones(self.n, bool)
        keep[positions] = False
        m = int(keep.sum())
        self.reqs[:m] = self.reqs[: self.n][keep]
        self.reqs[m: self.n] = None
        for name in _INT_COLUMNS:
            col = getattr(self, name)
            col[:m] = col[: self.n][keep]
        self.n = m
        return removed

    def requests(self) -> list[Request]:
        """The running Requests in admission order, synchronised."""
        return [self._sync(i) for i in range(self.n)]

    def clear(self) -> list[Request]:
        reqs = self.requests()
        self.reqs[: self.n] = None
        self.n = 0
        return reqs

    def _sync(self, i: int) -> Request:
        req = self.reqs[i]
        req.computed_tokens = int(self.computed[i])
        req.generated_tokens = int(self.generated[i])
        req.pending_prefill = int(self.todo[i])
        return req

    def _grow(self) -> None:
        size = 2 * len(self.reqs)
        reqs = np.empty(size, object)
        reqs[: self.n] = self.reqs[: self.n]
        self.reqs = reqs
        for name in _INT_COLUMNS:
            col = np.zeros(size, np.int64)
            col[: self.n] = getattr(self, name)[: self.n]
            setattr(self, name, col)
