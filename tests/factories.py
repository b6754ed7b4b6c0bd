"""Factories for tiny exact scenarios (STYLE.md rule 10), shared by the tests."""
from __future__ import annotations

from sim.policies import POLICIES, BatchingSpec
from sim.presets import ModelSpec
from sim.request import Request

TINY_MODEL = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                       head_dim=16, ffn_size=128, vocab_size=100, max_context_tokens=256)


def make_requests(*shapes: tuple[float, int, int]) -> list[Request]:
    """Requests from (arrival_s, prompt_tokens, output_tokens) triples."""
    return [Request(request_id=i, arrival_s=a, prompt_tokens=p, output_tokens=o)
            for i, (a, p, o) in enumerate(shapes)]


def make_policy(name: str, kv, **batching):
    return POLICIES[name](BatchingSpec(policy=name, **batching), kv, TINY_MODEL)
