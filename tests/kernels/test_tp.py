"""The tensor-parallel step (kernels/distributed/tp.py) on the CPU: ranks
over a gloo process group, each running its shard with the reference
kernels, give the full model's logits and tokens -- prefill, chunked prefill
on cached context and decode, paged and contiguous."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from kernels.calibration.cache import ContiguousKVCache, PagedKVCache  # noqa: E402
from kernels.calibration.model import Transformer, random_weights  # noqa: E402
from kernels.distributed.tp import TensorParallelTransformer, shard_weights  # noqa: E402
from sim.parallel import shard  # noqa: E402
from tests.kernels.test_model import BLOCK, PROMPTS, TINY_LLAMA, TINY_OPT, _two_steps  # noqa: E402


def _prompts(geom):
    gen = torch.Generator().manual_seed(0)
    return {s: torch.randint(0, geom.vocab_size, (n,), generator=gen) for s, n in PROMPTS.items()}


def _cache(geom, layout):
    if layout == "paged":
        return PagedKVCache(geom, num_blocks=12, block_size=BLOCK, dtype=torch.float32, seed=1)
    return ContiguousKVCache(geom, num_slots=40, block_size=BLOCK, dtype=torch.float32, seed=2)


def _rank(rank, tensor, geom, layout, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=tensor)
    try:
        full = random_weights(geom, dtype=torch.float32, seed=3)
        model = TensorParallelTransformer(geom, shard_weights(full, geom, rank, tensor), rank, tensor, "reference")
        with torch.inference_mode():
            result = _two_steps(model, _cache(shard(geom, tensor), layout), _prompts(geom),
                                np.random.default_rng(4))
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("geom,tensor,layout", [(TINY_LLAMA, 2, "paged"), (TINY_OPT, 2, "contiguous"),
                                                (TINY_LLAMA, 4, "paged")],
                         ids=["llama-tp2-paged", "opt-tp2-contiguous", "llama-tp4-replicated-kv"])
def test_ranks_together_compute_the_full_model(tmp_path, geom, tensor, layout):
    import torch.multiprocessing as mp

    out_file = tmp_path / "rank0.pt"
    mp.start_processes(_rank, args=(tensor, geom, layout, str(tmp_path / "init"), str(out_file)),
                       nprocs=tensor, join=True, start_method="spawn")
    logits1, next1, logits2, next2 = torch.load(out_file)
    model = Transformer(geom, random_weights(geom, dtype=torch.float32, seed=3), backend="reference")
    with torch.inference_mode():
        ref1, rnext1, ref2, rnext2 = _two_steps(model, _cache(geom, layout), _prompts(geom),
                                                np.random.default_rng(4))
    torch.testing.assert_close(logits1, ref1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits2, ref2, rtol=1e-4, atol=1e-4)
    assert next1.tolist() == rnext1.tolist() and next2.tolist() == rnext2.tolist()


def test_shards_hold_the_sharded_shapes():
    full = random_weights(TINY_LLAMA, dtype=torch.float32, seed=3)
    s = shard(TINY_LLAMA, 2)
    w = shard_weights(full, TINY_LLAMA, 1, 2)
    layer = w.layers[0]
    assert layer.qkv[0].shape == ((s.num_heads + 2 * s.num_kv_heads) * s.head_dim, TINY_LLAMA.hidden_size)
    assert layer.out[0].shape == (TINY_LLAMA.hidden_size, s.num_heads * s.head_dim)
    assert layer.up[0].shape == (2 * s.ffn_size, TINY_LLAMA.hidden_size)
    assert layer.down[0].shape == (TINY_LLAMA.hidden_size, s.ffn_size)
    assert w.embed.shape == (s.vocab_size, TINY_LLAMA.hidden_size) == w.lm_head.shape
    # the last rank's vocabulary rows past the model's are zero padding
    assert s.vocab_size * 2 > TINY_LLAMA.vocab_size and not w.embed[TINY_LLAMA.vocab_size - s.vocab_size:].any()


def test_collectives_are_timed_per_op_and_size_on_a_cpu_group():
    from kernels.distributed.comm import measure

    rows = measure([2], sizes=[1024, 65536], reps=3)
    assert [(r["op"], r["world_size"], r["bytes"]) for r in rows] == [
        ("all_reduce", 2, 1024), ("all_reduce", 2, 65536), ("all_gather", 2, 1024), ("all_gather", 2, 65536)]
    assert all(0 < r["seconds"] < 10 for r in rows)
