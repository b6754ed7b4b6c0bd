"""KV-cache memory managers: paged blocks (vLLM) and contiguous reservations
(Orca), behind the ``KVManager`` contract of ``sim.memory.base``.

``MANAGERS`` maps a config's ``memory.layout`` to its class; every class has
``from_spec(spec, model, total_tokens)``. ``build_kv_manager`` sizes and builds one.
"""
from __future__ import annotations

from sim.memory.base import KVManager, KVUsage, MemoryError_
from sim.memory.contiguous import ContiguousKVManager
from sim.memory.paged import PagedKVManager

MANAGERS: dict[str, type[PagedKVManager] | type[ContiguousKVManager]] = {
    "paged": PagedKVManager,
    "contiguous": ContiguousKVManager,
}

from sim.memory.capacity import MemorySpec, build_kv_manager, kv_capacity_tokens  # noqa: E402

__all__ = [
    "MANAGERS", "ContiguousKVManager", "KVManager", "KVUsage", "MemoryError_", "MemorySpec",
    "PagedKVManager", "build_kv_manager", "kv_capacity_tokens",
]
