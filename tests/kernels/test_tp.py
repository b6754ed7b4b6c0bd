"""The tensor-parallel step (kernels/distributed/tp.py) on the CPU: ranks
over a gloo process group, each running its shard with the reference
kernels, give the full model's logits and tokens -- prefill, chunked prefill
on cached context and decode, paged and contiguous."""

import json
from pathlib import Path

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


def test_a_shard_drawn_layer_by_layer_is_the_whole_models_shard():
    """What a serving rank draws on its own GPU is its cut of the whole model's weights."""
    from kernels.distributed.tp import random_shard_weights

    for geom, tensor in ((TINY_LLAMA, 2), (TINY_OPT, 2), (TINY_LLAMA, 4)):
        full = random_weights(geom, dtype=torch.float32, seed=7)
        for rank in range(tensor):
            a = shard_weights(full, geom, rank, tensor)
            b = random_shard_weights(geom, rank, tensor, dtype=torch.float32, seed=7)
            assert torch.equal(a.embed, b.embed) and torch.equal(a.lm_head, b.lm_head)
            for la, lb in zip(a.layers, b.layers, strict=True):
                for part in ("qkv", "out", "up", "down"):
                    for x, y in zip(getattr(la, part), getattr(lb, part)):
                        assert (x is None and y is None) or torch.equal(x, y), (geom.name, rank, part)


def test_collectives_are_timed_per_op_and_size_on_a_cpu_group():
    from kernels.distributed.comm import measure

    rows = measure([2], sizes=[1024, 65536], reps=3)
    assert [(r["op"], r["world_size"], r["bytes"]) for r in rows] == [
        ("all_reduce", 2, 1024), ("all_reduce", 2, 65536), ("all_gather", 2, 1024), ("all_gather", 2, 65536),
        ("send_recv", 2, 1024), ("send_recv", 2, 65536)]
    assert all(0 < r["seconds"] < 10 for r in rows)


STEPS = [{"step_id": i, "kind": kind, "layout": layout, "prefill_new_tokens": json.dumps(new),
          "prefill_context_tokens": json.dumps(ctx), "decode_context_tokens": json.dumps(dec)}
         for i, (kind, layout, new, ctx, dec) in enumerate([
             ("prefill", "paged", [7, 5], [0, 0], []), ("decode", "paged", [], [], [9, 20, 3]),
             ("mixed", "contiguous", [6], [4], [11])])]


def test_whole_tp_steps_are_timed_across_a_cpu_group(tmp_path):
    """The harness runs every held-out composition as a real TP step on a
    gloo group and writes tp_steps.csv with the slowest rank's time."""
    import pandas as pd

    from kernels.distributed.tp_steps import COLUMNS, measure, write_steps

    rows = measure(TINY_LLAMA, 2, STEPS, reps=2)
    assert [r["step_id"] for r in rows] == [0, 1, 2]
    assert all(r["tensor"] == 2 and r["measured_s"] > 0 and r["timing"].startswith("eager") for r in rows)
    written = pd.read_csv(write_steps(rows, tmp_path))
    assert list(written.columns) == list(COLUMNS) and len(written) == 3
    assert (tmp_path / "tp_steps_provenance.json").is_file()


def test_calibrate_check_reports_whole_tp_step_errors(tmp_path):
    """With tp_steps.csv in a shard profile, the check prices each step as the
    shard's profiled GPU time plus communication and reports the error, with
    analytic and with measured (comm.csv) communication."""
    import shutil

    import pandas as pd

    from kernels.calibration.cli import check, tp_step_errors
    from sim.batch import Batch
    from sim.cost.profiled import ProfiledCostModel
    from sim.parallel import CommModel, Parallelism, ParallelCostModel
    from sim.presets import MODELS, resolve_hardware

    src = Path(__file__).resolve().parents[2] / "kernels" / "profiles" / "h200" / "llama-3-70b-tp2"
    folder = tmp_path / "h200" / "llama-3-70b-tp2"
    shutil.copytree(src, folder)
    h200 = resolve_hardware("h200")
    inner = ProfiledCostModel.from_dir(folder, shard(MODELS["llama-3-70b"], 2), h200, engine=False)
    analytic = ParallelCostModel(inner, CommModel(MODELS["llama-3-70b"], h200, Parallelism(tensor=2)))
    rows = []
    for step in STEPS:
        batch = Batch(tuple(json.loads(step["prefill_new_tokens"])), tuple(json.loads(step["prefill_context_tokens"])),
                      tuple(json.loads(step["decode_context_tokens"])), kv_layout=step["layout"])
        rows.append({**step, "tensor": 2, "measured_s": 1.25 * analytic.step_time(batch), "timing": "graph"})
    pd.DataFrame(rows).to_csv(folder / "tp_steps.csv", index=False)
    errors = tp_step_errors(folder, "h200", "llama-3-70b-tp2", 2)
    np.testing.assert_allclose(errors["analytic"], 0.2)            # |p - 1.25 p| / 1.25 p
    assert errors["measured"].isna().all()                         # no comm.csv yet
    report = check(tmp_path, "h200", ["llama-3-70b-tp2"])
    assert "no comm.csv" in report and "tp2 whole steps MISSES the target: mean 20.0%, p95 20.0%." in report
    # measured collectives slower than the analytic model: the measured column differs and is reported
    pd.DataFrame([{"op": op, "world_size": 2, "bytes": b, "seconds": 1e-3}
                  for op in ("all_reduce", "all_gather") for b in (1024, 1 << 26)]).to_csv(
        tmp_path / "h200" / "comm.csv", index=False)
    errors = tp_step_errors(folder, "h200", "llama-3-70b-tp2", 2)
    assert errors["measured"].notna().all() and not np.allclose(errors["measured"], errors["analytic"])
    assert "no comm.csv" not in check(tmp_path, "h200", ["llama-3-70b-tp2"])


def test_the_committed_harness_self_check_is_reported():
    """The harness ran on the lent H200 in a group of one GPU over the
    single-GPU profiles' held-out steps; the check reports how far its
    whole-step times are from the profile's own (a few percent)."""
    import re

    from kernels.calibration.cli import check

    root = Path(__file__).resolve().parents[2] / "kernels" / "profiles"
    report = check(root, "h200", ["llama-2-7b"])
    found = re.search(r"collectives in the captured graph\): ([0-9.]+)% mean, ([0-9.]+)% p95", report)
    assert found and float(found.group(1)) < 5 and float(found.group(2)) < 10
