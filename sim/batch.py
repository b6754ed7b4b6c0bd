"""What one engine step computes, as the cost model sees it.

A ``Batch`` is a small frozen value passed from a policy to a cost model and
back (rule 4 of STYLE.md). It describes *shapes* only; the policy keeps the
requests it belongs to in ``requests`` so it can update them afterwards.

Token conventions (shared by policies and cost models):

* a prefill entry computes ``prefill_new_tokens[i]`` query tokens on top of
  ``prefill_context_tokens[i]`` tokens already in the cache (0 for a fresh
  prompt); attention is causal over ``context + new`` keys;
* a decode entry computes one query token that attends ``decode_context_tokens[i]``
  keys, the new token's own key included;
* for static batching the shapes are already padded (every prefill row has
  the batch's longest prompt, every decode row the longest context), so cost
  models never need to know which policy built the batch.

A per-row field is a tuple of ints, or a ``TokenCounts``: the same sequence
kept in an array until something reads its items. A policy builds a batch
every step, yet most readers want only its length and totals; turning a
hundred-odd counts into Python ints (``tolist``) was the largest cost of
building a batch (``token_counts`` picks, by the number of rows).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from sim.request import Request

KVLayout = Literal["paged", "contiguous"]


_SETATTR = object.__setattr__


SMALL_COUNTS = 24
"""Counts of up to this many rows go into a batch as a tuple: turning a few
into Python ints costs less than wrapping them and then reading their length
through Python (timeit, this machine)."""


def token_counts(counts: np.ndarray) -> tuple[int, ...] | TokenCounts:
    """Per-row counts (an int64 array nobody writes to again) as a batch field."""
    return tuple(counts.tolist()) if len(counts) <= SMALL_COUNTS else TokenCounts(counts)


class TokenCounts(Sequence):
    """An immutable sequence of token counts held in an int64 array (which
    nobody may write to once it is handed over), turned into a tuple the
    first time an item is read. It equals, and hashes as, that tuple; its
    length, totals and ``np.asarray`` come from the array. With ``start``
    the sequence is the array turned: ``array[start:]``, then
    ``array[:start]`` (a step's prefills listed before the decodes that
    precede them in the running set), turned only when read."""

    __slots__ = ("_array", "_start", "_tuple")

    def __init__(self, array: np.ndarray, start: int = 0) -> None:
        self._array = array
        self._start = start
        self._tuple: tuple[int, ...] | None = None

    def as_tuple(self) -> tuple[int, ...]:
        if self._tuple is None:
            a, start = self._array, self._start
            self._tuple = tuple(a[start:].tolist() + a[:start].tolist() if start else a.tolist())
        return self._tuple

    def totals(self) -> tuple[int, int]:
        """``(sum, max)`` (0s if empty)."""
        a = self._array
        return (int(a.sum()), int(a.max())) if len(a) else (0, 0)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, i):
        return self.as_tuple()[i]

    def __iter__(self):
        return iter(self.as_tuple())

    def __eq__(self, other) -> bool:
        if isinstance(other, TokenCounts):
            return self.as_tuple() == other.as_tuple()
        if isinstance(other, tuple):
            return self.as_tuple() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return repr(self.as_tuple())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a, start = self._array, self._start
        counts = np.concatenate((a[start:], a[:start])) if start else a
        if dtype is not None or copy:
            return counts.astype(dtype or a.dtype)
        view = counts.view()
        view.flags.writeable = False
        return view

    def __reduce__(self):
        return TokenCounts, (self._array, self._start)


@dataclass(frozen=True, slots=True, init=False)
class Batch:
    prefill_new_tokens: tuple[int, ...] = ()
    prefill_context_tokens: tuple[int, ...] = ()
    decode_context_tokens: tuple[int, ...] | TokenCounts = ()
    kv_layout: KVLayout = "paged"
    swap_in_tokens: int = 0    # KV tokens copied CPU -> GPU before the step
    swap_out_tokens: int = 0   # KV tokens copied GPU -> CPU before the step
    requests: tuple["Request", ...] = field(default=(), compare=False, repr=False)
    # The block copies behind the swap counts, for a real executor: it copies
    # ``(gpu, cpu)`` pairs out, then ``(cpu, gpu)`` pairs in, before computing.
    swap_out_blocks: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)
    swap_in_blocks: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)
    # KV tokens each of ``requests`` holds once the step's slots are reserved
    # (a static batch's rows compute padded shapes; this is what is real)
    held_tokens: tuple[int, ...] | TokenCounts = field(default=(), compare=False, repr=False)
    # The KV sequence of each of ``requests`` when some request runs several
    # (parallel sampling, beams); empty when every row is its request's own
    # sequence (``request_id``).
    seq_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)
    # Copy-on-write block copies ``(source, destination)``, whole blocks, that
    # a real executor performs after the swaps and before computing (paged).
    block_copies: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)
    # ``(sum, max)`` of ``decode_context_tokens`` when the policy knows them
    # already (None: ``decode_totals`` computes them)
    decode_sum_max: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    def __init__(self, prefill_new_tokens: tuple[int, ...] = (), prefill_context_tokens: tuple[int, ...] = (),
                 decode_context_tokens: tuple[int, ...] | TokenCounts = (), kv_layout: KVLayout = "paged",
                 swap_in_tokens: int = 0, swap_out_tokens: int = 0, requests: tuple["Request", ...] = (),
                 swap_out_blocks: tuple[tuple[int, int], ...] = (), swap_in_blocks: tuple[tuple[int, int], ...] = (),
                 held_tokens: tuple[int, ...] | TokenCounts = (), seq_ids: tuple[int, ...] = (),
                 block_copies: tuple[tuple[int, int], ...] = (),
                 decode_sum_max: tuple[int, int] | None = None) -> None:
        """The fields above, in order, with their defaults (a test holds
        them to it). Written out because a policy builds a batch every step:
        a frozen dataclass's generated ``__init__`` looks ``object.__setattr__``
        up again for every field, 2.3 us a batch against 1.0 us here."""
        if len(prefill_new_tokens) != len(prefill_context_tokens):
            raise ValueError("prefill_new_tokens and prefill_context_tokens differ in length")
        put = _SETATTR.__get__(self)
        put("prefill_new_tokens", prefill_new_tokens)
        put("prefill_context_tokens", prefill_context_tokens)
        put("decode_context_tokens", decode_context_tokens)
        put("kv_layout", kv_layout)
        put("swap_in_tokens", swap_in_tokens)
        put("swap_out_tokens", swap_out_tokens)
        put("requests", requests)
        put("swap_out_blocks", swap_out_blocks)
        put("swap_in_blocks", swap_in_blocks)
        put("held_tokens", held_tokens)
        put("seq_ids", seq_ids)
        put("block_copies", block_copies)
        put("decode_sum_max", decode_sum_max)

    def seq_id(self, i: int) -> int:
        """The KV sequence of row ``i`` of ``requests``."""
        return self.seq_ids[i] if self.seq_ids else self.requests[i].request_id

    def decode_totals(self) -> tuple[int, int]:
        """``(sum, max)`` of ``decode_context_tokens`` (0 for none)."""
        if self.decode_sum_max is not None:
            return self.decode_sum_max
        dec = self.decode_context_tokens
        if isinstance(dec, TokenCounts):
            return dec.totals()
        return sum(dec), max(dec, default=0)

    @property
    def num_prefill_seqs(self) -> int:
        return len(self.prefill_new_tokens)

    @property
    def num_decode_seqs(self) -> int:
        return len(self.decode_context_tokens)

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decode_seqs

    @property
    def num_tokens(self) -> int:
        """Rows that go through the GEMMs this step (padding included)."""
        return sum(self.prefill_new_tokens) + len(self.decode_context_tokens)

    @property
    def is_empty(self) -> bool:
        return self.num_tokens == 0 and self.swap_in_tokens == 0 and self.swap_out_tokens == 0
