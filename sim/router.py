"""Routers spread arrivals over replicas: ``{name: class}``."""
from __future__ import annotations

from typing import Protocol, Sequence

from sim.request import Request


class Outstanding(Protocol):
    @property
    def num_outstanding(self) -> int: ...


class RoundRobinRouter:
    def __init__(self) -> None:
        self._next = 0

    def route(self, req: Request, replicas: Sequence[Outstanding]) -> int:
        idx = self._next % len(replicas)
        self._next += 1
        return idx


class LeastOutstandingRouter:
    """Fewest requests waiting, swapped or running; ties to the lowest index."""

    def route(self, req: Request, replicas: Sequence[Outstanding]) -> int:
        loads = [r.num_outstanding for r in replicas]
        return loads.index(min(loads))


ROUTERS = {
    "round_robin": RoundRobinRouter,
    "least_outstanding": LeastOutstandingRouter,
}
