"""Fixtures for tiny exact scenarios; plain factories live in factories.py."""
from __future__ import annotations

import pytest
from factories import TINY_MODEL

from sim.memory.contiguous import ContiguousKVManager
from sim.memory.paged import PagedKVManager


@pytest.fixture
def paged():
    """11 blocks of 16 tokens, no watermark (vLLM's test size)."""
    return lambda num_blocks=11, block_size=16, **kw: PagedKVManager(
        num_blocks, block_size, kw.pop("watermark_frac", 0.0), **kw)


@pytest.fixture
def contiguous():
    return lambda total_tokens=176, reservation="exact": ContiguousKVManager(
        total_tokens, reservation, TINY_MODEL.max_context_tokens)
