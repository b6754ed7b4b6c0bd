"""``pagesim serve``, ``serve-suite`` and the engine's helpers where no GPU
is: one error line naming the field, exit 2, nothing written; graph buckets;
the engine phase of calibration on the CPU feeding the profiled model."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from experiments.cli import main
from experiments.suite import is_done, load_suite
from sim.cost.graphs import bucket_for, graph_batch_sizes
from sim.cost.profiled import ProfiledCostModel
from sim.presets import HARDWARE, ModelSpec
from tests.test_cost_profiled import TINY, write_profile

CONFIG = {"seed": 0, "model": "llama-2-7b", "hardware": "h200",
          "workload": {"num_requests": 10, "arrival": {"process": "poisson", "rate_rps": 5.0},
                       "lengths": {"preset": "alpaca"}}}


RUNS = Path(__file__).resolve().parents[2] / "experiments" / "results" / "fidelity" / "h200" / "runs"


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pagesim: error: "), err
    return err[0]


def test_serve_refuses_what_it_cannot_serve_in_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    cases = [
        ([], "needs a CUDA GPU"),
        (["--set", "engine.replicas=2"], "engine.replicas: pagesim serve drives one replica; allowed: 1 (got 2)"),
        (["--set", "horizon_s=10"], "horizon_s: pagesim serve runs every request to completion"),
        (["--set", "model={num_layers: 2, hidden_size: 64, num_heads: 4, num_kv_heads: 4, head_dim: 16, "
                   "ffn_size: 128, vocab_size: 100, dtype: fp8}"], "model.dtype: the engine runs 16-bit weights"),
    ]
    for extra, needle in cases:
        assert main(["serve", "c.yaml", "--out", "out", *extra]) == 2
        assert needle in _one_error(capsys)
        assert not (tmp_path / "out").exists()


def test_serve_refuses_more_tensor_ranks_than_gpus_and_pipeline_stages(tmp_path, capsys, monkeypatch):
    """A tensor degree above the GPUs present, or pipeline stages: one line, exit 2, nothing written."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cases = [
        (["--set", "engine.parallel.tensor=2"], "engine.parallel.tensor=2 needs 2 GPUs, found 1; allowed here: 1"),
        (["--set", "engine.parallel.pipeline=2"],
         "engine.parallel.pipeline: pagesim serve runs no pipeline stages; allowed: 1 (got 2)"),
    ]
    for extra, needle in cases:
        assert main(["serve", "c.yaml", "--out", "out", *extra]) == 2
        assert needle in _one_error(capsys)
        assert not (tmp_path / "out").exists()


def test_serve_suite_errors_name_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": CONFIG, "runs": {"a": {"engine.replicas": 0}}}))
    assert main(["serve-suite", "s.yaml", "--out", "out"]) == 2
    assert "runs.a: engine.replicas" in _one_error(capsys)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": CONFIG, "runs": {"a": {}}, "extra": 1}))
    assert main(["serve-suite", "s.yaml", "--out", "out"]) == 2
    assert "unknown key(s) extra; allowed: base, runs" in _one_error(capsys)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": CONFIG, "runs": {"a": {}}}))
    assert main(["serve-suite", "s.yaml", "--out", "out", "--only", "b*"]) == 2
    assert "--only b*: matches none of the suite's 1 runs" in _one_error(capsys)
    assert not (tmp_path / "out").exists()


def test_the_committed_suite_loads_and_a_finished_run_is_recognised(tmp_path):
    runs = load_suite(RUNS.parents[4] / "experiments" / "configs" / "fidelity" / "suite.yaml")
    assert len(runs) == 36 and all(cfg.workload.num_requests == 300 for cfg in runs.values())
    name = "llama-3-8b-preempt-swap"
    assert is_done(RUNS / name, runs[name])
    assert not is_done(RUNS / name,
                       runs["llama-3-8b-preempt-recompute"])


def test_graph_buckets_follow_vllm():
    sizes = graph_batch_sizes(256)
    assert sizes[:6] == (1, 2, 4, 8, 16, 24) and sizes[-1] == 256 and len(sizes) == 35
    assert bucket_for(sizes, 37) == 40 and bucket_for(sizes, 3) == 4 and bucket_for(sizes, 257) is None
    assert graph_batch_sizes(20) == (1, 2, 4, 8, 16, 20)
    assert graph_batch_sizes(1) == (1,)


def test_engine_phase_on_the_cpu_feeds_the_profiled_model(tmp_path):
    from kernels.engine.calibrate import write_engine_steps

    model = ModelSpec(**{f: getattr(TINY, f) for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads",
                                                       "head_dim", "ffn_size", "vocab_size")},
                      name="tiny", max_context_tokens=256)
    profile = write_profile(tmp_path / "tiny")
    path = write_engine_steps(model, profile, device="cpu", backend="reference", dtype=torch.float32,
                              quick=True, num_tokens=8192, log=lambda line: None)
    cost = ProfiledCostModel.from_dir(profile, TINY, HARDWARE["h200"], max_batch_size=256)
    assert path.is_file() and cost.engine is not None
    assert cost.engine.issue_s(True, True) > 0 and cost.engine.host_s(1, 0, True) > 0
