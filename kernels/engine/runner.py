"""The model runner: one ``Batch`` from the simulator's policy -> one real step.

Everything GPU-specific lives here (STYLE.md rule 11), so the engine's loop
stays ``schedule -> run -> on_step_done``:

* **inputs from the KV manager's own state** -- block tables are the paged
  manager's block ids, first slots are the contiguous manager's reservation
  offsets; the runner never decides where a token lives;
* **padding** -- a static batch pads prompts (``skip``) and reads padded
  contexts; its finished rows, and the rows that fill a CUDA-graph bucket,
  are padding rows that read the scratch location and write nothing;
* **CUDA graphs** for decode-only steps, captured at bucketed batch sizes
  (vLLM's 1, 2, 4, 8, 16, 24, ... up to ``max_batch_size``): a decode step of
  37 sequences replays the 40-row graph. Other steps run eagerly;
* **swap** -- the block copies a ``Batch`` carries move whole blocks (every
  layer's K and V) between the GPU pool and a pinned CPU pool before the
  step computes;
* **tokens** -- prompts are random token ids drawn per request; each step's
  greedy samples come back to the host (one synchronisation a step, as in a
  real engine) and feed the next decode;
* **several sequences per request** (parallel sampling, beams) -- each row
  is a KV sequence (``Batch.seq_id``) with its own token list; a sequence
  seen for the first time continues its fork parent's tokens (paged: the
  manager reports forks; contiguous: the request's own sequence, whose
  prompt KV is copied into the new reservation), and the copy-on-write
  block copies a ``Batch`` carries run after the swaps, before the step;
* **tensor parallelism** -- with ``tensor > 1`` the model is one rank's
  ``TensorParallelTransformer`` and the cache holds its shard of the KV
  heads. Everything a step does to the device is one ``StepPlan`` built on
  the host (copies, inputs, which graph); ``mirror`` sees each plan and each
  warm-up before this runner executes it, so the other ranks' runners
  (``kernels/engine/tensor_parallel.py``) execute the same and the
  collectives inside the model line up.

Memory: the paged pool is ``num_blocks + 1`` blocks (the last is scratch);
the contiguous buffer is the manager's ``total_tokens`` slots, rounded up to
a page, plus a guard of one model context (padded static reads past an
``exact`` reservation stay in bounds, and padding rows read there).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from kernels.calibration.cache import ContiguousKVCache, PagedKVCache
from kernels.calibration.inputs import HostStep, Rows, StepInputs, host_step, table_width
from kernels.calibration.model import Transformer, Weights
from sim.batch import Batch
from sim.cost.graphs import bucket_for, graph_batch_sizes
from sim.parallel import shard
from sim.presets import ModelSpec

SWAP_CHUNK_BLOCKS = 64        # blocks staged on the GPU per swap copy


@dataclass
class StepTiming:
    """Where one step's wall time went, seconds on the host clock."""

    prepare_s: float = 0.0     # host arrays, swap copies issued, inputs on the device
    launch_s: float = 0.0      # issuing the step's kernels (eager) or the graph replay
    wait_s: float = 0.0        # blocked until the sampled tokens are on the host
    graph_batch: int = 0       # rows of the replayed graph; 0: eager


@dataclass
class StepPlan:
    """Everything one step does to the device, decided on the host: whole
    blocks swapped out (GPU -> CPU), then in, then copied within the pool
    (copy-on-write), token slots copied within a contiguous buffer (a
    sample's prompt KV), then the step on ``host``'s inputs (None: the
    step computes nothing), replaying the ``graph_rows`` graph (0: eager).
    Small and picklable: it is what a tensor-parallel rank 0 broadcasts."""

    swap_out: tuple = ()                 # (GPU block, CPU block)
    swap_in: tuple = ()                  # (CPU block, GPU block)
    block_copies: tuple = ()             # (GPU block, GPU block)
    slot_copies: list = field(default_factory=list)     # (first source slot, first target slot, slots)
    host: HostStep | None = None
    graph_rows: int = 0


@dataclass
class PoolShape:
    """What a runner reads from its KV manager: the sizes of its pools. A
    mirroring rank, which has no manager, builds its runner on this."""

    layout: str
    block_size: int = 16
    num_blocks: int = 0
    num_cpu_blocks: int = 0
    total_tokens: int = 0
    on_fork: Callable | None = None       # the manager's fork hook (unused here)

    @classmethod
    def of(cls, kv) -> "PoolShape":
        return cls(kv.layout, getattr(kv, "block_size", 16), getattr(kv, "num_blocks", 0),
                   getattr(kv, "num_cpu_blocks", 0), kv.total_tokens)


class DecodeGraph:
    """A decode step captured for ``batch`` rows over static input tensors.
    On a CPU (tests) there is nothing to capture and ``replay`` runs the same
    step on the same static tensors."""

    def __init__(self, model: Transformer, cache, inputs: StepInputs, pool=None) -> None:
        self.inputs = inputs
        self._run = lambda: model.step(inputs, cache)[1]
        self.graph = None
        if inputs.token_ids.is_cuda:
            self._run()                            # warm up: compile and autotune outside capture
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.tokens = self._run()
        else:
            self.tokens = None

    def replay(self) -> torch.Tensor:
        if self.graph is None:
            self.tokens = self._run()
        else:
            self.graph.replay()
        return self.tokens


class ModelRunner:
    """Runs the policy's batches on a real model over the manager's memory.
    ``swap``: allocate the pinned CPU pool for swap preemption. ``tensor``
    and ``rank``: run rank ``rank`` of a ``tensor``-way tensor-parallel model
    (``weights`` its shard) in the current process group. ``mirror(method,
    *args)`` is called before each ``execute`` and ``warm_up`` this runner
    performs, with the same arguments (rank 0 broadcasts them)."""

    def __init__(self, model: ModelSpec, weights: Weights, kv, *, device="cuda", backend="triton",
                 dtype=torch.bfloat16, max_batch_size: int = 256, use_graphs: bool = True,
                 swap: bool = False, seed: int = 0, warm_up_steps: int = 32, tensor: int = 1, rank: int = 0,
                 mirror: Callable[..., None] | None = None) -> None:
        self.geom, self.kv, self.device = model, kv, torch.device(device)
        self.layout = kv.layout
        self.block_size = getattr(kv, "block_size", 16)
        self.width = table_width(model, self.block_size)
        if tensor > 1:
            from kernels.distributed.tp import TensorParallelTransformer

            self.model = TensorParallelTransformer(model, weights, rank, tensor, backend)
        else:
            self.model = Transformer(model, weights, backend)
        self.tensor = tensor
        self.mirror = mirror or (lambda method, *args: None)
        held = shard(model, tensor)                  # the KV heads this rank's cache holds
        self.seed = seed
        self.warm_up_steps = warm_up_steps
        self._tokens: dict[int, list[int]] = {}      # KV sequence -> its token ids
        self._inherit: dict[int, int] = {}           # forked sequence -> parent, until it first runs
        self._content: dict[int, list[int]] = {}     # token ids of each content id, fixed at first use
        if self.layout == "paged":
            self.cache = PagedKVCache(held, kv.num_blocks + 1, block_size=self.block_size, dtype=dtype,
                                      device=device, init="zeros")
            self.scratch = kv.num_blocks
            self.cpu_pool = self._pinned((kv.num_cpu_blocks, *self.cache.kv.shape[:2],
                                          *self.cache.kv.shape[3:]), dtype) if swap and kv.num_cpu_blocks else None
        else:
            # padding rows read from a page-aligned scratch start (a prefill over
            # cached context reads pages), one model context long
            self.scratch = -(-kv.total_tokens // self.block_size) * self.block_size
            self.cache = ContiguousKVCache(held, self.scratch + model.max_context_tokens,
                                           block_size=self.block_size, dtype=dtype, device=device,
                                           init="zeros")
            self.cpu_pool = None
        self.graph_sizes = graph_batch_sizes(max_batch_size) if use_graphs else ()
        self.graphs: dict[int, DecodeGraph] = {}
        if self.graph_sizes:
            self._capture_graphs()
        if self.layout == "paged":
            kv.on_fork = self._forked

    # ---- setup ---------------------------------------------------------------
    def _pinned(self, shape, dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, pin_memory=self.device.type == "cuda")

    def _capture_graphs(self) -> None:
        """Static inputs at the largest size, each bucket a view of them;
        captured largest first so smaller graphs reuse the memory pool."""
        top = self.graph_sizes[-1]
        pad = self._decode_padding(top)
        static = pad.to_device(self.device)
        pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        for b in reversed(self.graph_sizes):
            inputs = _rows_view(static, b)
            self.graphs[b] = DecodeGraph(self.model, self.cache, inputs, pool)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _decode_padding(self, rows: int) -> HostStep:
        """``rows`` padding decode rows: read the scratch location, write nothing."""
        n = np.ones(rows, np.int64)
        return host_step(Rows(0, n, np.zeros(rows, np.int64), n.copy(), np.zeros(rows, np.int64), [None] * rows),
                         np.zeros(rows, np.int64), self.layout, block_size=self.block_size, width=self.width,
                         max_context_tokens=self.geom.max_context_tokens, scratch=self.scratch)

    def warm_up(self, num_steps: int | None = None, max_tokens: int = 2048) -> None:
        """Eager steps of assorted shapes on padding rows (nothing written),
        some prefilling over cached context, so that first-use costs -- kernel
        specialisations, GEMM heuristics, allocator growth -- are paid before
        serving starts, as a production engine does before it takes requests."""
        num_steps = self.warm_up_steps if num_steps is None else num_steps
        self.mirror("warm_up", num_steps, max_tokens)
        rng = np.random.default_rng(self.seed)
        top = max(8, min(max_tokens, self.geom.max_context_tokens))
        for i in range(num_steps):
            prompts = np.exp(rng.uniform(np.log(8), np.log(top), int(rng.integers(1, 4)))).astype(np.int64)
            decodes = 0 if i % 4 == 0 else int(rng.integers(1, 65))
            new = np.concatenate([prompts, np.ones(decodes, np.int64)])
            cached = np.zeros(len(new), np.int64)
            if i % 4 == 2:       # prefills over cached context (chunked prefill, prefix caching)
                cached[: len(prompts)] = rng.integers(1, top, len(prompts))
            rows = Rows(len(prompts), new, cached, new.copy(), cached.copy(), [None] * len(new))
            host = host_step(rows, np.zeros(int(new.sum()), np.int64), self.layout, block_size=self.block_size,
                             width=self.width, max_context_tokens=self.geom.max_context_tokens,
                             scratch=self.scratch)
            self.model.step(host.to_device(self.device), self.cache)
        for graph in self.graphs.values():
            graph.replay()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # ---- the step --------------------------------------------------------------
    def run(self, batch: Batch) -> StepTiming:
        """Run ``batch``: swap copies, then the step; append each sequence's
        sampled token to its token list."""
        timing = StepTiming()
        t0 = time.perf_counter()
        plan = StepPlan(tuple(batch.swap_out_blocks), tuple(batch.swap_in_blocks), tuple(batch.block_copies))
        self._copy(plan)                  # issued first: the copies overlap the host work below
        self._plan_inputs(batch, plan)
        self.mirror("execute", plan)
        launch = self._stage(plan)
        if launch is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            timing.prepare_s = time.perf_counter() - t0
            return timing
        t1 = time.perf_counter()
        tokens = launch()
        timing.graph_batch = plan.graph_rows
        t2 = time.perf_counter()
        sampled = tokens[: len(batch.requests)].cpu().numpy()
        t3 = time.perf_counter()
        num_p = batch.num_prefill_seqs
        for i, token in enumerate(sampled.tolist()):
            toks = self._tokens[batch.seq_id(i)]
            if i < num_p:
                req = batch.requests[i]
                target = req.prompt_tokens + req.generated_tokens     # what this (re-)prefill computes
                if batch.held_tokens[i] < target:
                    continue            # a prefill chunk before the last: no token yet
                del toks[target:]       # a restarted request's samples start again after the prompt
                for seq in req.seq_ids[1:]:     # its other sequences continue this first token
                    self._tokens.pop(seq, None)
                    self._inherit[seq] = req.request_id
            toks.append(token)
        timing.prepare_s, timing.launch_s, timing.wait_s = t1 - t0, t2 - t1, t3 - t2
        return timing

    def execute(self, plan: StepPlan) -> torch.Tensor | None:
        """A step's device work (what a mirroring rank runs): the sampled
        tokens on the device, or None when the step computes nothing."""
        self._copy(plan)
        launch = self._stage(plan)
        return None if launch is None else launch()

    def _plan_inputs(self, batch: Batch, plan: StepPlan) -> None:
        """The step's inputs into ``plan``: host arrays, slot copies, graph."""
        if batch.num_tokens == 0:
            return
        plan.host = host_step(self._rows(batch), self._token_ids(batch, plan.slot_copies), self.layout,
                              block_size=self.block_size, width=self.width,
                              max_context_tokens=self.geom.max_context_tokens, scratch=self.scratch)
        if not batch.prefill_new_tokens:
            size = bucket_for(self.graph_sizes, batch.num_decode_seqs)
            if size in self.graphs:
                _pad_to(plan.host, self._decode_padding(size))
                plan.graph_rows = size

    def _copy(self, plan: StepPlan) -> None:
        """Swap copies, GPU -> CPU first (their GPU blocks may be reused this
        very step), then CPU -> GPU, then copy-on-write within the pool."""
        if plan.swap_out:
            self._copy_blocks(plan.swap_out, out=True)
        if plan.swap_in:
            self._copy_blocks(plan.swap_in, out=False)
        if plan.block_copies:
            self._copy_within(plan.block_copies)

    def _stage(self, plan: StepPlan) -> Callable[[], torch.Tensor] | None:
        """Issue the plan's slot copies and put its inputs on the device;
        what then launches the step (None: nothing to compute)."""
        pool = self.cache.kv
        for src, dst, n in plan.slot_copies:
            pool[:, :, dst:dst + n] = pool[:, :, src:src + n]
        if plan.host is None:
            return None
        if plan.graph_rows:
            graph = self.graphs[plan.graph_rows]
            plan.host.copy_into(graph.inputs)
            return graph.replay
        inputs = plan.host.to_device(self.device)
        return lambda: self.model.step(inputs, self.cache)[1]

    def release(self, req) -> None:
        """Forget a finished request's tokens; with content ``segments``,
        keep its answer, which a later prompt may repeat (a conversation)."""
        for seq in req.seq_ids[1:]:
            self._tokens.pop(seq, None)
            self._inherit.pop(seq, None)
        segments = req.segments
        toks = self._tokens.pop(req.request_id, None)
        if segments and toks is not None:
            cid, length = segments[-1]
            self._content[cid] = toks[len(toks) - length:]   # what later prompts repeat from now on

    # ---- inputs ----------------------------------------------------------------
    def _where(self, seq: int):
        if self.layout == "paged":
            return np.asarray(self.kv.block_table(seq), dtype=np.int32)
        return self.kv.address_range(seq)[0]

    def _forked(self, parent: int, child: int) -> None:
        """The paged manager forked ``child`` from ``parent``: the child's
        tokens are the parent's -- as they are when the child first runs if
        the parent's prompt has not run yet (a sample forked at admission)."""
        src = self._tokens.get(parent)
        if src is None and self._inherit.get(parent) in self._tokens:   # a fork of a sample not run yet
            src = self._tokens[parent] = list(self._tokens[self._inherit.pop(parent)])
        self._tokens.pop(child, None)
        self._inherit.pop(child, None)
        if src is None:
            self._inherit[child] = parent
        else:
            self._tokens[child] = list(src)

    def _seq_tokens(self, batch: Batch, i: int, slot_copies: list) -> list[int]:
        """The token list of row ``i``'s sequence, started from its parent's
        when the row is the sequence's first (see ``_forked``); a contiguous
        sequence's first row adds the copy of its prompt's KV to ``slot_copies``."""
        seq = batch.seq_id(i)
        toks = self._tokens.get(seq)
        if toks is None:
            parent = self._inherit.pop(seq, batch.requests[i].request_id)
            toks = self._tokens[seq] = list(self._tokens[parent])
            if self.layout == "contiguous":       # a reservation of its own: the prompt's KV copied in
                j = i - batch.num_prefill_seqs
                n = batch.decode_context_tokens[j] - 1
                slot_copies.append((self.kv.address_range(parent)[0], self.kv.address_range(seq)[0], n))
        return toks

    def _rows(self, batch: Batch) -> Rows:
        """Rows of ``batch``: its requests first (prefills, then decodes, as
        the policies order them), the rest padding."""
        reqs = batch.requests
        num_p = batch.num_prefill_seqs
        new = np.array([*batch.prefill_new_tokens, *([1] * batch.num_decode_seqs)], np.int64)
        cached = np.array([*batch.prefill_context_tokens, *(c - 1 for c in batch.decode_context_tokens)],
                          np.int64)
        skip = np.zeros(len(new), np.int64)
        write_pos = cached.copy()
        where: list = [None] * len(new)
        for i, (req, held) in enumerate(zip(reqs, batch.held_tokens)):
            if i < num_p:     # real tokens: what the request holds beyond the row's context
                skip[i] = new[i] - (held - cached[i])
            else:             # the new token sits at the request's own (unpadded) position
                write_pos[i] = held - 1
            where[i] = self._where(batch.seq_id(i))
        skip[len(reqs):] = new[len(reqs):]
        return Rows(num_p, new, cached, skip, write_pos, where)

    def _token_ids(self, batch: Batch, slot_copies: list) -> np.ndarray:
        ids: list[np.ndarray] = []
        num_p = batch.num_prefill_seqs
        for i, n in enumerate(batch.prefill_new_tokens):
            ids.append(np.zeros(n, np.int64))
            if i < len(batch.requests):
                req = batch.requests[i]
                toks = self._request_tokens(req)
                ctx = batch.prefill_context_tokens[i]
                real = toks[ctx:batch.held_tokens[i]]
                ids[-1][n - len(real):] = real
        dec = np.zeros(batch.num_decode_seqs, np.int64)
        for j in range(len(batch.requests) - num_p):
            dec[j] = self._seq_tokens(batch, num_p + j, slot_copies)[-1]
        ids.append(dec)
        return np.concatenate(ids)

    def _request_tokens(self, req) -> list[int]:
        """A request's prompt ids: random per request, or, when the request
        says its content (``segments``), the same ids wherever the same
        content id and offset appear, so a prefix cache hit reads the KV of
        the very tokens: a finished request's answer as it was generated,
        other content a hash of its id and offset, fixed at first use. A
        prompt that repeats an answer before it is done (arrivals are open
        loop) gets hashed ids for it; the prefix cache never shares those
        blocks or anything after them (``PagedKVManager._settled_blocks``)."""
        toks = self._tokens.get(req.request_id)
        if toks is None:
            if req.segments is None:
                rng = np.random.default_rng((self.seed, req.request_id))
                toks = rng.integers(0, self.geom.vocab_size, req.prompt_tokens).tolist()
            else:
                toks = []
                for cid, length in req.segments:
                    if len(toks) >= req.prompt_tokens:
                        break
                    take = min(length, req.prompt_tokens - len(toks))
                    known = self._content.setdefault(cid, [])
                    if len(known) < take:      # offsets never used yet: hashed
                        known += content_token_ids(cid, take, self.seed, self.geom.vocab_size)[len(known):]
                    toks += known[:take]
            self._tokens[req.request_id] = toks
        return toks

    # ---- copies ----------------------------------------------------------------

    def _copy_within(self, pairs) -> None:
        """Copy-on-write: whole GPU blocks, every layer, K and V."""
        pool = self.cache.kv                            # [layers, 2, blocks, bs, Hkv, D]
        src = torch.tensor([a for a, _ in pairs], device=self.device)
        dst = torch.tensor([b for _, b in pairs], device=self.device)
        pool.index_copy_(2, dst, pool.index_select(2, src))

    def _copy_blocks(self, pairs, out: bool) -> None:
        pool = self.cache.kv                            # [layers, 2, blocks, bs, Hkv, D]
        for start in range(0, len(pairs), SWAP_CHUNK_BLOCKS):
            chunk = pairs[start:start + SWAP_CHUNK_BLOCKS]
            src = [a for a, _ in chunk]
            dst = [b for _, b in chunk]
            if out:
                ids = torch.tensor(src, device=self.device)
                staged = pool.index_select(2, ids).permute(2, 0, 1, 3, 4, 5).contiguous()
                for i, cpu_block in enumerate(dst):     # ordered on the stream before any reuse
                    self.cpu_pool[cpu_block].copy_(staged[i], non_blocking=True)
            else:
                staged = torch.empty((len(chunk), *self.cpu_pool.shape[1:]), dtype=pool.dtype,
                                     device=self.device)
                for i, cpu_block in enumerate(src):
                    staged[i].copy_(self.cpu_pool[cpu_block], non_blocking=True)
                ids = torch.tensor(dst, device=self.device)
                pool.index_copy_(2, ids, staged.permute(1, 2, 0, 3, 4, 5))


def _rows_view(static: StepInputs, rows: int) -> StepInputs:
    """The first ``rows`` decode rows of a decode-only ``StepInputs``."""
    return StepInputs(
        token_ids=static.token_ids[:rows], positions=static.positions[:rows],
        slot_mapping=static.slot_mapping[:rows], last_token_index=static.last_token_index[:rows],
        cu_seqlens=static.cu_seqlens, prefill_context_lens=static.prefill_context_lens,
        decode_context_lens=static.decode_context_lens[:rows],
        prefill_block_tables=None,
        decode_block_tables=None if static.decode_block_tables is None else static.decode_block_tables[:rows],
        decode_starts=None if static.decode_starts is None else static.decode_starts[:rows],
        num_prefill_tokens=0, max_prefill_tokens=0, num_decode_seqs=rows,
        max_context_tokens=static.max_context_tokens)


def _pad_to(host: HostStep, padding: HostStep) -> None:
    """Extend a decode-only ``host`` step with ``padding``'s trailing rows."""
    n = len(host.decode_context_lens)
    for name in ("token_ids", "positions", "slot_mapping", "decode_context_lens", "decode_block_tables",
                 "decode_starts"):
        value = getattr(host, name)
        if value is not None:
            setattr(host, name, np.concatenate([value, getattr(padding, name)[n:]]))
    host.last_token_index = padding.last_token_index.copy()


def content_token_ids(content_id: int, length: int, seed: int, vocab_size: int) -> list[int]:
    """Token ids at offsets ``0 .. length - 1`` of a content segment: a hash
    of (seed, content id, offset), so any prefix of a segment is the same
    wherever it appears."""
    offsets = np.arange(length, dtype=np.uint64)
    x = (np.uint64((seed * 0x9E3779B97F4A7C15 + content_id * 0xBF58476D1CE4E5B9) % 2**64)
         + offsets * np.uint64(0x94D049BB133111EB))
    x ^= x >> np.uint64(31)
    x *= np.uint64(0xD6E8FEB86659FD93)
    x ^= x >> np.uint64(32)
    return (x % np.uint64(vocab_size)).astype(np.int64).tolist()
