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
_COMPUTED, _GENERATED, _TODO = (_INT_COLUMNS.index(c) for c in ("computed", "generated", "todo"))
"""Rows of ``RunningSet._cols`` written back to a leaving sequence's Request."""
NO_FINISH = 1 << 62
"""``steps_to_finish`` of an empty set."""


class RunningSet:
    """The columns are rows of one 2-D array (``_cols``), so that removing or
    inserting sequences moves every column in one operation; each name in
    ``_INT_COLUMNS`` is a view of its row.

    Summaries spare a decision from scanning the set: the number of
    beam-search rows and of rows of requests that sample several sequences
    (``num_beam_rows``, ``num_multi_rows``), ``steps_to_finish`` (the
    fewest output tokens any row still needs), kept while every row emits
    together (``emit_all``), and ``context_totals`` (the sum of
    ``computed``, always kept, and its maximum, kept until a row holding
    it leaves or only some rows grow); each is recomputed when it was not
    kept. So ``computed`` changes only through ``add``, ``grow`` and
    ``grow_row``."""

    def __init__(self, capacity: int = 64) -> None:
        self.n = 0
        self.reqs = np.empty(capacity, object)
        self._cols = np.zeros((len(_INT_COLUMNS), capacity), np.int64)
        self._bind()
        self.num_beam_rows = 0
        self.num_multi_rows = 0
        self._left: int | None = NO_FINISH      # cached steps_to_finish; None: recompute
        self._sum = 0                           # sum of computed
        self._max: int | None = 0                # max of computed; None: recompute

    def _bind(self) -> None:
        for i, name in enumerate(_INT_COLUMNS):
            setattr(self, name, self._cols[i])

    def __len__(self) -> int:
        return self.n

    def steps_to_finish(self) -> int:
        """``min(target - generated)`` over the rows (``NO_FINISH`` if none):
        the step on which the next sequence finishes, counting from 1."""
        if self._left is None:
            n = self.n
            self._left = int((self.target[:n] - self.generated[:n]).min()) if n else NO_FINISH
        return self._left

    def context_totals(self) -> tuple[int, int]:
        """``(sum, max)`` of the rows' ``computed`` (0s if none)."""
        if self._max is None:
            self._max = int(self.computed[: self.n].max()) if self.n else 0
        return self._sum, self._max

    def grow(self, count: int, k: int = 1) -> None:
        """The first ``count`` rows hold ``k`` more tokens each."""
        if not count:
            return
        self.computed[:count] += k
        self._sum += k * count
        if self._max is not None:
            self._max = self._max + k if count == self.n else None

    def grow_row(self, i: int) -> None:
        """Row ``i`` holds one more token."""
        self.computed[i] += 1
        self._sum += 1
        if self._max is not None:
            self._max = max(self._max, int(self.computed[i]))

    def emit_all(self, k: int = 1) -> None:
        """Every row emits ``k`` tokens."""
        self.generated[: self.n] += k
        if self._left is not None and self.n:
            self._left -= k

    def emit(self, rows) -> None:
        """The rows at ``rows`` (positions, a slice or an index array) emit one token each."""
        self.generated[: self.n][rows] += 1
        self._left = None

    def add(self, req: Request, slot: int, todo: int = 0) -> None:
        """Append a sequence that just took KV (its Request is up to date);
        ``todo``: prefill tokens it has still to compute (chunked prefill)."""
        if self.n == len(self.reqs):
            self._grow()
        i = self.n
        self.reqs[i] = req
        self._cols[:, i] = (slot, req.computed_tokens, req.generated_tokens, req.output_tokens, todo,
                            req.request_id, int(req.beam))
        self.n += 1
        self._count(req, 1)
        self._sum += req.computed_tokens
        if self._max is not None:
            self._max = max(self._max, req.computed_tokens)
        if self._left is not None:
            self._left = min(self._left, req.output_tokens - req.generated_tokens)

    def _count(self, req: Request, rows: int) -> None:
        if req.num_seqs > 1:
            self.num_multi_rows += rows
        if req.beam:
            self.num_beam_rows += rows

    def insert_samples(self, position: int, req: Request, slots: list[int], seqs: list[int]) -> None:
        """Put a request's extra samples right after its row at ``position``,
        each a copy of that row but for its KV slot and sequence id (a
        request's rows stay together)."""
        k = len(slots)
        while self.n + k > len(self.reqs):
            self._grow()
        tail = slice(position + 1, self.n)
        moved = slice(position + 1 + k, self.n + k)
        new = slice(position + 1, position + 1 + k)
        self.reqs[moved] = self.reqs[tail].copy()
        self._cols[:, moved] = self._cols[:, tail].copy()
        self._cols[:, new] = self._cols[:, position: position + 1]
        self.reqs[new] = [req] * k
        self.slot[new] = slots
        self.seq[new] = seqs
        self.n += k
        self._count(req, k)
        self._sum += k * int(self.computed[position])

    def pop(self) -> Request:
        """Remove the most recently admitted sequence, synchronised."""
        self.n -= 1
        req = self._sync(self.n)
        self.reqs[self.n] = None
        self._count(req, -1)
        self._left = None
        self._dropped([req.computed_tokens])
        return req

    def remove(self, positions: np.ndarray) -> list[Request]:
        """Remove the sequences at ``positions`` (keeping the others' order);
        returns their Requests, synchronised."""
        removed, computed = [], []
        for i in positions.tolist():
            req = self._sync(i)
            removed.append(req)
            computed.append(req.computed_tokens)      # this row's (a request's samples have rows of their own)
        n, m = self.n, self.n - len(removed)
        if len(removed) == 1:             # the usual case: shift the rows behind it
            p = int(positions[0])
            self.reqs[p: m] = self.reqs[p + 1: n]
            self._cols[:, p: m] = self._cols[:, p + 1: n]
        else:
            keep = np.ones(n, bool)
            keep[positions] = False
            self.reqs[:m] = self.reqs[:n][keep]
            self._cols[:, :m] = self._cols[:, :n][:, keep]
        self.reqs[m: n] = None
        self.n = m
        for req in removed:
            self._count(req, -1)
        self._left = None
        self._dropped(computed)
        return removed

    def _dropped(self, computed: list[int]) -> None:
        """Rows holding ``computed`` tokens left."""
        self._sum -= sum(computed)
        if self._max in computed:
            self._max = None

    def requests(self) -> list[Request]:
        """The running Requests in admission order, synchronised."""
        return [self._sync(i) for i in range(self.n)]

    def clear(self) -> list[Request]:
        reqs = self.requests()
        self.reqs[: self.n] = None
        self.n = 0
        self.num_beam_rows = self.num_multi_rows = 0
        self._left = NO_FINISH
        self._sum, self._max = 0, 0
        return reqs

    def _sync(self, i: int) -> Request:
        req = self.reqs[i]
        row = self._cols[:, i].tolist()
        req.computed_tokens, req.generated_tokens, req.pending_prefill = row[_COMPUTED], row[_GENERATED], row[_TODO]
        return req

    def _grow(self) -> None:
        size = 2 * len(self.reqs)
        reqs = np.empty(size, object)
        reqs[: self.n] = self.reqs[: self.n]
        self.reqs = reqs
        cols = np.zeros((len(_INT_COLUMNS), size), np.int64)
        cols[:, : self.n] = self._cols[:, : self.n]
        self._cols = cols
        self._bind()
