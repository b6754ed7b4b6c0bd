"""Tensor and pipeline parallelism: shards, KV capacity per GPU, communication, configs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.config import ConfigError, validate
from experiments.runner import build_replica_cost_model, run_experiment
from sim.batch import Batch
from sim.cost.base import decode_run_times_by_steps
from sim.cost.profiled import ProfiledCostModel
from sim.cost.roofline import RooflineCostModel
from sim.memory.capacity import kv_capacity_tokens
from sim.parallel import CommModel, Parallelism, ParallelCostModel, check_split, shard, tensor_degrees
from sim.presets import HARDWARE, MODELS, HardwareSpec
from tests.test_cost_profiled import TINY, write_profile

H200 = HARDWARE["h200"]
# shard(FULL, tensor=2) has TINY's geometry: TINY's synthetic profile prices it
FULL = dataclasses.replace(TINY, name="full", num_heads=8, num_kv_heads=8, ffn_size=256, vocab_size=200)


def test_llama_3_70b_shards_split_heads_mlp_and_vocabulary():
    m = MODELS["llama-3-70b"]
    s = shard(m, 8)
    assert (s.name, s.num_heads, s.num_kv_heads, s.ffn_size, s.vocab_size, s.num_layers, s.hidden_size) == \
        ("llama-3-70b-tp8", 8, 1, 3584, 16032, 80, 8192)
    # 16 ways: 4 query heads each, the 8 KV heads replicated so that every GPU keeps one
    assert (shard(m, 16).num_heads, shard(m, 16).num_kv_heads) == (4, 1)
    # a pipeline stage: its layers, one of the two vocabulary matrices
    p = shard(m, 2, 4)
    assert (p.name, p.num_layers, p.tied_embeddings) == ("llama-3-70b-tp2-pp4", 20, True)
    assert shard(m, 1, 1) is m
    assert tensor_degrees(m, 16) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("tensor,pipeline,field", [(3, 1, "tensor"), (5, 1, "tensor"), (1, 81, "pipeline")])
def test_splits_a_model_cannot_take_are_refused_naming_the_field(tensor, pipeline, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        check_split(MODELS["llama-3-70b"], tensor, pipeline)


def test_weights_divide_and_kv_capacity_per_gpu_is_exact_on_a_tiny_geometry():
    """tiny model, 2 layers, hidden 64, 8 heads of 16, MLP 256, vocabulary 200, fp16."""
    hw = HardwareSpec(name="toy", memory_bytes=10**6, peak_flops=1e12, mem_bandwidth_Bps=1e12)
    per_layer = lambda heads, kv, ffn: 64 * (heads * 16 + 2 * kv * 16) + heads * 16 * 64 + 3 * 64 * ffn  # noqa: E731
    # tensor 2: each GPU 4 heads, 4 KV heads, MLP 128, 100 vocabulary rows, both embeddings
    tp2 = shard(FULL, 2)
    weights = 2 * (2 * per_layer(4, 4, 128) + 2 * 100 * 64)
    assert tp2.weight_bytes == weights
    kv_per_token = 2 * 2 * 4 * 16 * 2
    assert kv_capacity_tokens(tp2, hw, 0.5) == (500_000 - weights) // kv_per_token
    # pipeline 2: one layer and one vocabulary matrix per GPU
    pp2 = shard(FULL, 1, 2)
    weights = 2 * (per_layer(8, 8, 256) + 200 * 64)
    assert pp2.weight_bytes == weights
    assert kv_capacity_tokens(pp2, hw, 0.5) == (500_000 - weights) // (2 * 1 * 8 * 16 * 2)


def test_communication_is_two_all_reduces_per_layer_plus_embedding_and_logit_gather():
    model, par = MODELS["llama-3-70b"], Parallelism(4, 1)
    comm = CommModel(model, H200, par)
    bus = 450e9 * 0.82
    rows, seqs = 300, 40
    reduce_s = 6e-6 + 2 * 3 / 4 * rows * 8192 * 2 / bus
    gather_s = 6e-6 + 3 / 4 * seqs * 128256 * 2 / bus
    assert comm.step_s(rows, seqs) == pytest.approx((2 * 80 + 1) * reduce_s + gather_s, rel=1e-12)
    # a pipeline adds one send of the activations between consecutive stages
    piped = CommModel(model, H200, Parallelism(1, 4))
    assert piped.step_s(rows, seqs) == pytest.approx(3 * (6e-6 + rows * 8192 * 2 / bus), rel=1e-12)
    assert CommModel(model, H200, Parallelism(1, 1)).step_s(rows, seqs) == 0.0


def _cfg(**engine):
    return validate({"model": dataclasses.asdict(FULL), "hardware": "h200",
                     "workload": {"num_requests": 40, "arrival": {"process": "poisson", "rate_rps": 50.0},
                                  "lengths": {"prompt": {"dist": "uniform", "low": 4, "high": 60},
                                              "output": {"dist": "uniform", "low": 2, "high": 30}}},
                     "engine": {"memory": {"num_tokens": 4096}, **engine}})


def test_a_tp2_step_costs_its_sharded_profile_plus_communication_exactly(tmp_path):
    profile = write_profile(tmp_path / "tiny")
    cfg = _cfg(parallel={"tensor": 2}, cost_model={"kind": "profiled", "profile_dir": str(profile)})
    cost, note = build_replica_cost_model(cfg)
    assert "communication: analytic" in note
    sharded = ProfiledCostModel.from_dir(profile, shard(FULL, 2), H200)
    comm = CommModel(FULL, H200, Parallelism(2, 1))
    batches = [Batch((7, 3), (0, 5), (40, 90, 12)), Batch((), (), (100, 200)), Batch((16,), (0,), ())]
    for b in batches:
        assert cost.step_time(b) == sharded.step_time(b) + comm.step_s(b.num_tokens, b.num_seqs)
    b = batches[1]
    np.testing.assert_allclose(cost.decode_run_times(b, 9, 3), decode_run_times_by_steps(cost, b, 9, 3),
                               rtol=1e-12)


def test_a_parallel_run_sizes_kv_per_gpu_and_says_its_communication_is_analytic():
    out = run_experiment(_cfg(parallel={"tensor": 2, "pipeline": 2}, cost_model="roofline",
                              memory={"gpu_memory_utilization": 0.9}))
    blocks = kv_capacity_tokens(shard(FULL, 2, 2), H200, 0.9) // 16          # whole 16-token blocks
    assert out.summary["kv_total_slots_per_replica"] == blocks * 16
    assert out.summary["parallel"]["gpus"] == 4
    assert out.summary["parallel"]["communication"].startswith("analytic")
    assert "analytic communication (tp2, pp2)" in out.summary["cost_model"]
    assert out.summary["counts"]["finished"] == 40


def test_tensor_parallel_roofline_is_the_shard_plus_communication():
    cfg = _cfg(parallel={"tensor": 2}, cost_model="roofline")
    cost, _ = build_replica_cost_model(cfg)
    assert isinstance(cost, ParallelCostModel) and isinstance(cost.inner, RooflineCostModel)
    assert cost.inner.model == shard(FULL, 2)


def test_config_names_an_unsplittable_tensor_degree():
    with pytest.raises(ConfigError, match=r"engine\.parallel\.tensor: full has 8 attention heads, which 3 "
                                          r"does not divide; allowed: 1, 2, 4, 8"):
        _cfg(parallel={"tensor": 3})


def test_measured_collectives_replace_the_analytic_all_reduce_and_gather(tmp_path, monkeypatch):
    import experiments.runner as runner
    from sim.parallel import read_collectives

    csv = tmp_path / "comm.csv"
    csv.write_text("op,world_size,bytes,seconds\n"
                   "all_reduce,2,1024,1e-5\nall_reduce,2,1048576,1e-4\n"
                   "all_gather,2,1024,2e-5\nall_gather,2,1048576,3e-4\n"
                   "all_reduce,4,1024,9\nall_gather,4,1024,9\n")
    measured = read_collectives(csv, 2)
    assert measured["all_reduce"](1024) == 1e-5 and measured["all_reduce"](512) == 1e-5      # clamped below
    assert measured["all_reduce"](2 * 1048576) == pytest.approx(1e-4 + 1048576 * (9e-5 / (1048576 - 1024)))
    model = MODELS["llama-3-70b"]
    comm = CommModel(model, H200, Parallelism(2, 1), measured, str(csv))
    rows, seqs = 40, 40
    expect = (2 * 80 + 1) * measured["all_reduce"](rows * 8192 * 2) + \
        measured["all_gather"](seqs * 64128 * 2)
    assert comm.step_s(rows, seqs) == pytest.approx(expect, rel=1e-12)
    assert comm.note == f"measured ({csv})" and read_collectives(csv, 8) is None
    # pipeline sends: analytic without a measured hand-off, the measured one with it
    piped = CommModel(model, H200, Parallelism(2, 2), measured, str(csv))
    assert piped.step_s(rows, seqs) == pytest.approx(expect + H200.collective_latency_s
                                                     + rows * piped._send_s_per_row, rel=1e-12)
    with csv.open("a") as f:
        f.write("send_recv,2,1024,3e-6\nsend_recv,2,1048576,5e-5\n")
    measured = read_collectives(csv, 2)
    piped = CommModel(model, H200, Parallelism(2, 2), measured, str(csv))
    assert piped.step_s(rows, seqs) == pytest.approx(expect + measured["send_recv"](rows * 8192 * 2), rel=1e-12)
    # the runner finds it beside the profiles and says so
    monkeypatch.setattr(runner, "comm_table_path", lambda hw: csv)
    cost, note = build_replica_cost_model(_cfg(parallel={"tensor": 2}, cost_model="roofline"))
    assert note.endswith(f"communication: measured ({csv})") and "measured communication" in cost.name
