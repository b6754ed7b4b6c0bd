"""Running functions on the ranks of a fresh process group.

``run_on_group(world, fn, *args)`` starts ``world`` processes (spawned),
one per GPU with NCCL where the machine has that many GPUs, else gloo on
the CPU (the tests), with NVLink multicast off in every one; each calls
``fn(rank, world, device, *args)``, and rank 0's result (JSON-serialisable)
comes back. The collective timing (``comm.py``) and the whole-step timing
(``tp_steps.py``) both run this way.

``lead_group(world, fn, *args, cuda=...)`` makes the calling process rank 0
of a fresh group and spawns ranks ``1 .. world - 1``, each calling
``fn(rank, world, device, *args)``; rank 0 keeps its own state (the
tensor-parallel engine, ``kernels/engine/tensor_parallel.py``, runs its
scheduler there and the other ranks mirror it).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
JOIN_TIMEOUT_S = 60.0        # how long rank 0 waits for a worker to exit before ending it
WATCH_S = 0.2                # how often rank 0 looks at the spawned ranks while it joins


def _join(rank: int, world: int, init_file: str, cuda: bool) -> str:
    """Join the group as ``rank`` (NCCL on GPU ``rank``, else gloo), with
    NVLink multicast off in this process; this rank's device."""
    os.environ.update(MULTICAST_OFF)
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world)
    return f"cuda:{rank}" if cuda else "cpu"


def _rank(index: int, first: int, world: int, init_file: str, cuda: bool, out_file: str | None, fn,
          args: tuple) -> None:
    """Spawned rank ``first + index``: join, ``fn``, leave; rank 0 writes
    its result (JSON) to ``out_file``."""
    rank = first + index
    device = _join(rank, world, init_file, cuda)
    try:
        result = fn(rank, world, device, *args)
        if rank == 0 and out_file is not None:
            Path(out_file).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_on_group(world: int, fn, *args):
    """Rank 0's ``fn(rank, world, device, *args)`` over a fresh group of ``world``."""
    import torch.multiprocessing as mp

    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_rank, args=(0, world, str(Path(tmp) / "init"), cuda, str(out), fn, args),
                           nprocs=world, join=True, start_method="spawn")
        return json.loads(out.read_text())


@contextmanager
def lead_group(world: int, fn, *args, cuda: bool):
    """This process as rank 0 of a fresh group of ``world`` processes (NCCL
    on GPUs ``0 .. world - 1`` with ``cuda``, else gloo); ranks ``1 ..
    world - 1`` are spawned and call ``fn(rank, world, device, *args)``.
    Yields rank 0's device. On exit the group is destroyed and the workers
    are waited for -- ``fn`` must return once rank 0 is done with it -- and
    any still running after ``JOIN_TIMEOUT_S`` is ended (a worker left
    inside a collective rank 0 never joined, after an error)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init = str(Path(tmp) / "init")
        workers = mp.start_processes(_rank, args=(1, world, init, cuda, None, fn, args), nprocs=world - 1,
                                     join=False, start_method="spawn")
        try:
            yield _join_watching(workers, world, init, cuda)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            _wait_for(workers)


def _join_watching(workers, world: int, init_file: str, cuda: bool) -> str:
    """Join as rank 0 while watching the spawned ranks: one that fails before
    it joins (a CUDA or import error on its GPU) ends the wait with its error
    at once, instead of leaving rank 0 in the rendezvous until the group's
    timeout (half an hour)."""
    joined: dict = {}

    def join() -> None:
        try:
            joined["device"] = _join(0, world, init_file, cuda)
        except BaseException as exc:        # noqa: BLE001 -- handed to the caller below
            joined["error"] = exc

    thread = threading.Thread(target=join, name="rank-0-join", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(WATCH_S)
        failed = [(i + 1, p.exitcode) for i, p in enumerate(workers.processes)
                  if p.exitcode not in (None, 0)]
        if failed and thread.is_alive():
            rank, code = failed[0]
            try:
                workers.join(0)              # its own error, where the rank could report one
                detail = f"exit code {code}"
            except Exception as exc:         # noqa: BLE001 -- torch's report of that rank
                detail = str(exc).strip().splitlines()[-1]
            raise RuntimeError(f"rank {rank} of the process group failed before joining it ({detail}); "
                               f"its output is above")
    if "error" in joined:
        raise joined["error"]
    return joined["device"]


def _wait_for(workers) -> None:
    """Join the spawned ranks (raising if one failed); end any still running
    after ``JOIN_TIMEOUT_S``."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not workers.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in workers.processes:
                if process.is_alive():
                    process.kill()
            return
