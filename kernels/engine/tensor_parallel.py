"""Tensor-parallel serving: one process per GPU; rank 0 runs the engine,
ranks ``1 .. T-1`` mirror its device work on their shards.

Rank 0 is the process that runs ``pagesim serve``: it holds the policy, the
KV manager, the timeline and a ``ModelRunner`` of rank 0's shard (weights
and KV heads), exactly as a single-GPU run does. The other ranks, spawned by
``serving_group`` (``kernels.distributed.group.lead_group``), hold no
scheduler and no KV manager, only a runner of their own shard built from
the same ``RunnerSpec``, and replay what rank 0's runner tells them:

    ("setup", RunnerSpec)         build the runner: allocate the cache, capture the graphs
    ("warm_up", steps, tokens)    the runner's warm-up (its steps run collectives)
    ("execute", StepPlan)         one step: swap and block copies, slot copies, inputs, the step
    ("stop",)                     return

Every rank thus issues the same kernels and the same collectives in the same
order: the model's all-reduces and its all-gather line up, and every rank's
KV shard holds the same sequences as rank 0's. All ranks end with the same
logits; only rank 0 reads the sampled tokens back.

Messages go by ``broadcast_object_list`` over a separate gloo group, on the
CPU: a step's plan is a few host arrays (a decode step's block tables are
the largest part, rows x a model context of block ids), pickled once on rank
0; on the CPU group the broadcast adds no device synchronisation and no
copy through GPU memory, which a broadcast over the NCCL group would, and
it needs no fixed tensor layout, so a new kind of step input travels
without a protocol change. Its timeout is long: a worker waits in it while
rank 0 sleeps until the next arrival.

NVLink multicast is off in every process (``MULTICAST_OFF``).
"""
from __future__ import annotations

import datetime
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kernels.distributed.group import lead_group
from kernels.distributed.tp import random_shard_weights
from kernels.engine.runner import ModelRunner, PoolShape
from sim.presets import ModelSpec

IDLE_TIMEOUT = datetime.timedelta(days=7)      # a worker may wait this long for rank 0's next message


@dataclass(frozen=True)
class RunnerSpec:
    """What builds a rank's ``ModelRunner``: the same on every rank but for
    the rank itself (rank 0 sends it to the workers once)."""

    model: ModelSpec
    pool: PoolShape
    tensor: int = 1
    seed: int = 0
    dtype: str = "bfloat16"
    backend: str = "triton"
    max_batch_size: int = 256
    use_graphs: bool = True
    swap: bool = False
    warm_up_steps: int = 32

    def weights(self, rank: int, device: str):
        """Rank ``rank``'s shard of the model's random weights (seeded by the config)."""
        return random_shard_weights(self.model, rank, self.tensor, dtype=getattr(torch, self.dtype),
                                    device=device, seed=self.seed)

    def runner(self, rank: int, device: str, weights, kv=None, mirror=None) -> ModelRunner:
        return ModelRunner(self.model, weights, self.pool if kv is None else kv, device=device,
                           backend=self.backend, dtype=getattr(torch, self.dtype),
                           max_batch_size=self.max_batch_size, use_graphs=self.use_graphs, swap=self.swap,
                           seed=self.seed, warm_up_steps=self.warm_up_steps, tensor=self.tensor, rank=rank,
                           mirror=mirror)


class Channel:
    """Rank 0 -> every other rank: one message a call, in order."""

    def __init__(self, group) -> None:
        self.group = group

    def send(self, method: str, *args) -> None:
        dist.broadcast_object_list([(method, args)], src=0, group=self.group)

    def receive(self) -> tuple[str, tuple]:
        message = [None]
        dist.broadcast_object_list(message, src=0, group=self.group)
        return message[0]


def _control_group() -> Channel:
    """The gloo group the messages travel on (every rank creates it, in the same order)."""
    return Channel(dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT))


@contextmanager
def serving_group(tensor: int, cuda: bool):
    """This process as rank 0 of ``tensor`` serving ranks: yields (device,
    channel); the workers mirror what is sent on the channel. On exit the
    workers are told to stop and are waited for (a worker that failed is
    reported by the wait, so a stop it can no longer receive is not)."""
    threads = torch.get_num_threads()
    with lead_group(tensor, mirror_rank, cuda=cuda) as device:
        channel = _control_group()
        if not cuda:
            torch.set_num_threads(1)     # the CPU ranks share the cores: more threads wait on each other
        try:
            yield device, channel
        finally:
            torch.set_num_threads(threads)
            try:
                channel.send("stop")
            except RuntimeError:
                pass


def mirror_rank(rank: int, world: int, device: str) -> None:
    """A worker: build the runner rank 0 describes, then replay its calls
    until told to stop. Built outside inference mode and run inside it, as
    rank 0's runner is."""
    channel = _control_group()
    if device == "cpu":
        torch.set_num_threads(1)         # as rank 0 does on the CPU
    runner = None
    while True:
        method, args = channel.receive()
        if method == "stop":
            return
        if method == "setup":
            spec: RunnerSpec = args[0]
            runner = spec.runner(rank, device, spec.weights(rank, device))
        else:
            with torch.inference_mode():
                getattr(runner, method)(*args)
