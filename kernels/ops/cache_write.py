"""KV-cache write: scatter the K/V of a step's new tokens into the cache.

Token t goes to flat slot ``slot_mapping[t] = block * block_size + offset`` of
``[num_blocks, block_size, Hkv, D]`` caches; a negative slot is padding and is
skipped (vLLM's convention). A contiguous cache -- one linear buffer of token
slots -- is written the same way, viewed as ``[num_slots, 1, Hkv, D]`` (pages of
one token): its slot is the sequence's first slot plus the token's position.

One program copies one token's ``[BLOCK_H, D]`` tile of heads for K and for V.
Slots past the cache are skipped rather than written out of bounds; the
caller's scheduler is what guarantees they do not happen. Torch reference:
``kernels.ops.reference.write_paged_ref``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.ops.decode_common import check_dtype_device_head_dim, invalid

MAX_HEADS_PER_PROGRAM = 16


@triton.jit
def _write_kv_kernel(
    K, V, K_CACHE, V_CACHE, SLOTS,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kc0, stride_kc1, stride_kch, stride_vc0, stride_vc1, stride_vch,
    num_kv_heads, num_slots, page_size,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    slot = tl.load(SLOTS + token).to(tl.int64)
    ok = (slot >= 0) & (slot < num_slots)
    page = slot // page_size
    offset = slot % page_size
    mask = (heads[:, None] < num_kv_heads) & ok
    src = token.to(tl.int64)
    k = tl.load(K + src * stride_kt + heads[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(V + src * stride_vt + heads[:, None] * stride_vh + offs_d[None, :], mask=mask)
    k_dst = K_CACHE + page * stride_kc0 + offset * stride_kc1
    v_dst = V_CACHE + page * stride_vc0 + offset * stride_vc1
    tl.store(k_dst + heads[:, None] * stride_kch + offs_d[None, :], k, mask=mask)
    tl.store(v_dst + heads[:, None] * stride_vch + offs_d[None, :], v, mask=mask)


def _check_tensors(where: str, k, v, k_cache, v_cache) -> None:
    for name, t in (("k", k), ("v", v)):
        if not (isinstance(t, torch.Tensor) and t.dim() == 3):
            raise invalid(where, f"{name} must be a 3-d tensor [tokens, num_kv_heads, head_dim]")
    if k.shape != v.shape:
        raise invalid(where, f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in shape")
    head_dim = check_dtype_device_head_dim(where, "k", k)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not (isinstance(t, torch.Tensor) and t.dim() == 4):
            raise invalid(where, f"{name} must be a 4-d tensor")
        if t.shape[2:] != k.shape[1:]:
            raise invalid(where, f"{name} {tuple(t.shape)} must end in [{k.shape[1]}, {head_dim}] "
                                 "like k")
        if t.dtype != k.dtype or t.device != k.device:
            raise invalid(where, f"{name} must have k's dtype {k.dtype} and device {k.device}")
    if k_cache.shape != v_cache.shape:
        raise invalid(where, f"k_cache {tuple(k_cache.shape)} and v_cache "
                             f"{tuple(v_cache.shape)} differ in shape")
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise invalid(where, f"{name} must be contiguous in head_dim")


def _check_index(where: str, name: str, t, num_tokens: int, device, dtypes) -> None:
    if not (isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype in dtypes):
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise invalid(where, f"{name} must be a 1-d {allowed} tensor [tokens]")
    if t.shape[0] != num_tokens:
        raise invalid(where, f"{name} has {t.shape[0]} entries for {num_tokens} tokens")
    if t.device != device or not t.is_contiguous():
        raise invalid(where, f"{name} must be contiguous and on k's device")


def write_paged_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Write ``k/v [T, Hkv, D]`` into caches ``[num_blocks, block_size, Hkv, D]``
    at flat slots ``slot_mapping`` (int64 ``[T]``; negative = skip)."""
    where = "write_paged_kv"
    _check_tensors(where, k, v, k_cache, v_cache)
    _check_index(where, "slot_mapping", slot_mapping, k.shape[0], k.device, (torch.int64,))
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0 or num_kv_heads == 0:
        return
    block_h = min(MAX_HEADS_PER_PROGRAM, triton.next_power_of_2(num_kv_heads))
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _write_kv_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        num_kv_heads, k_cache.shape[0] * k_cache.shape[1], k_cache.shape[1],
        HEAD_DIM=head_dim, BLOCK_H=block_h, num_warps=4,
    )
