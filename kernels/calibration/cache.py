"""The KV caches of a real step: one tensor per layout holding every layer's
K and V, and where a composition's sequences are placed in an empty cache.

* ``PagedKVCache``: pools ``[num_blocks, block_size, Hkv, D]`` per layer set,
  in one tensor ``[sets, 2, num_blocks, block_size, Hkv, D]`` (a swap moves a
  block of every layer with one gather);
* ``ContiguousKVCache``: one linear buffer of token slots ``[slots, Hkv, D]``
  per layer set, each sequence from its first slot on.

Both expose ``layer(i)`` (what the decode kernels read), ``page_view(i)``
(what the prefill kernel reads cached context through) and ``write_view(i)``
(what the slot writes address).
"""
from __future__ import annotations

import numpy as np
import torch

from sim.presets import ModelSpec


def _alloc(shape, init: str, dtype, device, seed: int) -> torch.Tensor:
    if init == "zeros":
        return torch.zeros(shape, dtype=dtype, device=device)
    if init == "randn":
        gen = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=dtype, device=device)
    raise ValueError(f"init must be 'zeros' or 'randn', got {init!r}")


class PagedKVCache:
    """K and V pools ``[num_blocks, block_size, Hkv, D]`` per layer set, all in
    one tensor ``[sets, 2, num_blocks, block_size, Hkv, D]`` (so a swap moves a
    block of every layer with one gather)."""

    layout = "paged"

    def __init__(self, geom: ModelSpec, num_blocks: int, *, block_size: int = 16,
                 num_sets: int | None = None, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 init: str = "randn"):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.num_sets = num_sets or geom.num_layers
        self.kv = _alloc((self.num_sets, 2, num_blocks, block_size, geom.num_kv_heads, geom.head_dim),
                         init, dtype, device, seed)

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.kv[i % self.num_sets]
        return kv[0], kv[1]

    page_view = layer      # what the prefill kernel reads cached context through
    write_view = layer     # what the slot writes address


class ContiguousKVCache:
    """K and V as one linear buffer of token slots ``[num_slots, Hkv, D]`` per
    layer set (``[sets, 2, num_slots, Hkv, D]``). A sequence occupies the slots
    from its first slot on -- the contiguous KV manager's reservation offset in
    the engine. Writes address it as one-token pages; the prefill kernel reads
    cached context through pages of ``block_size`` slots, so a sequence with
    cached context must start on a page boundary."""

    layout = "contiguous"

    def __init__(self, geom: ModelSpec, num_slots: int, *, block_size: int = 16,
                 num_sets: int | None = None, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 init: str = "randn"):
        self.block_size = block_size
        self.num_slots = -(-num_slots // block_size) * block_size
        self.num_sets = num_sets or geom.num_layers
        self.kv = _alloc((self.num_sets, 2, self.num_slots, geom.num_kv_heads, geom.head_dim),
                         init, dtype, device, seed)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.kv[i % self.num_sets]
        return kv[0], kv[1]

    def page_view(self, i: int):
        return tuple(x.view(-1, self.block_size, *x.shape[1:]) for x in self.layer(i))

    def write_view(self, i: int):
        return tuple(x.view(x.shape[0], 1, *x.shape[1:]) for x in self.layer(i))


def place(cache, totals: list[int], rng: np.random.Generator | None = None) -> list:
    """Fresh locations in an empty ``cache`` for sequences that will hold
    ``totals`` tokens: block ids (paged; in random order with ``rng``) or
    page-aligned first slots (contiguous, packed in order)."""
    bs = cache.block_size
    need = [-(-int(t) // bs) for t in totals]
    if cache.layout == "paged":
        if sum(need) > cache.num_blocks:
            raise ValueError(f"composition needs {sum(need)} blocks, the cache has {cache.num_blocks}")
        ids = rng.permutation(cache.num_blocks) if rng is not None else np.arange(cache.num_blocks)
        return np.split(ids[: sum(need)].astype(np.int32), np.cumsum(need)[:-1])
    if sum(need) * bs > cache.num_slots:
        raise ValueError(f"composition needs {sum(need) * bs} slots, the cache has {cache.num_slots}")
    return (np.concatenate([[0], np.cumsum(need)[:-1]]) * bs).astype(np.int64).tolist()
