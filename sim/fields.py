"""Config field types shared by every spec (batching, memory, workload, run).

Counts are strict integers: YAML's ``true`` is not one request, and neither
is the string ``"1e20"`` or the float ``2.5``. They are also bounded by
``MAX_COUNT`` (2**53, the largest range in which a float64 -- the
simulator's clock and every table column -- still holds each whole number),
so a typo of a few extra zeros is one error line naming the field instead of
an allocation that the operating system kills.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict

MAX_COUNT = 2**53

MAX_TIME_S = 1e9
"""The latest simulated time accepted (about 31.7 years). The clock is a
float64 of seconds; at 1e9 s it still resolves 0.12 us, so step times of
microseconds add up exactly enough, while an arrival at 1e300 s would make
every latency round to zero."""

Count = Annotated[int, Strict(), Field(gt=0, le=MAX_COUNT)]
"""A positive whole number of things (requests, tokens, blocks, rows)."""

Index = Annotated[int, Strict(), Field(ge=0, le=2**63 - 1)]
"""A whole number >= 0 that names rather than counts (a random seed)."""
