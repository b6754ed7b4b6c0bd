"""Timing the collectives a tensor-parallel step runs, into ``comm.csv``.

    python -m kernels.distributed.comm --tp 2[,4,8] --out kernels/profiles/h200   # on a multi-GPU machine

For each degree ``t`` (one process per GPU, NCCL; gloo on the CPU, for
tests), every rank times ``all_reduce`` and ``all_gather`` of bf16 messages
over a log-spaced range of sizes (the sizes a step produces: rows x hidden x
2 bytes), and ranks 0 and 1 time ``send_recv``, the point-to-point hand-off
between pipeline stages (half a round trip), with warm-up calls first and
the median of repeated calls, each bracketed by CUDA events (host clocks on
the CPU). Rank 0 writes
``OUT/comm.csv`` (``op, world_size, bytes, seconds``; rows of other group
sizes already there are kept) and
``OUT/comm_provenance.json`` (GPU count and names, ``nvidia-smi topo -m``,
NCCL and torch versions). ``sim/parallel.py`` prices communication from this
table when it is present for the hardware and the degree, instead of its
analytic model. NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``) in every
process this starts.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kernels.distributed.group import run_on_group
from kernels.timing import elapsed_s

OPS = ("all_reduce", "all_gather", "send_recv")
SIZES = [2**k for k in range(10, 28, 2)]        # 1 KiB .. 64 MiB


def time_collectives(world: int, rank: int, device: str, sizes: list[int], reps: int = 20,
                     warmup: int = 5) -> list[dict]:
    """Median seconds of each op and message size on this rank."""
    rows = []
    cuda = device.startswith("cuda")
    for op in OPS:
        for size in sizes:
            x = torch.ones(max(1, size // 2), dtype=torch.bfloat16 if cuda else torch.float32, device=device)
            parts = [torch.empty_like(x) for _ in range(world)] if op == "all_gather" else None

            def call():
                if op == "all_reduce":
                    dist.all_reduce(x)
                elif op == "all_gather":
                    dist.all_gather(parts, x)
                elif rank == 0:          # a round trip between stages 0 and 1; halved below
                    dist.send(x, 1)
                    dist.recv(x, 1)
                elif rank == 1:
                    dist.recv(x, 0)
                    dist.send(x, 0)

            for _ in range(warmup):
                call()
            samples = [elapsed_s(call, cuda) for _ in range(reps)]
            seconds = float(np.median(samples)) / (2 if op == "send_recv" else 1)
            rows.append({"op": op, "world_size": world, "bytes": size, "seconds": seconds})
    return rows


def measure(degrees: list[int], sizes: list[int] = SIZES, reps: int = 20) -> list[dict]:
    """Rows of every degree, each timed by a fresh group of processes."""
    rows: list[dict] = []
    for world in degrees:
        rows += run_on_group(world, _time_on_rank, sizes, reps)
    return rows


def _time_on_rank(rank: int, world: int, device: str, sizes: list[int], reps: int) -> list[dict]:
    return time_collectives(world, rank, device, sizes, reps)


def provenance() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unavailable"

    cuda = torch.cuda.is_available()
    return {
        "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "topology": run(["nvidia-smi", "topo", "-m"]) if cuda else "no GPU (gloo on the CPU)",
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "torch": torch.__version__, "multicast": "off (NCCL_NVLS_ENABLE=0)",
        "timing": "median of repeated calls after warm-up, CUDA events (host clock on the CPU)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    from kernels.calibration.cli import parse_tp
    from experiments.atomic import atomic_path

    p = argparse.ArgumentParser(prog="python -m kernels.distributed.comm", description=__doc__.split("\n\n")[0])
    p.add_argument("--tp", default="2", help="degrees, comma-separated (each needs that many GPUs)")
    p.add_argument("--out", type=Path, required=True, help="folder for comm.csv (kernels/profiles/<hardware>)")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    try:
        degrees = [t for t in parse_tp(args.tp) if t > 1]
        if not degrees:
            raise ValueError("--tp: give degrees above 1")
        have = torch.cuda.device_count()
        if torch.cuda.is_available() and max(degrees) > have:
            raise ValueError(f"--tp: degree {max(degrees)} needs {max(degrees)} GPUs, this machine has {have}")
    except ValueError as exc:
        print(f"comm: error: {exc}", file=sys.stderr)
        return 2
    import pandas as pd

    rows = pd.DataFrame(measure(degrees, reps=args.reps))
    args.out.mkdir(parents=True, exist_ok=True)
    old = args.out / "comm.csv"
    if old.is_file():                 # keep the group sizes measured before
        kept = pd.read_csv(old)
        rows = pd.concat([kept[~kept["world_size"].isin(degrees)], rows], ignore_index=True)
    with atomic_path(old) as tmp:
        rows.to_csv(tmp, index=False)
    with atomic_path(args.out / "comm_provenance.json") as tmp:
        tmp.write_text(json.dumps(provenance(), indent=2) + "\n")
    print(f"wrote {args.out / 'comm.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
