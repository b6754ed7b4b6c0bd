"""Tensor-parallel serving on the CPU: two ranks over a gloo group (rank 0
this process, rank 1 spawned), each running its shard with the reference
kernels, serve exactly what one rank serves -- the same batch at every step,
the same greedy tokens in every sequence, the same timeline -- through swap
and recompute preemption, parallel sampling's copy-on-write blocks and a
contiguous sample's copied prompt; and the simulator replays the run.
Arrivals are all at once, so the schedule does not depend on step times and
the two runs can be compared step by step."""
from __future__ import annotations

import dataclasses
import functools

import pytest

from experiments.config import validate
from experiments.fidelity.compare import RealRun, replay_check
from experiments.serve import Device, serve_experiment
from kernels.engine.runner import ModelRunner
from kernels.engine.tensor_parallel import Channel
from sim.cost.replay import batch_shape

TINY = dict(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
            ffn_size=96, vocab_size=101, max_context_tokens=128, dtype="bf16")
CPU = Device("cpu", "reference", "float32", warm_up_steps=2)

CONFIGS = {
    "paged(swap)": dict(layout="paged", num_blocks=40, swap_space_gb=0.001),
    "paged(recompute,samples)": dict(layout="paged", num_blocks=48),
    "contiguous(samples)": dict(layout="contiguous", num_tokens=900),
}
TIMING = ("t_s", "step_s", "schedule_s", "prepare_s", "launch_s", "wait_s")


def _config(name: str, tensor: int):
    return validate(dict(
        name=name, seed=5, model=TINY, hardware="h200",
        workload=dict(num_requests=24, arrival=dict(process="all_at_once"),
                      lengths=dict(prompt=dict(dist="uniform", low=4, high=40),
                                   output=dict(dist="uniform", low=2, high=24)),
                      sampling=dict(n=3) if "samples" in name else None),
        engine=dict(parallel=dict(tensor=tensor),
                    batching=dict(policy="continuous", max_batch_size=16, max_batch_tokens=256,
                                  preemption="swap" if "swap" in name else "recompute"),
                    memory=dict(block_size=4, **CONFIGS[name]))))


def _serve(name: str, tensor: int):
    """The run, each step's batch shape and block copies, and every
    request's tokens (``{request id: {seq id: ids}}``), seen by rank 0."""
    shapes, copies, tokens = [], [], {}
    original_run, original_release = ModelRunner.run, ModelRunner.release

    def run(self, batch):
        shapes.append(batch_shape(batch))
        copies.extend(batch.block_copies)
        return original_run(self, batch)

    def release(self, req):
        tokens[req.request_id] = {seq: list(self._tokens[seq]) for seq in req.seq_ids}
        original_release(self, req)

    ModelRunner.run, ModelRunner.release = run, release
    try:
        out = serve_experiment(_config(name, tensor), CPU)
    finally:
        ModelRunner.run, ModelRunner.release = original_run, original_release
    return out, shapes, copies, tokens


@functools.cache
def _served(name: str, tensor: int):
    return _serve(name, tensor)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_serve_exactly_what_one_serves(name):
    one, shapes1, _, tokens1 = _served(name, 1)
    two, shapes2, copies2, tokens2 = _served(name, 2)
    assert shapes2 == shapes1
    assert tokens2 == tokens1
    assert (two.requests["status"] == "finished").all()
    for column in one.timeline.columns:
        if column not in TIMING:
            assert two.timeline[column].tolist() == one.timeline[column].tolist(), column
    for column in ("request_id", "output_tokens", "preemptions"):
        assert two.requests[column].tolist() == one.requests[column].tolist()
    check = replay_check(RealRun(None, name, two.config, two.summary, two.requests, two.timeline))
    assert check["identical"], check["detail"]
    assert two.summary["engine"]["tensor"] == 2 and two.summary["parallel"]["tensor"] == 2
    assert two.summary["engine"]["collectives"] == "gloo"
    # the run exercises what its name says
    if name != "contiguous(samples)":
        assert two.summary["preemptions"] > 0
    if "swap" in name:
        assert any(s[3] or s[4] for s in shapes2), "no step swapped"
    if name == "paged(recompute,samples)":
        assert copies2, "no copy-on-write block copy"
    assert (two.timeline["graph_batch"] > 0).any()


@pytest.mark.parametrize("name,skipped", [("paged(swap)", dict(swap_in=(), swap_out=())),
                                          ("paged(recompute,samples)", dict(block_copies=())),
                                          ("contiguous(samples)", dict(slot_copies=[]))],
                         ids=["swaps", "block-copies", "slot-copies"])
def test_a_rank_that_skips_copies_is_caught(monkeypatch, name, skipped):
    """Rank 1 not told of a step's copies (rank 0 still makes them) holds
    stale KV for the sequences they move: tokens differ from one rank's."""
    send = Channel.send

    def without_copies(self, method, *args):
        if method == "execute":
            args = (dataclasses.replace(args[0], **skipped),)
        send(self, method, *args)

    monkeypatch.setattr(Channel, "send", without_copies)
    _, shapes, _, tokens = _serve(name, 2)
    _, shapes1, _, tokens1 = _served(name, 1)
    assert shapes == shapes1          # the schedule is rank 0's alone
    assert tokens != tokens1
