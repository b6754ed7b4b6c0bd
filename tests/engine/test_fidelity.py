"""``pagesim serve`` output and ``pagesim fidelity`` end to end on the CPU: a
tiny model served by the real engine (torch reference kernels), written as
``pagesim run`` writes, then compared with its simulation under a synthetic
profile that has engine terms."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from experiments.cli import main
from experiments.config import validate
from experiments.fidelity.compare import load_real_run, replay_check
from experiments.runner import write_outputs
from experiments.serve import Device, serve_experiment
from sim.cost.profiled import ProfiledCostModel
from sim.presets import HARDWARE, ModelSpec
from tests.test_cost_profiled import TINY, _engine_steps, write_profile

MODEL = {f: getattr(TINY, f) for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                                       "ffn_size", "vocab_size", "max_context_tokens")} | {"name": "tiny",
                                                                                           "dtype": "bf16"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    cfg = validate(dict(
        name="tiny-real", seed=1, model=MODEL, hardware="h200",
        workload=dict(num_requests=30, arrival=dict(process="poisson", rate_rps=200.0),
                      lengths=dict(prompt=dict(dist="uniform", low=4, high=30),
                                   output=dict(dist="uniform", low=2, high=20))),
        engine=dict(batching=dict(policy="continuous", max_batch_size=16, max_batch_tokens=256),
                    memory=dict(layout="paged", block_size=4, num_blocks=60))))
    out = serve_experiment(cfg, Device("cpu", "reference", "float32", warm_up_steps=2))
    write_outputs(out, root / "runs" / "tiny-real", plots=False)
    profile = write_profile(root / "profiles" / "h200" / "tiny")
    cost = ProfiledCostModel.from_dir(profile, ModelSpec(**MODEL), HARDWARE["h200"])
    _engine_steps(cost, 16).to_csv(profile / "engine_steps.csv", index=False)
    return root


def test_serve_writes_the_run_contract_plus_engine_columns(real_run):
    run = real_run / "runs" / "tiny-real"
    for name in ("config.yaml", "requests.parquet", "timeline.parquet", "summary.json"):
        assert (run / name).is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["executor"] == "engine" and summary["counts"]["finished"] == 30
    timeline = pd.read_parquet(run / "timeline.parquet")
    assert {"launch_s", "wait_s", "graph_batch", "decode_context_sum"} <= set(timeline.columns)
    assert (timeline["step_s"] > 0).all()


def test_replay_of_the_written_run_is_identical(real_run):
    check = replay_check(load_real_run(real_run / "runs" / "tiny-real"))
    assert check["identical"], check["detail"]
    assert check["max_abs_dt_s"] < 1e-9


def test_fidelity_command_writes_report_tables_and_plots(real_run, capsys):
    out, report = real_run / "report", real_run / "docs" / "fidelity.md"
    code = main(["fidelity", str(real_run / "runs" / "tiny-real"), "--out", str(out), "--report", str(report),
                 "--profiles", str(real_run / "profiles"), "--quiet"])
    assert code == 0
    text = report.read_text()
    assert "replay: **identical**" in text and "| throughput (req/s) |" in text
    assert "| decode (graph) |" in text and "## Summary" in text
    assert len(list((out / "plots").glob("tiny-real_*.png"))) == 3
    table = pd.read_csv(out / "fidelity.csv")
    assert table.loc[0, "replay"] == "identical"


def test_fidelity_refuses_a_simulated_run(real_run, tmp_path, capsys):
    sim = tmp_path / "sim"
    shutil.copytree(real_run / "runs" / "tiny-real", sim)
    summary = json.loads((sim / "summary.json").read_text())
    summary.pop("executor")
    (sim / "summary.json").write_text(json.dumps(summary))
    assert main(["fidelity", str(sim), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a real run" in err[0]
    assert main(["fidelity", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_fidelity_of_a_tensor_parallel_run(real_run, tmp_path):
    """A run served on two ranks is written as any run; fidelity replays it
    (its KV manager sized for one GPU's shard) and prices it with the shard's
    profile plus communication."""
    from sim.parallel import shard

    cfg = validate(dict(
        name="tiny-tp2", seed=1, model=MODEL, hardware="h200",
        workload=dict(num_requests=12, arrival=dict(process="poisson", rate_rps=200.0),
                      lengths=dict(prompt=dict(dist="uniform", low=4, high=30),
                                   output=dict(dist="uniform", low=2, high=12))),
        engine=dict(parallel=dict(tensor=2),
                    batching=dict(policy="continuous", max_batch_size=8, max_batch_tokens=256,
                                  preemption="swap"),
                    memory=dict(layout="paged", block_size=4, num_blocks=16, swap_space_gb=0.001))))
    out = serve_experiment(cfg, Device("cpu", "reference", "float32", warm_up_steps=2))
    write_outputs(out, tmp_path / "runs" / "tiny-tp2", plots=False)
    half = shard(ModelSpec(**MODEL), 2)
    profile = tmp_path / "profiles" / "h200" / half.name
    shutil.copytree(real_run / "profiles" / "h200" / "tiny", profile)
    provenance = json.loads((profile / "provenance.json").read_text())
    provenance["geometry"] |= {k: getattr(half, k) for k in ("num_heads", "num_kv_heads", "ffn_size",
                                                            "vocab_size")}
    (profile / "provenance.json").write_text(json.dumps(provenance))
    assert out.summary["preemptions"] > 0
    check = replay_check(load_real_run(tmp_path / "runs" / "tiny-tp2"))
    assert check["identical"], check["detail"]
    code = main(["fidelity", str(tmp_path / "runs" / "tiny-tp2"), "--out", str(tmp_path / "report"),
                 "--profiles", str(tmp_path / "profiles"), "--quiet"])
    assert code == 0
    assert pd.read_csv(tmp_path / "report" / "fidelity.csv").loc[0, "replay"] == "identical"


def test_a_run_served_without_graphs_is_priced_as_eager_steps(real_run, tmp_path):
    """``pagesim serve --no-graphs``: no decode step replays a graph, the run
    says so, and fidelity prices its steps as the engine issued them."""
    from experiments.fidelity.compare import profiled_cost, simulate_twin, step_check, uses_graphs

    cfg = load_real_run(real_run / "runs" / "tiny-real").config
    out = serve_experiment(cfg, Device("cpu", "reference", "float32", use_graphs=False, warm_up_steps=2))
    write_outputs(out, tmp_path / "eager", plots=False)
    run = load_real_run(tmp_path / "eager")
    assert not uses_graphs(run) and uses_graphs(load_real_run(real_run / "runs" / "tiny-real"))
    assert (run.timeline["graph_batch"] == 0).all()
    assert replay_check(run)["identical"]
    profiles = real_run / "profiles"
    kinds = set(step_check(run, profiles)["kind"])
    assert "decode (eager)" in kinds and "decode (graph)" not in kinds
    assert profiled_cost(cfg, profiles, graphs=False)[0].engine.graph_sizes == ()
    assert profiled_cost(cfg, profiles)[0].engine.graph_sizes
    eager, graphed = simulate_twin(cfg, profiles, graphs=False), simulate_twin(cfg, profiles)
    assert eager.summary["e2e_s"]["mean"] != graphed.summary["e2e_s"]["mean"]


def test_serve_and_serve_suite_take_no_graphs():
    from experiments.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "c.yaml", "--out", "o", "--no-graphs"]).no_graphs
    assert parser.parse_args(["serve-suite", "s.yaml", "--out", "o", "--no-graphs"]).no_graphs
    assert not parser.parse_args(["serve", "c.yaml", "--out", "o"]).no_graphs
