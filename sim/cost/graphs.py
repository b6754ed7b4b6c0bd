"""Which decode batches the real engine replays from CUDA graphs.

The engine (kernels/engine/runner.py) captures a graph per batch size of
``graph_batch_sizes(max_batch_size)`` -- vLLM's 1, 2, 4, then multiples of 8 --
and runs a decode-only step of ``n`` sequences on the smallest captured size
``>= n``, the rows beyond ``n`` being padding. The profiled cost model prices
such a step at that size (a decode batch of 37 costs the 40-row graph), so
both read the rule from here.
"""
from __future__ import annotations

from bisect import bisect_left


def graph_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, then multiples of 8 up to ``max_batch_size`` (and it itself)."""
    sizes = [b for b in (1, 2, 4) if b < max_batch_size] + list(range(8, max_batch_size + 1, 8))
    if not sizes or sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return tuple(sorted(set(sizes)))


def bucket_for(sizes: tuple[int, ...], n: int) -> int | None:
    """The smallest captured size holding ``n`` rows (None: larger than all)."""
    i = bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None
