"""The profiling run that calibrates pagesim's clock on a GPU.

    python -m kernels.calibration.profile --model llama-2-7b --hardware h100-sxm [--quick] --out kernels/profiles

For each model it builds ``kernels.calibration.model.Transformer`` (random bf16 weights,
pagesim's Triton kernels) and writes under ``OUT/<hardware>/<model>/``:

* ``gemm.csv``, ``elementwise.csv`` -- one row per (operator, token or
  sequence count): the model's own operator functions timed in isolation;
* ``decode_attention.csv`` -- paged and contiguous decode over a (batch x
  context) grid of uniform batches plus skewed batches;
* ``prefill_attention.csv`` -- prompt mixes, with and without cached context;
* ``overhead.csv`` -- graph launch and eager host time per step;
* ``steps.csv`` -- whole real steps: ``calibration`` rows (may be fitted on)
  and ``heldout`` rows (never fitted on; ``pagesim calibrate --check``);
* ``provenance.json`` -- GPU, driver, versions, commit, date, command, checks.

Timing: every measurement replays a CUDA graph of the region (device
events, median of several replays), so the numbers are GPU time without
Python launch gaps; operators rotate over enough weight/cache copies that
repeated calls do not hit in L2. Docs: docs/calibration.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from kernels.calibration.cache import ContiguousKVCache, PagedKVCache, place
from kernels.calibration.inputs import Composition, prepare_step
from kernels.calibration.model import Transformer, dense_logits, random_token_ids, random_weights
from kernels.calibration.cli import parse_tp
from kernels.timing import elapsed_s
from sim.parallel import shard
from sim.presets import MODELS, ModelSpec

DEVICE = "cuda"
BLOCK_SIZE = 16                 # paged KV block, tokens (vLLM's default)
WEIGHT_SETS = 4                 # distinct layers' weights the step cycles through
L2_DEFEAT_BYTES = 256 << 20     # attention rotates over cache copies until this many bytes
GEMM_RING_BYTES = 1 << 30       # GEMMs rotate over weight copies until this many bytes
MAX_REPS = 200
STEP_TOKEN_CAP = 131072         # cached + new tokens of one sampled step
KINDS = ("decode", "prefill", "mixed", "skewed", "static")


@dataclass(frozen=True)
class Grid:
    tokens: tuple[int, ...]
    seqs: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_context: tuple[int, ...]
    skew_batch: tuple[int, ...]
    heldout_per_kind: int
    calibration_per_kind: int
    replays: int


FULL = Grid(
    tokens=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640,
            768, 1024, 1280, 1536, 2048, 3072, 4096, 6144, 8192),
    seqs=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    decode_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    decode_context=(16, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
    skew_batch=(2, 4, 8, 16, 32, 64, 128), heldout_per_kind=5, calibration_per_kind=3, replays=5)
QUICK = Grid(tokens=(1, 4, 16, 64, 256, 1024, 4096), seqs=(1, 8, 64, 256), decode_batch=(1, 8, 64),
             decode_context=(64, 512, 2048), skew_batch=(8, 64), heldout_per_kind=1,
             calibration_per_kind=1, replays=3)


# ---- timing ----------------------------------------------------------------
class GraphTimer:
    """Median device time of ``fn(i)``: ``reps`` calls (rotating ``i`` over
    ``num_sets`` weight/cache copies) captured in one CUDA graph, replayed for
    ``warm_s`` first so clocks settle at the sustained level, then timed."""

    def __init__(self, replays: int, target_s: float = 2e-3, warm_s: float = 0.0) -> None:
        self.replays, self.target_s, self.warm_s = replays, target_s, warm_s

    def __call__(self, fn, num_sets: int = 1, target_s: float | None = None,
                 warm_s: float | None = None) -> float:
        n = max(1, num_sets)
        target_s = self.target_s if target_s is None else target_s
        warm_s = self.warm_s if warm_s is None else warm_s
        for i in range(2):
            fn(i % n)                       # compile, autotune, allocate
        torch.cuda.synchronize()
        estimate = elapsed_s(lambda: [fn(i % n) for i in range(3)], cuda=True) / 3
        reps = int(min(MAX_REPS, max(1, round(target_s / max(estimate, 1e-7)))))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for r in range(reps):
                fn(r % n)
        warmed = elapsed_s(graph.replay, cuda=True)
        while warmed < warm_s:
            warmed += elapsed_s(graph.replay, cuda=True)
        times = [elapsed_s(graph.replay, cuda=True) for _ in range(self.replays)]
        del graph
        return float(np.median(times)) / reps


def _randn(*shape) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=torch.bfloat16)


def _row(op, scope, axis, layout, calls, count, seconds) -> dict:
    return dict(op=op, scope=scope, axis=axis, layout=layout, calls=calls, count=count, seconds=seconds)


# ---- operators ---------------------------------------------------------------
def profile_gemms(model: Transformer, grid: Grid, timer: GraphTimer) -> list[dict]:
    """Sustained timings (clocks as in long steps) over >= 1 GiB of weight copies.

    Each grid count ``m`` is the median of the counts ``m - 1, m, m + 1``:
    cuBLAS picks other kernels at round counts (the grid's 640 ran ~20% slower
    than the 633 of a real step, ``kernels/calibration/diagnose_step.py``), and real steps
    see any count, so a lone round count would stand for its neighbours."""
    rows, sustained = [], dict(target_s=10e-3, warm_s=0.05)
    ops = {op: getattr(model.weights.layers[0], op) for op in ("qkv", "out", "up", "down")}
    ops["lm_head"] = (model.weights.lm_head, None)
    for op, (weight, bias) in ops.items():
        copies = [(weight.clone(), bias) for _ in range(_copies(weight.numel() * weight.element_size()))]
        counts, scope, axis = (grid.seqs, "step", "seqs") if op == "lm_head" else (grid.tokens, "layer", "tokens")
        for m in counts:
            samples = []
            for near in _neighbourhood(m):
                x = _randn(near, weight.shape[1])
                samples.append(timer(lambda i, x=x, c=copies: model.project(x, c[i]), len(copies), **sustained))
            rows.append(_row(op, scope, axis, "any", 1, m, float(np.median(samples))))
        del copies
    return rows


def _neighbourhood(m: int) -> tuple[int, ...]:
    return (m,) if m < 8 else (m - 1, m, m + 1)


def _copies(set_bytes: int) -> int:
    return int(min(32, max(2, -(-GEMM_RING_BYTES // set_bytes))))


def profile_elementwise(model: Transformer, grid: Grid, timer: GraphTimer,
                        rng: np.random.Generator) -> list[dict]:
    g, layer, rows = model.geom, model.weights.layers[0], []
    for m in grid.tokens:
        ids = torch.from_numpy(random_token_ids(g, m, rng)).to(DEVICE)
        pos = torch.from_numpy(rng.integers(0, g.max_context_tokens, m)).to(DEVICE)
        rope = model.embed(ids, pos)[1]
        h, h2 = _randn(m, g.hidden_size), _randn(m, g.hidden_size)
        qkv, up = _randn(m, layer.qkv[0].shape[0]), _randn(m, layer.up[0].shape[0])
        ops = {("embed", "step", 1): lambda i: model.embed(ids, pos),
               ("norm", "layer", 2): lambda i: model.norm(h, layer.attn_norm),
               ("activation", "layer", 1): lambda i: model.activation(up),
               ("residual", "layer", 2): lambda i: model.residual(h, h2)}
        if rope is not None:                 # OPT's split is views only: no kernel
            ops[("split_heads", "layer", 1)] = lambda i: model.split_heads(qkv, rope)
        for (op, scope, calls), fn in ops.items():
            rows.append(_row(op, scope, "tokens", "any", calls, m, timer(fn)))
        _, k, v = model.split_heads(qkv, rope)
        for layout in ("paged", "contiguous"):
            cache, inp = _write_target(g, layout, m, rng)
            sec = timer(lambda i, k=k, v=v, c=cache, x=inp: model.write_kv(k, v, c, i, x), 2)
            rows.append(_row("kv_write", "layer", "tokens", layout, 1, m, sec))
    for s in grid.seqs:
        hs, idx, logits = _randn(s, g.hidden_size), torch.arange(s, device=DEVICE), _randn(s, g.vocab_size)
        rows.append(_row("final_norm", "step", "seqs", "any", 1, s, timer(lambda i: model.final_hidden(hs, idx))))
        rows.append(_row("sample", "step", "seqs", "any", 1, s, timer(lambda i: model.sample(logits))))
    return rows


def _write_target(g: ModelSpec, layout: str, m: int, rng: np.random.Generator):
    """A cache of two sets and the write slots of ``m`` tokens: scattered over
    the pool (paged), or one token for each of up to 64 sequences' ranges
    (contiguous)."""
    if layout == "paged":
        num_blocks = -(-max(m, 4096) // BLOCK_SIZE)
        cache = PagedKVCache(g, num_blocks, block_size=BLOCK_SIZE, num_sets=2, device=DEVICE)
        slots = rng.choice(num_blocks * BLOCK_SIZE, m, replace=False).astype(np.int64)
    else:
        num_seqs = min(m, 64)
        per_seq = -(-m // num_seqs)
        cache = ContiguousKVCache(g, num_seqs * per_seq, block_size=BLOCK_SIZE, num_sets=2, device=DEVICE)
        t = np.arange(m)
        slots = (t % num_seqs) * per_seq + t // num_seqs
    return cache, SimpleNamespace(slot_mapping=torch.from_numpy(slots.astype(np.int64)).to(DEVICE))


# ---- attention ---------------------------------------------------------------
def fresh_cache(g: ModelSpec, layout: str, comp: Composition, rng: np.random.Generator, num_sets: int,
                device: str = DEVICE, dtype=None):
    """A cache holding exactly ``comp``'s sequences plus the scratch page (block
    id / slot 0) that the engine's padding reads, placed at random (paged) or
    packed page-aligned (contiguous)."""
    extra = {} if dtype is None else {"dtype": dtype}
    cached, new = comp.spans()
    totals = (cached + new).tolist()
    pages = 1 + sum(-(-t // BLOCK_SIZE) for t in totals)
    if layout == "paged":
        cache = PagedKVCache(g, pages, block_size=BLOCK_SIZE, num_sets=num_sets, device=device, **extra)
        ids = np.concatenate([[0], 1 + rng.permutation(pages - 1)]).astype(np.int32)
        need = [-(-t // BLOCK_SIZE) for t in totals]
        return cache, np.split(ids[1:], np.cumsum(need)[:-1])
    cache = ContiguousKVCache(g, pages * BLOCK_SIZE, block_size=BLOCK_SIZE, num_sets=num_sets, device=device,
                              **extra)
    return cache, place(cache, [BLOCK_SIZE, *totals])[1:]


def _sets_for(g: ModelSpec, tokens: int) -> int:
    set_bytes = max(tokens, 1) * g.num_kv_heads * g.head_dim * 2 * 2
    return int(min(8, max(1, -(-L2_DEFEAT_BYTES // set_bytes))))


def time_attention(model: Transformer, layout: str, comp: Composition, timer: GraphTimer,
                   rng: np.random.Generator, timing: dict | None = None) -> float:
    """One layer's attention call (prefill and/or decode) for ``comp``."""
    g = model.geom
    sets = _sets_for(g, int(sum(comp.spans()[0])) + comp.num_tokens)
    cache, where = fresh_cache(g, layout, comp, rng, sets)
    inp = prepare_step(comp, cache, where, random_token_ids(g, comp.num_tokens, rng), DEVICE, g)
    t = comp.num_tokens
    q, k, v = _randn(t, g.num_heads, g.head_dim), _randn(t, g.num_kv_heads, g.head_dim), _randn(
        t, g.num_kv_heads, g.head_dim)
    return timer(lambda i: model.attend(q, k, v, cache, i, inp), sets, **(timing or {}))


def profile_decode(model: Transformer, grid: Grid, timer: GraphTimer, rng) -> list[dict]:
    g, rows = model.geom, []
    shapes = [("uniform", [c] * b) for b in grid.decode_batch for c in grid.decode_context
              if c <= g.max_context_tokens and b * c <= 2 * STEP_TOKEN_CAP]
    long_tokens = min(4096, g.max_context_tokens)
    for b in grid.skew_batch:
        half = b // 2
        shapes += [("skewed", [long_tokens] + [128] * (b - 1)), ("skewed", [1024] + [64] * (b - 1)),
                   ("skewed", [long_tokens] * half + [128] * (b - half)),
                   ("skewed", np.clip(np.round(256 * np.exp(1.5 * rng.standard_normal(b))), 16,
                                      g.max_context_tokens).astype(int).tolist())]
    shapes = [(kind, [min(c, g.max_context_tokens) for c in ctx]) for kind, ctx in shapes]
    for layout in ("paged", "contiguous"):
        for kind, ctx in shapes:
            sec = time_attention(model, layout, Composition((), (), tuple(ctx)), timer, rng)
            rows.append(dict(layout=layout, kind=kind, batch=len(ctx), mean_context_tokens=float(np.mean(ctx)),
                             max_context_tokens=max(ctx), contexts=json.dumps(ctx) if kind == "skewed" else "",
                             seconds=sec))
        torch.cuda.empty_cache()
    return rows


def prefill_mixes(g: ModelSpec, quick: bool, rng) -> list[tuple[list[int], list[int]]]:
    """(new tokens, cached context) per prompt, for each profiled mix."""
    cap = g.max_context_tokens
    if quick:
        return [([64], [0]), ([512], [0]), ([2048], [0]), ([128] * 4, [0] * 4), ([512], [512]),
                ([128], [2048])]
    mixes = [([n], [0]) for n in (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192) if n <= cap]
    mixes += [([n] * k, [0] * k) for k, n in ((4, 128), (8, 256), (16, 64), (4, 1024), (2, 2048),
                                                (32, 32), (8, 512))]
    mixes += [([n], [min(c, cap - n)]) for n, c in ((16, 2048), (64, 4096), (128, 512), (512, 512),
                                                    (512, 2048), (1024, 1024), (256, 8192))]
    mixes += [([256, 128, 512], [1024, 0, 256]), ([64] * 8, [1024] * 8)]
    for has_ctx in (False, False, False, True, True, True):
        k = int(rng.integers(2, 9))
        new = [int(x) for x in np.exp(rng.uniform(np.log(16), np.log(1024), k)).round()]
        ctx = [int(min(x, cap - n)) if has_ctx else 0
               for x, n in zip(np.exp(rng.uniform(np.log(64), np.log(2048), k)).round(), new)]
        mixes.append((new, ctx))
    return mixes


def profile_prefill(model: Transformer, grid: Grid, timer: GraphTimer, rng, quick: bool) -> list[dict]:
    rows = []
    for new, ctx in prefill_mixes(model.geom, quick, rng):
        layouts = ("paged", "contiguous") if any(ctx) else ("any",)
        for layout in layouts:
            comp = Composition(tuple(new), tuple(ctx), ())
            sec = time_attention(model, "paged" if layout == "any" else layout, comp, timer, rng,
                                 dict(target_s=5e-3, warm_s=0.03))
            rows.append(dict(layout=layout, new_tokens=json.dumps(new), context_tokens=json.dumps(ctx),
                             seconds=sec))
    return rows


# ---- whole steps -------------------------------------------------------------
def _logu(rng, lo: float, hi: float) -> int:
    return int(round(float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))))


def _prompts(g: ModelSpec, rng, num: int, hi: int, ctx_prob: float):
    new = [min(_logu(rng, 16, hi), g.max_context_tokens) for _ in range(num)]
    ctx = [min(_logu(rng, 64, 2048), g.max_context_tokens - n) if rng.random() < ctx_prob else 0 for n in new]
    while sum(new) > 6144:
        new, ctx = new[:-1], ctx[:-1]
    return tuple(new), tuple(ctx)


def _fit(contexts, g: ModelSpec) -> tuple[int, ...]:
    """Scale contexts down so the step's tokens fit."""
    c = np.clip(np.asarray(contexts, dtype=float), 2, g.max_context_tokens)
    scale = min(1.0, STEP_TOKEN_CAP / c.sum())
    return tuple(int(x) for x in np.maximum(2, np.floor(c * scale)))


def sample_composition(kind: str, g: ModelSpec, rng, index: int) -> Composition:
    top = g.max_context_tokens
    if kind == "decode":
        b = _logu(rng, 1, 256)
        return Composition((), (), _fit([_logu(rng, 32, top)] * b, g))
    if kind == "prefill":
        return Composition(*_prompts(g, rng, int(rng.integers(1, 9)), 2048, 0.3), ())
    if kind == "mixed":
        new, ctx = _prompts(g, rng, int(rng.integers(1, 4)), 1024, 0.5)
        return Composition(new, ctx, _fit([_logu(rng, 32, top // 2) for _ in range(_logu(rng, 1, 128))], g))
    if kind == "skewed":
        b = _logu(rng, 2, 256)
        if index % 2:
            ctx = _logu(rng, 32, 512) * np.exp(rng.uniform(1.0, 2.0) * rng.standard_normal(b))
        else:
            ctx = np.array([_logu(rng, 1024, top) if rng.random() < 0.15 else _logu(rng, 16, 256)
                            for _ in range(b)], dtype=float)
        return Composition((), (), _fit(np.round(ctx), g))
    if kind == "static":
        if index % 2:
            b = _logu(rng, 1, 128)
            return Composition((), (), _fit([_logu(rng, 64, top)] * b, g))
        p = min(_logu(rng, 16, 1024), top)
        b = min(_logu(rng, 1, 64), max(1, 8192 // p))
        return Composition((p,) * b, (0,) * b, ())
    raise ValueError(f"unknown step kind {kind!r}; allowed: {', '.join(KINDS)}")


def time_step(model: Transformer, comp: Composition, layout: str, timer: GraphTimer, rng):
    """(graph-replayed device time, eager device time) of one whole step."""
    g = model.geom
    cached, new = comp.spans()
    totals = cached + new
    sets = 2 if int(totals.sum()) * g.num_kv_heads * g.head_dim * 4 <= 4 << 30 else 1
    cache, where = fresh_cache(g, layout, comp, rng, sets)
    inp = prepare_step(comp, cache, where, random_token_ids(g, comp.num_tokens, rng), DEVICE, g)
    model.step(inp, cache)
    torch.cuda.synchronize()
    eager = float(np.median([elapsed_s(lambda: model.step(inp, cache), cuda=True) for _ in range(2)]))
    graph = timer(lambda i: model.step(inp, cache), warm_s=0.1)
    del cache, inp
    torch.cuda.empty_cache()
    return graph, eager


def profile_steps(model: Transformer, grid: Grid, timer: GraphTimer, seed: int) -> list[dict]:
    rows = []
    for split, per_kind, split_seed in (("calibration", grid.calibration_per_kind, seed + 1),
                                        ("heldout", grid.heldout_per_kind, seed + 2)):
        rng = np.random.default_rng(split_seed)
        for kind in KINDS:
            for i in range(per_kind):
                comp = sample_composition(kind, model.geom, rng, i)
                for layout in ("paged", "contiguous"):
                    graph, eager = time_step(model, comp, layout, timer, rng)
                    rows.append(dict(step_id=len(rows), split=split, kind=kind, layout=layout,
                                     prefill_new_tokens=json.dumps(comp.prefill_new_tokens),
                                     prefill_context_tokens=json.dumps(comp.prefill_context_tokens),
                                     decode_context_tokens=json.dumps(comp.decode_context_tokens),
                                     num_tokens=comp.num_tokens,
                                     num_seqs=len(comp.prefill_new_tokens) + len(comp.decode_context_tokens),
                                     measured_s=graph, eager_s=eager))
                    print(f"  step {rows[-1]['step_id']:3d} {split:11s} {kind:7s} {layout:10s} "
                          f"tokens {comp.num_tokens:5d}  {graph * 1e3:8.3f} ms (eager {eager * 1e3:.3f})")
    return rows


def profile_overhead(model: Transformer, timer: GraphTimer, rng) -> list[dict]:
    """Replay latency of a one-kernel graph, and eager host time of a small step."""
    x = torch.zeros(1, device=DEVICE)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.add_(1)
    graph.replay()
    launch = float(np.median([elapsed_s(graph.replay, cuda=True) for _ in range(50)]))
    comp = Composition((), (), (128,))
    cache, where = fresh_cache(model.geom, "paged", comp, rng, 1)
    inp = prepare_step(comp, cache, where, random_token_ids(model.geom, 1, rng), DEVICE, model.geom)
    model.step(inp, cache)
    torch.cuda.synchronize()
    host = []
    for _ in range(5):
        t0 = time.perf_counter()
        model.step(inp, cache)
        host.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
    return [dict(name="graph_launch_s", seconds=launch, note="replay of a one-kernel CUDA graph"),
            dict(name="eager_host_s", seconds=float(np.median(host)),
                 note="host time to issue one eager decode step (batch 1, context 128); not used by the model")]


# ---- checks ------------------------------------------------------------------
def check_backends(g: ModelSpec) -> dict:
    """Triton vs torch-reference kernels (same weights, same cache contents) on
    a mixed step, and vs the cache-free dense forward on two fresh prompts, at
    the real geometry with 2 layers, bf16."""
    small = replace(g, num_layers=2)
    weights = random_weights(small, num_sets=2, device=DEVICE, seed=5)
    triton_model, ref_model = Transformer(small, weights, "triton"), Transformer(small, weights, "reference")
    rng = np.random.default_rng(5)
    comp = Composition((37, 64), (0, 100), (1, 17, 300, 129))
    ids = random_token_ids(small, comp.num_tokens, rng)
    out = {}
    for layout in ("paged", "contiguous"):
        (a, ta), (b, tb) = [_run(m, small, layout, comp, ids) for m in (triton_model, ref_model)]
        out[f"{layout}_vs_reference_rel_err"] = float((a - b).norm() / b.norm())
        out[f"{layout}_vs_reference_token_match"] = float((ta == tb).float().mean())
    comp = Composition((50, 77), (0, 0), ())
    ids = random_token_ids(small, comp.num_tokens, rng)
    a, _ = _run(triton_model, small, "paged", comp, ids)
    dense = torch.stack([dense_logits(triton_model, torch.from_numpy(x).to(DEVICE))[-1].float()
                         for x in (ids[:50], ids[50:])])
    out["paged_vs_dense_rel_err"] = float((a - dense).norm() / dense.norm())
    out["passed"] = all(v < 3e-2 for k, v in out.items() if k.endswith("rel_err"))
    return out


def _run(model: Transformer, g: ModelSpec, layout: str, comp: Composition, ids):
    cache, where = fresh_cache(g, layout, comp, np.random.default_rng(6), 2)
    logits, tokens = model.step(prepare_step(comp, cache, where, ids, DEVICE, g), cache)
    return logits.float(), tokens


def validate_ring(g: ModelSpec, timer: GraphTimer, rng) -> list[dict]:
    """Whole steps with the weight/cache ring against all-distinct layers."""
    comps = [Composition((), (), (512,) * 8), Composition((), (), (1024,) * 64),
             Composition((1024,), (0,), ()), Composition((256,), (512,), (700,) * 16)]
    rows = []
    for sets in (WEIGHT_SETS, g.num_layers):
        model = Transformer(g, random_weights(g, num_sets=sets, device=DEVICE))
        for i, comp in enumerate(comps):
            cache, where = fresh_cache(g, "paged", comp, rng, 2 if sets == WEIGHT_SETS else sets)
            inp = prepare_step(comp, cache, where, random_token_ids(g, comp.num_tokens, rng), DEVICE, g)
            sec = timer(lambda _: model.step(inp, cache), warm_s=0.1)
            rows.append(dict(composition=i, weight_sets=sets, cache_sets=cache.num_sets, seconds=sec))
            del cache, inp
        del model
        torch.cuda.empty_cache()
    return rows


# ---- the run -----------------------------------------------------------------
def provenance(g: ModelSpec, hardware: str, quick: bool, checks: dict, wall_s: float) -> dict:
    import triton

    from kernels.ops.decode_common import pick_tiles as decode_tiles
    from kernels.ops.prefill import pick_tiles as prefill_tiles
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    return {
        "model": g.name, "hardware": hardware, "geometry": asdict(g), "dtype": "bf16",
        "gpu": torch.cuda.get_device_name(), "num_sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "python": platform.python_version(), "git_commit": os.environ.get("PAGESIM_COMMIT", "unknown"),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m kernels.calibration.profile " + " ".join(sys.argv[1:]),
        "grid": "quick" if quick else "full", "kv_block_size": BLOCK_SIZE, "weight_sets": WEIGHT_SETS,
        "prefill_block_m": prefill_tiles(g.head_dim, False).block_m,
        "decode_block_n": decode_tiles(g.head_dim).block_n,
        "timing": "median device time of CUDA-graph replays (events); GEMMs and prefill attention "
                  "sustained (warm-up replays first); GEMMs rotate over >= "
                  f"{GEMM_RING_BYTES >> 20} MiB of weight copies, attention over >= "
                  f"{L2_DEFEAT_BYTES >> 20} MiB of cache copies",
        "checks": checks, "profile_wall_s": round(wall_s, 1),
    }


def profile_model(g: ModelSpec, hardware: str, out_dir: Path, quick: bool, seed: int, check: bool,
                  tensor: int = 1) -> Path:
    """Profile ``g`` -- a preset, or (``tensor`` > 1) what one GPU of a
    tensor-parallel group of it computes (``sim.parallel.shard``: the
    group's sharded GEMM and attention shapes, no communication) -- into
    ``out_dir/hardware/g.name``."""
    name, grid = g.name, QUICK if quick else FULL
    started, timer, rng = time.time(), GraphTimer(grid.replays), np.random.default_rng(seed)
    checks = check_backends(g) if check else {}
    print(f"[{name}] backend check: {checks}", flush=True)
    model = Transformer(g, random_weights(g, num_sets=WEIGHT_SETS, device=DEVICE, seed=seed))
    sections = {
        "gemm.csv": lambda: profile_gemms(model, grid, timer),
        "elementwise.csv": lambda: profile_elementwise(model, grid, timer, rng),
        "decode_attention.csv": lambda: profile_decode(model, grid, timer, rng),
        "prefill_attention.csv": lambda: profile_prefill(model, grid, timer, rng, quick),
        "overhead.csv": lambda: profile_overhead(model, timer, rng),
        "steps.csv": lambda: profile_steps(model, grid, GraphTimer(grid.replays + 2), seed),
    }
    dest = out_dir / hardware / name
    dest.mkdir(parents=True, exist_ok=True)
    for file_name, run in sections.items():
        t0 = time.time()
        rows = run()
        pd.DataFrame(rows).to_csv(dest / file_name, index=False)
        print(f"[{name}] {file_name}: {len(rows)} rows in {time.time() - t0:.1f} s", flush=True)
    prov = provenance(g, hardware, quick, checks, time.time() - started)
    prov["tensor_parallel"] = tensor
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    return dest


DEFAULT_MODELS = ("llama-2-7b", "llama-3-8b", "llama-2-13b", "opt-13b")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kernels.calibration.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help=f"model preset, comma-separated list, or 'all' ({', '.join(DEFAULT_MODELS)})")
    p.add_argument("--hardware", required=True, help="hardware preset name the profiles are filed under")
    p.add_argument("--quick", action="store_true", help="coarse grid and 1 step per kind (smoke test)")
    p.add_argument("--out", default="kernels/profiles", type=Path, help="root folder (default kernels/profiles)")
    p.add_argument("--tp", default="1", metavar="T[,T...]",
                   help="tensor-parallel degrees: profile the shapes one GPU of each group runs "
                        "(default 1: the whole model), filed as <model>-tp<T>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="skip the Triton-vs-reference check")
    p.add_argument("--validate-ring", action="store_true",
                   help="also time whole steps with all-distinct layers against the weight/cache ring")
    return p.parse_args(argv)


def resolve_models(value: str) -> list[str]:
    names = list(DEFAULT_MODELS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ValueError(f"--model: unknown model {', '.join(unknown) or value!r}; "
                         f"allowed: all, {', '.join(MODELS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models = resolve_models(args.model)
        degrees = parse_tp(args.tp)
        specs = [(t, shard(MODELS[name], t)) for name in models for t in degrees]
        if not torch.cuda.is_available():
            raise ValueError("profiling needs a CUDA GPU (torch.cuda.is_available() is False)")
    except ValueError as exc:
        print(f"profile: error: {exc}", file=sys.stderr)
        return 2
    for tensor, g in specs:
        if args.validate_ring:
            rows = validate_ring(g, GraphTimer(7), np.random.default_rng(args.seed))
            dest = args.out / args.hardware / g.name
            dest.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(dest / "ring_check.csv", index=False)
            print(pd.DataFrame(rows).to_string(), flush=True)
        print(f"wrote {profile_model(g, args.hardware, args.out, args.quick, args.seed, not args.no_check, tensor)}",
              flush=True)
    return 0



if __name__ == "__main__":
    sys.exit(main())
