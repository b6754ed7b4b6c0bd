"""Batching policies, the first axis: ``{name: class}`` (STYLE.md rule 6)."""
from __future__ import annotations

from sim.policies.base import BatchingSpec, Policy
from sim.policies.continuous import ContinuousPolicy
from sim.policies.static import StaticPolicy

POLICIES: dict[str, type[Policy]] = {
    "static": StaticPolicy,
    "continuous": ContinuousPolicy,
}

__all__ = ["POLICIES", "BatchingSpec", "Policy", "ContinuousPolicy", "StaticPolicy"]
