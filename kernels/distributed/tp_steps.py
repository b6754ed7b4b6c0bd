"""Timing whole tensor-parallel steps across GPUs, into ``tp_steps.csv``.

    python -m kernels.distributed.tp_steps --model llama-3-70b --tp 2[,4,8] --profiles kernels/profiles/h200
    python -m kernels.distributed.tp_steps --model llama-2-7b --tp 1 --profiles kernels/profiles/h200  # self-check

For each degree ``t`` the held-out steps of the shard profile
``<profiles>/<model>-tp<t>/steps.csv`` (the compositions whose single-GPU
shard time ``pagesim calibrate --check`` already compares) run as real
tensor-parallel steps (``kernels/distributed/tp.py``): one process per GPU
(NCCL; gloo and the reference kernels on the CPU, for tests), each rank with
random weights of its shard and a fresh cache holding the step's sequences
(the same placement and token ids on every rank). On GPUs each step is
captured, collectives included, in one CUDA graph per rank and replayed in
lock-step, like the single-GPU profile; if a capture fails the step is timed
eagerly with CUDA events and the row says so. A step takes as long as its
slowest rank: the per-rank medians are reduced with ``max``. Rank 0 writes
``tp_steps.csv`` (``step_id, kind, layout, prefill_new_tokens,
prefill_context_tokens, decode_context_tokens, tensor, measured_s, timing``)
and ``tp_steps_provenance.json`` into the shard profile. ``pagesim calibrate
--check`` then reports the whole-step error of the shard profile plus
communication, measured (``comm.csv``) and analytic. NVLink multicast stays
off in every process this starts.

Degree 1 is the harness's self-check on one GPU: the whole model in a
group of one (its collectives still NCCL calls, captured in the graph),
over the held-out steps of the single-GPU profile ``<model>/``, whose
``steps.csv`` times the same steps without any of this machinery.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kernels.distributed.comm import provenance
from kernels.distributed.group import run_on_group
from kernels.timing import elapsed_s

COLUMNS = ("step_id", "kind", "layout", "prefill_new_tokens", "prefill_context_tokens",
           "decode_context_tokens", "tensor", "measured_s", "timing")


def heldout_steps(steps_csv: Path) -> list[dict]:
    """The held-out rows of a profile's ``steps.csv`` (what the check compares)."""
    from kernels.calibration.cli import read_heldout_steps

    cols = ["step_id", "kind", "layout", "prefill_new_tokens", "prefill_context_tokens", "decode_context_tokens"]
    return read_heldout_steps(steps_csv)[cols].to_dict("records")


def _timed(fn, reps: int, cuda: bool) -> tuple[float, str]:
    """Median seconds of ``fn`` on this rank (all ranks call in lock-step)."""
    for _ in range(2):
        fn()                                     # compile, autotune, allocate, set up communicators
    if cuda:
        torch.cuda.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            run, timing = graph.replay, "graph"
        except RuntimeError:                     # a collective that cannot be captured: time it eagerly
            torch.cuda.synchronize()
            run, timing = fn, "eager"
    else:
        run, timing = fn, "eager (host clock, CPU)"
    samples = []
    for _ in range(reps):
        dist.barrier()                           # every rank starts the step together
        samples.append(elapsed_s(run, cuda))
    return float(np.median(samples)), timing


def time_steps(geom, rank: int, world: int, steps: list[dict], reps: int, seed: int) -> list[dict]:
    """This rank's part of every step; returns rows (``measured_s``: the slowest rank's median)."""
    from kernels.calibration.inputs import Composition, prepare_step
    from kernels.calibration.model import random_token_ids, random_weights
    from kernels.calibration.profile import fresh_cache
    from kernels.distributed.tp import TensorParallelTransformer
    from sim.parallel import shard

    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    device = f"cuda:{rank}" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    part = shard(geom, world)
    weights = random_weights(part, dtype=dtype, device=device, seed=seed + rank)
    model = TensorParallelTransformer(geom, weights, rank, world, "triton" if cuda else "reference")
    rows = []
    with torch.inference_mode():
        for step in steps:
            comp = Composition(*(tuple(json.loads(step[k])) for k in
                                 ("prefill_new_tokens", "prefill_context_tokens", "decode_context_tokens")))
            rng = np.random.default_rng(seed + int(step["step_id"]))      # the same on every rank
            cache, where = fresh_cache(part, step["layout"], comp, rng, 1, device=device, dtype=dtype)
            inp = prepare_step(comp, cache, where, random_token_ids(geom, comp.num_tokens, rng), device, part)
            seconds, timing = _timed(lambda inp=inp, cache=cache: model.step(inp, cache), reps, cuda)
            slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            rows.append({**step, "tensor": world, "measured_s": float(slowest.item()), "timing": timing})
            del cache, inp
    return rows


def measure(geom, world: int, steps: list[dict], reps: int = 10, seed: int = 0) -> list[dict]:
    """Every step at degree ``world``, timed by a fresh group of processes."""
    return run_on_group(world, _time_on_rank, geom, steps, reps, seed)


def _time_on_rank(rank: int, world: int, device: str, geom, steps: list[dict], reps: int, seed: int) -> list[dict]:
    return time_steps(geom, rank, world, steps, reps, seed)


def write_steps(rows: list[dict], folder: Path) -> Path:
    """``tp_steps.csv`` and its provenance into a shard profile, atomically."""
    import pandas as pd

    from experiments.atomic import atomic_path

    path = folder / "tp_steps.csv"
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(tmp, index=False)
    with atomic_path(folder / "tp_steps_provenance.json") as tmp:
        tmp.write_text(json.dumps(provenance(), indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from kernels.calibration.cli import parse_tp
    from sim.presets import MODELS

    p = argparse.ArgumentParser(prog="python -m kernels.distributed.tp_steps",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model preset whose shard profiles <model>-tp<T> exist")
    p.add_argument("--tp", default="2", help="degrees, comma-separated (each needs that many GPUs)")
    p.add_argument("--profiles", type=Path, required=True, help="hardware folder, e.g. kernels/profiles/h200")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    try:
        if args.model not in MODELS:
            raise ValueError(f"--model {args.model}: not a preset; allowed: {', '.join(MODELS)}")
        degrees = parse_tp(args.tp)
        have = torch.cuda.device_count()
        if torch.cuda.is_available() and max(degrees) > have:
            raise ValueError(f"--tp: degree {max(degrees)} needs {max(degrees)} GPUs, this machine has {have}")
        plans = [(t, args.profiles / (args.model if t == 1 else f"{args.model}-tp{t}")) for t in degrees]
        plans = [(t, folder, heldout_steps(folder / "steps.csv")) for t, folder in plans]
    except ValueError as exc:
        print(f"tp_steps: error: {exc}", file=sys.stderr)
        return 2
    for t, folder, steps in plans:
        rows = measure(MODELS[args.model], t, steps, reps=args.reps)
        print(f"wrote {write_steps(rows, folder)} ({len(rows)} steps, tensor {t})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
