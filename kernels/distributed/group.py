"""Running one function on every rank of a fresh process group.

``run_on_group(world, fn, *args)`` starts ``world`` processes (spawned),
one per GPU with NCCL where the machine has that many GPUs, else gloo on
the CPU (the tests), with NVLink multicast off in every one; each calls
``fn(rank, world, device, *args)``, and rank 0's result (JSON-serialisable)
comes back. The collective timing (``comm.py``) and the whole-step timing
(``tp_steps.py``) both run this way.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _worker(rank: int, world: int, init_file: str, out_file: str, fn, args: tuple) -> None:
    os.environ.update(MULTICAST_OFF)
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world)
    try:
        result = fn(rank, world, f"cuda:{rank}" if cuda else "cpu", *args)
        if rank == 0:
            Path(out_file).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_on_group(world: int, fn, *args):
    """Rank 0's ``fn(rank, world, device, *args)`` over a fresh group of ``world``."""
    import torch.multiprocessing as mp

    os.environ.update(MULTICAST_OFF)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(world, str(Path(tmp) / "init"), str(out), fn, args),
                           nprocs=world, join=True, start_method="spawn")
        return json.loads(out.read_text())

