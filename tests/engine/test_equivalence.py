"""The engine and the simulator run the same scheduler: replaying the real
engine's measured step times through the SimPy driver reproduces the engine's
run exactly -- the same batch at every step, the same admissions and
preemptions, the same token counts, the same timestamps up to rounding --
for all four configurations and both preemption modes. And the engine's
memory is real: every request's greedy tokens equal a cache-free forward of
its own sequence, through paging, contiguous reservations, swap and
recompute."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.config import validate
from experiments.runner import make_requests
from experiments.serve import Device, serve_experiment
from kernels.calibration.model import Transformer, dense_logits, random_weights
from kernels.engine.runner import ModelRunner
from sim.cost.replay import ReplayCostModel, ReplayMismatch, batch_shape
from sim.driver import simulate
from sim.memory.capacity import build_kv_manager
from sim.metrics import requests_frame
from sim.policies import POLICIES
from sim.presets import resolve_hardware, resolve_model
from sim.router import ROUTERS

TINY = dict(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
            ffn_size=96, vocab_size=101, max_context_tokens=128, dtype="bf16")
CPU = Device("cpu", "reference", "float32", warm_up_steps=2)

# (policy, memory) -> a config that exercises it; small pools force preemption
CONFIGS = {
    "static+contiguous": ("static", dict(layout="contiguous", num_tokens=2048)),
    "static+paged": ("static", dict(layout="paged", num_blocks=40)),
    "continuous+contiguous(max)": ("continuous", dict(layout="contiguous", num_tokens=1024)),
    "continuous+contiguous(exact)": ("continuous", dict(layout="contiguous", num_tokens=300, reservation="exact")),
    "continuous+paged(recompute)": ("continuous", dict(layout="paged", num_blocks=40)),
    "continuous+paged(swap)": ("continuous", dict(layout="paged", num_blocks=40, swap_space_gb=0.001)),
    # chunked prefill: prompts of up to 40 tokens in steps of 24 tokens, over cached context
    "continuous+paged(chunked)": ("continuous", dict(layout="paged", num_blocks=40)),
    "continuous+contiguous(chunked)": ("continuous", dict(layout="contiguous", num_tokens=1024)),
    # prefix caching: two tenants' system prompts, and conversations that repeat earlier answers
    "continuous+paged(prefix)": ("continuous", dict(layout="paged", num_blocks=60, prefix_caching=True)),
    "continuous+paged(prefix,conversations)": ("continuous", dict(layout="paged", num_blocks=60,
                                                                  prefix_caching=True)),
    # several sequences per request: forks and copy-on-write (paged), a reservation each (contiguous)
    "continuous+paged(samples)": ("continuous", dict(layout="paged", num_blocks=60)),
    "continuous+paged(beams)": ("continuous", dict(layout="paged", num_blocks=60)),
    "continuous+contiguous(samples)": ("continuous", dict(layout="contiguous", num_tokens=1200)),
}
SAMPLING = {"samples": dict(n=3), "beams": dict(beam_width=3)}


def _config(name: str, seed: int = 3):
    policy, memory = CONFIGS[name]
    prefix = None
    if "prefix" in name:
        prefix = dict(turns=3, think_time_s=0.05) if "conversations" in name else \
            dict(shared_tokens=24, tenants=2)
    sampling = next((v for k, v in SAMPLING.items() if k in name), None)
    return validate(dict(
        name=name, seed=seed, model=TINY, hardware="h200",
        workload=dict(num_requests=40, arrival=dict(process="poisson", rate_rps=300.0),
                      lengths=dict(prompt=dict(dist="uniform", low=4, high=40 if prefix is None else 20),
                                   output=dict(dist="uniform", low=2, high=30 if prefix is None else 12)),
                      prefix=prefix, sampling=sampling),
        engine=dict(batching=dict(policy=policy, max_batch_size=16,
                                  max_batch_tokens=24 if "chunked" in name else 256,
                                  chunked_prefill="chunked" in name,
                                  preemption="swap" if "swap" in name else "recompute"),
                    memory=dict(block_size=4, **memory))))


@pytest.fixture(scope="module")
def served():
    """Every configuration served once: the run, each step's batch shape,
    and the token ids of every request's sequences (``{seq id: ids}``)."""
    runs = {}
    original_run, original_release = ModelRunner.run, ModelRunner.release
    for name in CONFIGS:
        shapes, tokens, copies = [], {}, []

        def run(self, batch, shapes=shapes, copies=copies):
            shapes.append(batch_shape(batch))
            copies.extend(batch.block_copies)
            return original_run(self, batch)

        def release(self, req, tokens=tokens):
            tokens[req.request_id] = {seq: list(self._tokens[seq]) for seq in req.seq_ids}
            original_release(self, req)

        ModelRunner.run, ModelRunner.release = run, release
        try:
            runs[name] = (serve_experiment(_config(name), CPU), shapes, tokens, copies)
        finally:
            ModelRunner.run, ModelRunner.release = original_run, original_release
    return runs


def _replay(out, shapes):
    cfg = out.config
    model = resolve_model(cfg.model)
    kv = build_kv_manager(cfg.engine.memory, model, resolve_hardware(cfg.hardware))
    policy = POLICIES[cfg.engine.batching.policy](cfg.engine.batching, kv, model)
    cost = ReplayCostModel(out.timeline["step_s"].tolist(), shapes)
    result = simulate(make_requests(cfg), [policy], [cost], ROUTERS["round_robin"](), fast_forward=False)
    assert cost.used == len(shapes)
    return result


@pytest.mark.parametrize("name", list(CONFIGS))
def test_replaying_the_engine_reproduces_its_run(served, name):
    out, shapes, *_ = served[name]
    real = out.requests
    sim = _replay(out, shapes)          # raises ReplayMismatch at the first differing batch
    simulated = requests_frame(sim)
    assert real["status"].tolist() == simulated["status"].tolist()
    assert (real["status"] == "finished").all()
    for column in ("request_id", "output_tokens", "preemptions"):
        assert real[column].tolist() == simulated[column].tolist()
    for column in ("first_token_s", "finish_s", "ttft_s", "e2e_s"):
        np.testing.assert_allclose(simulated[column], real[column], rtol=0, atol=1e-9)
    timeline = sim.timeline.to_frame()
    for column in timeline.columns:
        if column in ("t_s", "step_s"):
            np.testing.assert_allclose(timeline[column], out.timeline[column], rtol=0, atol=1e-9)
        else:
            assert timeline[column].tolist() == out.timeline[column].tolist(), column


def test_the_runs_exercise_what_they_claim(served):
    """Preemption happens where the pools are small, swap moves blocks, decode
    steps replay graph buckets and other steps run eagerly."""
    summaries = {name: out.summary for name, (out, *_) in served.items()}
    assert summaries["continuous+paged(recompute)"]["preemptions"] > 0
    assert summaries["continuous+paged(swap)"]["preemptions"] > 0
    assert summaries["static+paged"]["preemptions"] > 0
    swap_steps = [s for s in served["continuous+paged(swap)"][1] if s[3] or s[4]]
    assert swap_steps, "no step swapped"
    for name in ("continuous+paged(prefix)", "continuous+paged(prefix,conversations)"):
        assert served[name][0].summary["prefix_cache"]["prefill_tokens_saved"] > 0, f"{name}: no prefix hit"
    for name in ("continuous+paged(samples)", "continuous+paged(beams)"):
        assert served[name][0].summary["kv_sharing_saving"] > 0, f"{name}: nothing shared"
        assert served[name][3], f"{name}: no copy-on-write block copy"
    for name in ("continuous+paged(chunked)", "continuous+contiguous(chunked)"):
        t = served[name][0].timeline
        assert t["batch_tokens"].max() <= 24, name
        assert (served[name][0].requests["prompt_tokens"] > 24).any(), f"{name}: no prompt was chunked"
    for name, (out, *_) in served.items():
        t = out.timeline
        graph, rows = t["graph_batch"].to_numpy(), t["batch_rows"].to_numpy()
        decode = ((t["prefill_tokens"] == 0) & (t["batch_tokens"] > 0)).to_numpy()
        assert (graph[~decode] == 0).all(), name
        assert (graph[decode] >= rows[decode]).all() and (graph[decode] > 0).all(), name
        assert (graph[decode] > rows[decode]).any(), f"{name}: no decode step was padded to a bucket"


def test_the_replay_check_can_fail(served):
    """A recorded batch that differs, or a run that is cut short, is caught."""
    out, shapes, *_ = served["continuous+paged(recompute)"]
    altered = list(shapes)
    altered[5] = (*altered[5][:5], altered[5][5][:-1])      # one request fewer in step 5
    with pytest.raises(ReplayMismatch, match="^step 5: "):
        _replay(out, altered)
    short = type(out)(out.config, out.result, out.requests, out.timeline.iloc[:-1], out.summary, out.notes)
    with pytest.raises(ReplayMismatch, match="more steps than"):
        _replay(short, None)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("continuous")])
def test_greedy_tokens_match_a_cache_free_forward(served, name):
    """Each sequence's generated tokens are the greedy continuation of its
    request's prompt, as a plain forward without any cache computes it (a
    near-tie within 1e-4 of the best logit counts as a match): every sample
    and beam too, whose KV comes through forks, copy-on-write block copies
    or a copied prompt."""
    out, _, tokens, _ = served[name]
    model = resolve_model(out.config.model)
    weights = random_weights(model, dtype=torch.float32, device="cpu", seed=out.config.seed)
    forward = Transformer(model, weights, "reference")
    with torch.inference_mode():
        for req in out.requests.itertuples():
            seqs = tokens[req.request_id]
            assert len(seqs) == (3 if any(k in name for k in SAMPLING) else 1)
            for seq, ids in seqs.items():
                assert len(ids) == req.prompt_tokens + req.output_tokens
                assert ids[: req.prompt_tokens] == seqs[req.request_id][: req.prompt_tokens]
                logits = dense_logits(forward, torch.tensor(ids[:-1]))[req.prompt_tokens - 1:]
                chosen = logits.gather(1, torch.tensor(ids[req.prompt_tokens:])[:, None])[:, 0]
                assert (logits.max(dim=1).values - chosen <= 1e-4).all(), (req.request_id, seq)


@pytest.mark.parametrize("total_tokens", [300, 301])
def test_contiguous_warm_up_prefills_over_context_from_an_aligned_scratch(total_tokens):
    """The warm-up's prefills over cached context read pages of padding rows
    at the scratch location: a KV cache whose size is not a whole number of
    pages still starts it on a page (the H200 refused such a cache before)."""
    from sim.memory.contiguous import ContiguousKVManager

    model = resolve_model(TINY)
    kv = ContiguousKVManager(total_tokens, "exact", model.max_context_tokens)
    weights = random_weights(model, dtype=torch.float32, device="cpu", seed=0)
    runner = ModelRunner(model, weights, kv, device="cpu", backend="reference", dtype=torch.float32,
                         max_batch_size=8)
    runner.warm_up(num_steps=4)                  # step 2 prefills over cached context
    assert runner.scratch % runner.block_size == 0 and runner.scratch >= total_tokens
    assert runner.cache.num_slots >= runner.scratch + model.max_context_tokens
