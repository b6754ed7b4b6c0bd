"""The running set of a policy: sequences that hold KV on the GPU, in
admission order, as parallel arrays.

A scheduling decision touches every running sequence (one more token each),
so the set keeps their state in numpy arrays and a decision costs a few array
operations however many sequences run. The ``Request`` objects are the
user-facing records: their ``computed_tokens`` and ``generated_tokens`` are
written back (``sync``) whenever a sequence leaves the set -- finished,
preempted, swapped out -- or an observer asks for the running requests;
while a sequence runs, the arrays are the truth.

Columns: ``reqs`` (the Request objects, a list of the ``n`` rows), ``slot``
(the KV manager's row for the sequence), ``computed`` (tokens whose KV is
held, the slot reserved for the next token included), ``left`` (output
tokens still to generate) and ``target`` (output tokens wanted), ``todo``
(chunked prefill: tokens of the current prefill not computed yet; 0 once it
has produced its first token) and ``seq`` (the KV manager's sequence id:
the request id, or, for the extra samples of a request that samples
several, ``Request.seq_ids``; a request's rows are adjacent) and ``beam``
(1 for a beam-search request's rows). ``live_slots`` is ``slot[:n]``,
the running rows' KV slots, kept as one view (renewed whenever ``n``
changes) because a decision passes them to the KV manager several times.

What every row gains at once -- a token of KV for each, a token emitted by
each -- is counted by a clock (``_grown``, ``_emitted``), not written into
every row: ``computed`` holds each row's tokens less ``_grown`` and ``left``
its tokens to go plus ``_emitted``, so a decode step of the whole set moves
two integers. ``contexts``, ``context``, ``generated`` and ``done_rows``
read them with the clocks applied.
"""
from __future__ import annotations

import numpy as np

from sim.request import Request

_INT_COLUMNS = ("slot", "computed", "left", "target", "todo", "seq", "beam")
_COMPUTED, _LEFT, _TARGET, _TODO = (_INT_COLUMNS.index(c) for c in ("computed", "left", "target", "todo"))
"""Rows of ``RunningSet._cols`` written back to a leaving sequence's Request."""
_FEW = 8
"""``remove`` shifts the rows between at most this many removed ones; more, it masks."""
NO_FINISH = 1 << 62
"""``steps_to_finish`` of an empty set."""
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce     # ``ndarray.min``/``max`` without their Python wrappers


class RunningSet:
    """The columns are rows of one 2-D array (``_cols``), so that removing or
    inserting sequences moves every column in one operation; each name in
    ``_INT_COLUMNS`` is a view of its row.

    Summaries spare a decision from scanning the set: the number of
    beam-search rows and of rows of requests that sample several sequences
    (``num_beam_rows``, ``num_multi_rows``), ``steps_to_finish`` (the
    fewest output tokens any row still needs), kept while every row emits
    together (``emit_all``), and ``context_totals`` (the sum of the rows'
    contexts, always kept, and its maximum, kept until a row holding it
    leaves or only some rows grow); each is recomputed when it was not
    kept. So a row's context changes only through ``add``, ``grow`` and
    ``grow_row``, and its tokens to go only through ``add``, ``emit_all``
    and ``emit``."""

    def __init__(self, capacity: int = 64) -> None:
        self.n = 0
        self.reqs: list[Request] = []
        self._cols = np.zeros((len(_INT_COLUMNS), capacity), np.int64)
        self._bind()
        self.num_beam_rows = 0
        self.num_multi_rows = 0
        self._grown = 0                         # clock: a row's context is its ``computed`` + this
        self._emitted = 0                       # clock: a row's tokens to go are its ``left`` - this
        self._left: int | None = NO_FINISH      # cached steps_to_finish; None: recompute
        self._sum = 0                           # sum of the contexts
        self._max: int | None = 0                # max of the contexts; None: recompute

    def _bind(self) -> None:
        for i, name in enumerate(_INT_COLUMNS):
            setattr(self, name, self._cols[i])
        self.live_slots = self.slot[: self.n]

    def __len__(self) -> int:
        return self.n

    # ---- reading, clocks applied ------------------------------------------
    def contexts(self, stop: int, plus: int = 0) -> np.ndarray:
        """The KV tokens each of the first ``stop`` rows holds (``+ plus``), a new array."""
        return self.computed[:stop] + (self._grown + plus)

    def context(self, i: int) -> int:
        return int(self.computed[i]) + self._grown

    def generated(self, i: int) -> int:
        """Output tokens row ``i`` has emitted."""
        return int(self.target[i] - self.left[i]) + self._emitted

    def done_rows(self) -> np.ndarray:
        """Positions of the rows that have emitted every token they want."""
        return (self.left[: self.n] <= self._emitted).nonzero()[0]

    def steps_to_finish(self) -> int:
        """The fewest output tokens a row still needs (``NO_FINISH`` if
        none): the step on which the next sequence finishes, counting from 1."""
        if self._left is None:
            n = self.n
            self._left = int(_MIN(self.left[:n])) - self._emitted if n else NO_FINISH
        return self._left

    def context_totals(self) -> tuple[int, int]:
        """``(sum, max)`` of the rows' contexts (0s if none)."""
        if self._max is None:
            self._max = int(_MAX(self.computed[: self.n])) + self._grown if self.n else 0
        return self._sum, self._max

    # ---- changing -----------------------------------------------------------
    def grow(self, count: int, k: int = 1) -> None:
        """The first ``count`` rows hold ``k`` more tokens each."""
        if not count:
            return
        if count == self.n:
            self._grown += k
        else:
            self.computed[:count] += k
        self._sum += k * count
        if self._max is not None:
            self._max = self._max + k if count == self.n else None

    def grow_row(self, i: int) -> None:
        """Row ``i`` holds one more token."""
        self.computed[i] += 1
        self._sum += 1
        if self._max is not None:
            self._max = max(self._max, self.context(i))

    def emit_all(self, k: int = 1) -> None:
        """Every row emits ``k`` tokens."""
        self._emitted += k
        if self._left is not None and self.n:
            self._left -= k

    def emit(self, rows) -> None:
        """The rows at ``rows`` (positions, a slice or an index array) emit one token each."""
        self.left[: self.n][rows] -= 1
        self._left = None

    def add(self, req: Request, slot: int, todo: int = 0) -> None:
        """Append a sequence that just took KV (its Request is up to date);
        ``todo``: prefill tokens it has still to compute (chunked prefill)."""
        if self.n == self._cols.shape[1]:
            self._grow()
        i = self.n
        self.reqs.append(req)
        left = req.output_tokens - req.generated_tokens
        self._cols[:, i] = (slot, req.computed_tokens - self._grown, left + self._emitted, req.output_tokens,
                            todo, req.request_id, int(req.beam))
        self.n += 1
        self.live_slots = self.slot[: self.n]
        if req.num_seqs > 1 or req.beam:
            self._count(req, 1)
        self._sum += req.computed_tokens
        if self._max is not None:
            self._max = max(self._max, req.computed_tokens)
        if self._left is not None:
            self._left = min(self._left, left)

    def _count(self, req: Request, rows: int) -> None:
        """``rows`` more rows of ``req`` (fewer if negative) in the summaries
        (``add`` and ``remove`` call it only for a request that samples
        several sequences or searches beams)."""
        if req.num_seqs > 1:
            self.num_multi_rows += rows
        if req.beam:
            self.num_beam_rows += rows

    def insert_samples(self, position: int, req: Request, slots: list[int], seqs: list[int]) -> None:
        """Put a request's extra samples right after its row at ``position``,
        each a copy of that row but for its KV slot and sequence id (a
        request's rows stay together)."""
        k = len(slots)
        while self.n + k > self._cols.shape[1]:
            self._grow()
        tail = slice(position + 1, self.n)
        moved = slice(position + 1 + k, self.n + k)
        new = slice(position + 1, position + 1 + k)
        self._cols[:, moved] = self._cols[:, tail].copy()
        self._cols[:, new] = self._cols[:, position: position + 1]
        self.reqs[position + 1: position + 1] = [req] * k
        self.slot[new] = slots
        self.seq[new] = seqs
        self.n += k
        self.live_slots = self.slot[: self.n]
        self._count(req, k)
        self._sum += k * self.context(position)

    def pop(self) -> Request:
        """Remove the most recently admitted sequence, synchronised."""
        self.n -= 1
        self.live_slots = self.slot[: self.n]
        req = self._sync(self.n)
        self.reqs.pop()
        self._count(req, -1)
        self._left = None
        self._dropped([req.computed_tokens])
        return req

    def remove(self, positions: np.ndarray) -> list[Request]:
        """Remove the sequences at ``positions`` (ascending; the others keep their order);
        returns their Requests, synchronised."""
        removed, computed = [], []
        at = positions.tolist()
        for i in at:
            req = self._sync(i)
            removed.append(req)
            computed.append(req.computed_tokens)      # this row's (a request's samples have rows of their own)
        n, m = self.n, self.n - len(removed)
        if len(at) <= _FEW:      # the usual case: shift the rows between and behind them
            for j, p in enumerate(at):
                end = at[j + 1] if j + 1 < len(at) else n
                self._cols[:, p - j: end - j - 1] = self._cols[:, p + 1: end]
            for p in reversed(at):
                del self.reqs[p]
        else:
            keep = np.ones(n, bool)
            keep[positions] = False
            self.reqs = [req for req, kept in zip(self.reqs, keep.tolist()) if kept]
            self._cols[:, :m] = self._cols[:, :n][:, keep]
        self.n = m
        self.live_slots = self.slot[: self.n]
        for req in removed:
            if req.num_seqs > 1 or req.beam:
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
        self.reqs = []
        self.n = 0
        self.live_slots = self.slot[: self.n]
        self.num_beam_rows = self.num_multi_rows = 0
        self._left = NO_FINISH
        self._sum, self._max = 0, 0
        self._grown = self._emitted = 0
        return reqs

    def _sync(self, i: int) -> Request:
        req = self.reqs[i]
        row = self._cols[:, i].tolist()
        req.computed_tokens = row[_COMPUTED] + self._grown
        req.generated_tokens = row[_TARGET] - (row[_LEFT] - self._emitted)
        req.pending_prefill = row[_TODO]
        return req

    def _grow(self) -> None:
        size = 2 * self._cols.shape[1]
        cols = np.zeros((len(_INT_COLUMNS), size), np.int64)
        cols[:, : self.n] = self._cols[:, : self.n]
        self._cols = cols
        self._bind()
