"""The validation grid and its input builders (used by ``kernels.harness.validate`` and
the kernel tests).

Builders poison everything a kernel must not read or must overwrite: free
blocks, unused slots of a partial last block and the contiguous tail are NaN,
and unused block-table entries point at a free (NaN) block. Block tables are
shuffled over the pool; ``high_block_ids`` takes every block from the top of a
pool large enough that ``block id * block stride`` passes 2**31 elements.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DecodeCase:
    label: str
    dtype: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    context_lens: tuple[int, ...]
    splits: tuple[int | None, ...] = (None, 1, 3)
    pool_blocks: int = 0          # at least this many blocks in the pool
    high_block_ids: bool = False
    contiguous_max_len: int = 0   # 0: longest context + 3 poisoned positions
    detail: str = ""


@dataclass(frozen=True)
class WriteCase:
    label: str
    dtype: str
    num_tokens: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    batch: int
    max_len: int
    high_slots: bool = False


@dataclass(frozen=True)
class PrefillCase:
    label: str
    dtype: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    lengths: tuple[int, ...]
    context_lens: tuple[int, ...] = ()
    block_size: int = 16

    @property
    def variant(self) -> str:
        return "paged context" if self.context_lens else "no context"

    @property
    def detail(self) -> str:
        return f"heads {self.num_heads}/{self.num_kv_heads} D{self.head_dim}"


@dataclass(frozen=True)
class DecodeInputs:
    q: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    k_contig: torch.Tensor
    v_contig: torch.Tensor


@dataclass(frozen=True)
class PagedContext:
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor


def _random_lens(rng: np.random.Generator, count: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(low, high + 1, size=count))


def _edges(block_size: int) -> tuple[int, ...]:
    """Lengths at and around whole blocks, plus length 1."""
    return (1, block_size - 1, block_size, block_size + 1, 2 * block_size,
            2 * block_size + 1, 7 * block_size - 1)


def decode_cases(device: str, quick: bool) -> list[DecodeCase]:
    rng = np.random.default_rng(2024)
    if device == "cpu":
        cases = [
            DecodeCase("ctx-1 group-1", "float32", 4, 4, 32, 8, (1,), (None, 1, 2)),
            DecodeCase("bs8 edges group-3", "float16", 6, 2, 32, 8, (7, 8, 9, 16, 17)),
            DecodeCase("bs16 edges group-4", "float32", 8, 2, 64, 16, (15, 16, 17, 33), (None, 2)),
            DecodeCase("bs32 group-8", "float16", 8, 1, 32, 32, (31, 32, 33, 70), (None, 1, 4)),
        ]
        if not quick:
            cases += [
                DecodeCase("bs64 group-2", "float32", 4, 2, 32, 64, (63, 64, 65), (1, 2)),
                DecodeCase("bs128 group-6", "float16", 12, 2, 32, 128, (127, 128, 129), (1, 5)),
                DecodeCase("zero-length rows", "float32", 4, 2, 32, 8, (0, 5, 0, 20), (1, 3)),
                DecodeCase("batch-12 D16", "float16", 4, 1, 16, 16, _random_lens(rng, 12, 1, 50),
                           (None, 1)),
                DecodeCase("D128 long-ish", "float32", 4, 1, 128, 16, (200,), (1, 6)),
            ]
        return cases
    llama3 = (32, 8, 128)
    cases = [
        DecodeCase("ctx-1", "bfloat16", *llama3, 16, (1,), (None, 1, 4)),
        DecodeCase("bs16 edges", "bfloat16", *llama3, 16, _edges(16), (None, 1, 3, 8)),
        DecodeCase("group-3 D64", "float16", 24, 8, 64, 16, _random_lens(rng, 16, 1, 3000)),
        DecodeCase("long 32k batch-1", "bfloat16", *llama3, 16, (32768,), (None, 1, 16, 64)),
        DecodeCase("pool 140k blocks int64", "bfloat16", *llama3, 16,
                   _random_lens(rng, 16, 1, 8192), (None, 1, 4), pool_blocks=140_000,
                   high_block_ids=True, detail="block offsets > 2**31 elements"),
    ]
    if quick:
        return cases
    for i, block_size in enumerate((8, 32, 64, 128)):
        dtype = ("float16", "bfloat16")[i % 2]
        cases.append(DecodeCase(f"bs{block_size} edges", dtype, *llama3, block_size,
                                _edges(block_size), (None, 1, 3, 8)))
    cases += [
        DecodeCase("group-1 llama-2-7b", "bfloat16", 32, 32, 128, 16,
                   _random_lens(rng, 16, 1, 3000)),
        DecodeCase("group-8", "bfloat16", 64, 8, 128, 16, _random_lens(rng, 16, 1, 3000)),
        DecodeCase("group-6", "bfloat16", 48, 8, 128, 32, _random_lens(rng, 8, 1, 3000)),
        DecodeCase("group-4 D64", "float16", 32, 8, 64, 16, _random_lens(rng, 8, 1, 3000)),
        DecodeCase("batch-256", "bfloat16", *llama3, 16, _random_lens(rng, 256, 1, 2048),
                   (None, 1, 2)),
        DecodeCase("batch-64 ctx~4k", "bfloat16", *llama3, 16, _random_lens(rng, 64, 3900, 4200),
                   (None, 1, 2)),
        DecodeCase("long 32k mixed", "float16", *llama3, 32, (32768, 32767, 16385, 1),
                   (None, 1, 7)),
        DecodeCase("contiguous int64", "bfloat16", *llama3, 16,
                   _random_lens(rng, 70, 1, 256) + (32768, 30001), (None, 1),
                   contiguous_max_len=32768, detail="seq offsets > 2**31 elements"),
        DecodeCase("zero-length rows", "float16", *llama3, 16, (0, 5, 0, 40, 3000), (None, 1, 3)),
        DecodeCase("fp32", "float32", *llama3, 16, (100, 1000, 5000), (None, 1, 4)),
        DecodeCase("D256", "bfloat16", 16, 4, 256, 16, (300, 4097), (None, 1, 3)),
        DecodeCase("D32 bs8", "float16", 8, 2, 32, 8, _random_lens(rng, 8, 1, 500)),
    ]
    return cases


def write_cases(device: str, quick: bool) -> list[WriteCase]:
    if device == "cpu":
        cases = [WriteCase("paged+contig small", "float32", 12, 2, 32, 8, 10, 3, 20)]
        if not quick:
            cases.append(WriteCase("20 heads fp16", "float16", 9, 20, 16, 16, 4, 2, 12))
        return cases
    cases = [WriteCase("llama-3-8b step", "bfloat16", 1000, 8, 128, 16, 4096, 64, 2048)]
    if not quick:
        cases += [
            WriteCase("llama-2-7b fp16 bs128", "float16", 513, 32, 128, 128, 600, 32, 4096),
            WriteCase("pool 140k blocks", "bfloat16", 256, 8, 128, 16, 140_000, 4, 64,
                      high_slots=True),
        ]
    return cases


def prefill_cases(device: str, quick: bool) -> list[PrefillCase]:
    if device == "cpu":
        cases = [PrefillCase("packed group-3", "float32", 6, 2, 32, (1, 17, 40))]
        if not quick:
            cases.append(PrefillCase("paged context", "float16", 8, 2, 32, (5, 17, 1),
                                     (0, 13, 36), 8))
        return cases
    cases = [PrefillCase("packed llama-3-8b", "bfloat16", 32, 8, 128, (1, 17, 512, 513, 1000))]
    if not quick:
        cases += [
            PrefillCase("group-3 D64", "float16", 24, 8, 64, (1, 100, 64, 255)),
            PrefillCase("paged context", "bfloat16", 32, 8, 128, (64, 1, 300), (0, 1000, 4096)),
            PrefillCase("llama-2-7b 2k", "bfloat16", 32, 32, 128, (2048,)),
        ]
    return cases


def _randn(shape, dtype: torch.dtype, gen: torch.Generator, device: str) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def paged_context(context_lens, num_kv_heads: int, head_dim: int, block_size: int,
                  dtype: torch.dtype, gen: torch.Generator, perm_gen: torch.Generator,
                  device: str, pool_blocks: int = 0, high_block_ids: bool = False) -> tuple[PagedContext, torch.Tensor]:
    """A NaN-poisoned paged cache holding random tokens for each sequence, with
    shuffled block tables. Also returns the tokens' values flattened in order
    ``[sum(lens), 2, Hkv, D]`` (K then V) for building a contiguous copy."""
    lens = [int(n) for n in context_lens]
    need = [-(-n // block_size) for n in lens]
    total = sum(need)
    pool = max(pool_blocks, total + 2)
    if high_block_ids:
        used = pool - 1 - torch.randperm(total, generator=perm_gen)
        spare = 0
    else:
        perm = torch.randperm(pool, generator=perm_gen)
        used, spare = perm[:total], int(perm[total])
    tables = torch.full((len(lens), max(need, default=0) + 2), spare, dtype=torch.int32)
    offset = 0
    for b, n in enumerate(need):
        tables[b, :n] = used[offset:offset + n].to(torch.int32)
        offset += n
    shape = (pool, block_size, num_kv_heads, head_dim)
    k_pool = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_pool = torch.full(shape, float("nan"), dtype=dtype, device=device)
    seq_idx = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.long))
    tok_idx = torch.cat([torch.arange(n) for n in lens]) if lens else torch.zeros(0, dtype=torch.long)
    slots = tables.long()[seq_idx, tok_idx // block_size] * block_size + tok_idx % block_size
    values = _randn((len(tok_idx), 2, num_kv_heads, head_dim), dtype, gen, device)
    slots = slots.to(device)
    k_pool.view(-1, num_kv_heads, head_dim)[slots] = values[:, 0]
    v_pool.view(-1, num_kv_heads, head_dim)[slots] = values[:, 1]
    ctx = PagedContext(k_pool, v_pool, tables.to(device),
                       torch.tensor(lens, dtype=torch.int32, device=device))
    return ctx, values


def build_decode_inputs(case: DecodeCase, seed: int, device: str) -> DecodeInputs:
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    perm_gen = torch.Generator().manual_seed(seed)
    ctx, values = paged_context(case.context_lens, case.num_kv_heads, case.head_dim,
                                case.block_size, dtype, gen, perm_gen, device, case.pool_blocks,
                                case.high_block_ids)
    lens = list(case.context_lens)
    max_len = case.contiguous_max_len or max(lens) + 3
    shape = (len(lens), max_len, case.num_kv_heads, case.head_dim)
    k_contig = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_contig = torch.full(shape, float("nan"), dtype=dtype, device=device)
    seq_idx = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(device)
    tok_idx = torch.cat([torch.arange(n) for n in lens]).to(device)
    k_contig[seq_idx, tok_idx] = values[:, 0]
    v_contig[seq_idx, tok_idx] = values[:, 1]
    q = _randn((len(lens), case.num_heads, case.head_dim), dtype, gen, device)
    return DecodeInputs(q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.context_lens,
                        k_contig, v_contig)


@dataclass(frozen=True)
class WriteInputs:
    k: torch.Tensor
    v: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    slot_mapping: torch.Tensor
    k_contig: torch.Tensor       # a linear buffer [batch * max_len, 1, Hkv, D]
    v_contig: torch.Tensor
    contig_slots: torch.Tensor   # sequence s, position p -> slot s * max_len + p


def build_write_inputs(case: WriteCase, seed: int, device: str) -> WriteInputs:
    """Distinct shuffled destinations; every 5th paged slot is -1 (padding)."""
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    perm_gen = torch.Generator().manual_seed(seed)
    num_slots = case.num_blocks * case.block_size
    t = case.num_tokens
    if case.high_slots:
        slots = num_slots - 1 - torch.randperm(t, generator=perm_gen)
    else:
        slots = torch.randperm(num_slots, generator=perm_gen)[:t]
    slots[::5] = -1
    flat = torch.randperm(case.batch * case.max_len, generator=perm_gen)[:t]
    shape = (case.num_blocks, case.block_size, case.num_kv_heads, case.head_dim)
    cshape = (case.batch * case.max_len, 1, case.num_kv_heads, case.head_dim)
    nan = float("nan")
    return WriteInputs(
        k=_randn((t, case.num_kv_heads, case.head_dim), dtype, gen, device),
        v=_randn((t, case.num_kv_heads, case.head_dim), dtype, gen, device),
        k_pool=torch.full(shape, nan, dtype=dtype, device=device),
        v_pool=torch.full(shape, nan, dtype=dtype, device=device),
        slot_mapping=slots.to(device),
        k_contig=torch.full(cshape, nan, dtype=dtype, device=device),
        v_contig=torch.full(cshape, nan, dtype=dtype, device=device),
        contig_slots=flat.to(device),
    )


@dataclass(frozen=True)
class PrefillInputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    k_cache: torch.Tensor | None
    v_cache: torch.Tensor | None
    block_tables: torch.Tensor | None
    context_lens: torch.Tensor | None


def build_prefill_inputs(case: PrefillCase, seed: int, device: str) -> PrefillInputs:
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    perm_gen = torch.Generator().manual_seed(seed)
    total = sum(case.lengths)
    q = _randn((total, case.num_heads, case.head_dim), dtype, gen, device)
    k = _randn((total, case.num_kv_heads, case.head_dim), dtype, gen, device)
    v = _randn((total, case.num_kv_heads, case.head_dim), dtype, gen, device)
    cu = torch.tensor([0, *np.cumsum(case.lengths).tolist()], dtype=torch.int32, device=device)
    ctx = None
    if case.context_lens:
        ctx, _ = paged_context(case.context_lens, case.num_kv_heads, case.head_dim,
                               case.block_size, dtype, gen, perm_gen, device)
    return PrefillInputs(q, k, v, cu, max(case.lengths),
                         *(ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.context_lens)
                         if ctx else (None, None, None, None))
