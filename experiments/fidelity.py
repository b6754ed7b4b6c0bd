"""``pagesim fidelity``: each real run beside its simulation.

For a run directory written by ``pagesim serve`` this

1. **replays** the run: the simulator fed the engine's own measured step
   durations (``sim.cost.replay``) must reproduce every request's timestamps
   and every step's batch and memory -- the proof that the simulator and
   the engine ran the same scheduler, so every difference below is the cost
   model's;
2. **simulates** the same config (same workload and seed, the same KV
   capacity the engine had) with the ``profiled`` cost model of that GPU;
3. compares throughput, TTFT/TPOT/E2E (mean, p50, p90, p99; signed relative
   error ``(simulated - real) / real``), per-request errors, steps, batch
   size, preemptions and KV usage;
4. prices every real step with the cost model (``step check``), split by
   kind of step and into host and device time, which says where a gap comes
   from;
5. draws latency CDFs, a per-request E2E scatter, and batch size and KV
   usage over time, real and simulated on shared axes.

The report is one markdown table per run and a summary table; ``--report``
writes it (with the commands that produced it) to a file.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.config import ExperimentConfig, read_yaml, validate
from experiments.runner import RunOutput, make_requests, run_experiment
from sim.cost import build_cost_model
from sim.cost.replay import ReplayCostModel, ReplayMismatch
from sim.cost.spec import ProfiledCostSpec
from sim.driver import simulate
from sim.memory.capacity import build_kv_manager
from sim.metrics import requests_frame
from sim.policies import POLICIES
from sim.presets import resolve_hardware, resolve_model
from sim.router import ROUTERS

LATENCIES = ("ttft_s", "tpot_s", "e2e_s")
STATS = ("mean", "p50", "p90", "p99")
TARGET_CENTRAL = 0.05      # throughput, mean and p50
TARGET_P99 = 0.10
STEP_KINDS = ("decode (graph)", "decode (eager)", "mixed", "prefill", "swap only")
TIMELINE_INTS = ("running", "waiting", "swapped", "batch_seqs", "batch_rows", "batch_tokens",
                 "prefill_tokens", "decode_seqs", "kv_token_slots_used", "kv_total_slots")


@dataclass
class RealRun:
    path: Path
    name: str
    config: ExperimentConfig
    summary: dict
    requests: pd.DataFrame
    timeline: pd.DataFrame


def load_real_run(path: Path) -> RealRun:
    """A ``pagesim serve`` output directory; one-line errors for anything else."""
    path = Path(path)
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{path}: not a run directory (no summary.json)")
    try:
        summary = json.loads(summary_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{summary_path}: not valid JSON ({exc})") from None
    if not isinstance(summary, dict) or summary.get("executor") != "engine":
        raise ValueError(f"{path}: not a real run (summary.json has no \"executor\": \"engine\"); "
                         f"pagesim fidelity compares the output of pagesim serve")
    cfg = validate(read_yaml(path / "config.yaml"), str(path / "config.yaml"))
    frames = {}
    for name in ("requests", "timeline"):
        file = path / f"{name}.parquet"
        try:
            frames[name] = pd.read_parquet(file)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{file}: not a readable parquet file ({exc})") from None
    missing = [c for c in ("launch_s", "wait_s", "graph_batch", "prefill_new_tokens") if c not in frames["timeline"]]
    if missing:
        raise ValueError(f"{path / 'timeline.parquet'}: missing the engine's column(s) {', '.join(missing)}")
    return RealRun(path, path.name, cfg, summary, frames["requests"], frames["timeline"])


# ---- 1. replay ------------------------------------------------------------------
def replay_check(run: RealRun) -> dict:
    """Simulate with the run's measured step durations; the schedule must match."""
    cfg = run.config
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    kv = build_kv_manager(cfg.engine.memory, model, hardware)
    policy = POLICIES[cfg.engine.batching.policy](cfg.engine.batching, kv, model)
    cost = ReplayCostModel(run.timeline["step_s"].tolist())
    try:
        result = simulate(make_requests(cfg), [policy], [cost], ROUTERS["round_robin"](), fast_forward=False)
    except ReplayMismatch as exc:
        return {"identical": False, "detail": str(exc), "max_abs_dt_s": math.nan}
    sim = requests_frame(result)
    timeline = result.timeline.to_frame()
    real = run.requests
    problems = []
    if len(timeline) != len(run.timeline):
        problems.append(f"{len(timeline)} simulated steps, {len(run.timeline)} real")
    else:
        for column in TIMELINE_INTS:
            if not np.array_equal(timeline[column].to_numpy(), run.timeline[column].to_numpy()):
                problems.append(f"timeline column {column} differs")
                break
    for column in ("status", "preemptions", "output_tokens"):
        if sim[column].tolist() != real[column].tolist():
            problems.append(f"request column {column} differs")
    dt = max(float(np.nanmax(np.abs(sim[c].to_numpy(float) - real[c].to_numpy(float)), initial=0.0))
             for c in ("first_token_s", "finish_s"))
    if dt > 1e-6:
        problems.append(f"timestamps differ by up to {dt:.3g} s")
    return {"identical": not problems, "detail": "; ".join(problems) or "identical", "max_abs_dt_s": dt}


# ---- 2-3. simulate and compare ----------------------------------------------------
def profiled_spec(cfg: ExperimentConfig, profiles: Path | None) -> ProfiledCostSpec:
    """The profiled cost model of the run's GPU and model (from ``profiles/<hw>/<model>/``
    if given, else the committed profiles)."""
    if profiles is None:
        return ProfiledCostSpec()
    return ProfiledCostSpec(profile_dir=Path(profiles) / resolve_hardware(cfg.hardware).name
                            / resolve_model(cfg.model).name)


def simulate_twin(cfg: ExperimentConfig, profiles: Path | None = None) -> RunOutput:
    """The real run's config, priced by the profiled cost model of its GPU."""
    engine = cfg.engine.model_copy(update={"cost_model": profiled_spec(cfg, profiles)})
    return run_experiment(cfg.model_copy(update={"engine": engine}))


def _rel(sim: float | None, real: float | None) -> float:
    if sim is None or real is None or not real:
        return math.nan
    return (sim - real) / real


def compare(real: RealRun, sim: RunOutput) -> dict:
    rs, ss = real.summary, sim.summary
    rows = [("throughput (req/s)", rs["throughput_rps"], ss["throughput_rps"], "central"),
            ("output tokens/s", rs["throughput_tokens_per_s"], ss["throughput_tokens_per_s"], "central")]
    for metric in LATENCIES:
        for stat in STATS:
            kind = "p99" if stat == "p99" else ("central" if stat in ("mean", "p50") else "info")
            rows.append((f"{metric} {stat}", rs[metric][stat], ss[metric][stat], kind))
    table = pd.DataFrame(rows, columns=["metric", "real", "simulated", "target"])
    table["error"] = [_rel(s, r) for r, s in zip(table["real"], table["simulated"])]
    limit = table["target"].map({"central": TARGET_CENTRAL, "p99": TARGET_P99})
    table["meets"] = np.where(limit.isna(), None, table["error"].abs() <= limit)
    both = pd.merge(real.requests, sim.requests, on="request_id", suffixes=("_real", "_sim"))
    both = both[(both["status_real"] == "finished") & (both["status_sim"] == "finished")]
    per_request = {}
    for metric in ("e2e_s", "ttft_s"):
        err = (both[f"{metric}_sim"] - both[f"{metric}_real"]) / both[f"{metric}_real"]
        err = err.replace([np.inf, -np.inf], np.nan).dropna()
        per_request[metric] = {"mean": float(err.mean()), "abs_p50": float(err.abs().median()),
                               "abs_p90": float(err.abs().quantile(0.9))} if len(err) else {}
    counts = {
        "steps": (rs["sim_steps"], ss["sim_steps"]),
        "mean batch size": (rs["mean_batch_size"], ss["mean_batch_size"]),
        "preemptions": (rs["preemptions"], ss["preemptions"]),
        "KV usage (mean fraction)": (rs["kv_usage_mean"], ss["kv_usage_mean"]),
        "duration (s)": (rs["duration_s"], ss["duration_s"]),
    }
    return {"table": table, "per_request": per_request, "counts": counts}


# ---- 4. step check ---------------------------------------------------------------
def step_kind(timeline: pd.DataFrame) -> pd.Series:
    prefill = timeline["prefill_tokens"] > 0
    decode = timeline["decode_seqs"] > 0
    kind = np.select([timeline["batch_tokens"] == 0, timeline["graph_batch"] > 0, prefill & decode, prefill],
                     ["swap only", "decode (graph)", "mixed", "prefill"], "decode (eager)")
    return pd.Series(kind, index=timeline.index)


def step_check(run: RealRun, profiles: Path | None = None) -> pd.DataFrame:
    """Every real step priced by the profiled cost model, by kind of step."""
    cfg = run.config
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    cost, _ = build_cost_model(profiled_spec(cfg, profiles), model, hardware, cfg.engine.batching.max_batch_size)
    t = run.timeline
    layout = cfg.engine.memory.layout
    parts = np.array([cost.step_parts(layout, json.loads(n), json.loads(c), d, ds, dm, si + so)
                      for n, c, d, ds, dm, si, so in zip(
                          t["prefill_new_tokens"], t["prefill_context_tokens"], t["decode_seqs"],
                          t["decode_context_sum"], t["decode_context_max"], t["swap_in_tokens"],
                          t["swap_out_tokens"])])
    frame = pd.DataFrame({
        "kind": step_kind(t), "measured_s": t["step_s"], "predicted_s": parts.sum(axis=1),
        "device_s": t["launch_s"] + t["wait_s"], "device_pred_s": parts[:, 1] + parts[:, 2],
    })
    frame["host_s"] = frame["measured_s"] - frame["device_s"]
    frame["host_pred_s"] = parts[:, 0]
    rows = []
    for kind in [*STEP_KINDS, "all"]:
        g = frame if kind == "all" else frame[frame["kind"] == kind]
        if g.empty:
            continue
        ape = ((g["predicted_s"] - g["measured_s"]).abs() / g["measured_s"]).replace(np.inf, np.nan)
        rows.append({"kind": kind, "steps": len(g), "measured_s": g["measured_s"].sum(),
                     "predicted_s": g["predicted_s"].sum(),
                     "error": _rel(g["predicted_s"].sum(), g["measured_s"].sum()),
                     "step_ape_mean": float(ape.mean()),
                     "device_s": g["device_s"].sum(), "device_pred_s": g["device_pred_s"].sum(),
                     "host_s": g["host_s"].sum(), "host_pred_s": g["host_pred_s"].sum()})
    return pd.DataFrame(rows)


# ---- host speed: a diagnosis, not a prediction -------------------------------------
def host_speed(run: RealRun, cost) -> float:
    """How much slower this run's host issued eager steps than the profile's
    calibration runs: the median over the run's eager prefill steps of
    measured issue time over the calibrated one (1.0 without such steps)."""
    t = run.timeline
    eager = t[(t["graph_batch"] == 0) & (t["prefill_tokens"] > 0)]
    if cost.engine is None or eager.empty:
        return 1.0
    predicted = np.array([cost.engine.issue_s(True, d > 0) for d in eager["decode_seqs"]])
    return float(np.median(eager["launch_s"].to_numpy(float) / predicted))


def host_oracle(run: RealRun, profiles: Path | None = None) -> tuple[float, RunOutput]:
    """The simulation again with the engine's host-side terms (eager issue
    and per-step host time) scaled by this run's own ``host_speed``: how much
    of the gap is the host running faster or slower than during calibration.
    It reads the real run, so it is a diagnosis, never a fidelity figure."""
    from dataclasses import replace

    cfg = run.config
    model, hardware = resolve_model(cfg.model), resolve_hardware(cfg.hardware)
    cost, _ = build_cost_model(profiled_spec(cfg, profiles), model, hardware, cfg.engine.batching.max_batch_size)
    speed = host_speed(run, cost)
    if cost.engine is not None:
        e = cost.engine
        cost.engine = replace(e, issue_coef=tuple(c * speed for c in e.issue_coef),
                              host_coef=tuple(c * speed for c in e.host_coef))
    return speed, run_experiment(cfg, cost=cost)


# ---- 5. plots ---------------------------------------------------------------------
def plot_comparison(real: RealRun, sim: RunOutput, out_dir: Path) -> list[Path]:
    from matplotlib.figure import Figure

    from experiments.plots.common import bin_timeline, save_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = Figure(figsize=(12, 3.6))
    for ax, metric in zip(fig.subplots(1, 3), LATENCIES):
        for label, frame, style in (("real", real.requests, "-"), ("simulated", sim.requests, "--")):
            values = np.sort(frame[metric].dropna().to_numpy())
            if len(values):
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), style, label=label)
        ax.set_xlabel(metric.replace("_s", " (s)"))
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(loc="lower right")
    fig.suptitle(f"{real.name}: latency CDFs, real vs simulated")
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / f"{real.name}_cdf.png"))

    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    both = pd.merge(real.requests, sim.requests, on="request_id", suffixes=("_real", "_sim")).dropna(
        subset=["e2e_s_real", "e2e_s_sim"])
    ax.scatter(both["e2e_s_real"], both["e2e_s_sim"], s=6, alpha=0.6)
    top = float(max(both["e2e_s_real"].max(), both["e2e_s_sim"].max(), 1e-3)) if len(both) else 1.0
    ax.plot([0, top], [0, top], color="0.5", linewidth=1)
    ax.set_xlabel("real E2E (s)")
    ax.set_ylabel("simulated E2E (s)")
    ax.set_title(f"{real.name}: per request")
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / f"{real.name}_e2e_scatter.png"))

    fig = Figure(figsize=(10, 5))
    ax_batch, ax_kv = fig.subplots(2, 1, sharex=True)
    for label, timeline, style in (("real", real.timeline, "-"), ("simulated", sim.timeline, "--")):
        cols = timeline[["t_s", "replica", "step_s", "batch_seqs", "kv_token_slots_used",
                         "kv_token_slots_reserved", "kv_total_slots"]]
        edges, binned = bin_timeline(cols, 400)
        if binned.empty:
            continue
        ax_batch.step(edges[:-1], binned["batch_seqs"], where="post", linestyle=style, label=label)
        used = (binned["kv_token_slots_used"] + binned["kv_token_slots_reserved"]) / binned["kv_total_slots"]
        ax_kv.step(edges[:-1], used, where="post", linestyle=style, label=label)
    ax_batch.set_ylabel("sequences in batch")
    ax_kv.set_ylabel("KV slots in use")
    ax_kv.set_xlabel("time (s)")
    ax_batch.legend(loc="upper right")
    ax_batch.set_title(f"{real.name}: batch size and KV usage over time")
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / f"{real.name}_timeline.png"))
    return paths


# ---- the report ---------------------------------------------------------------------
def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1%}"


def _num(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def run_section(real: RealRun, cmp: dict, replay: dict, steps: pd.DataFrame, plots: list[Path],
                link_root: Path | None, oracle: tuple[float, dict] | None = None) -> list[str]:
    cfg = real.config
    w = cfg.workload
    load = (f"trace {w.trace.path}, time_scale {w.arrival.time_scale}" if w.trace is not None
            else f"{w.arrival.process} {getattr(w.arrival, 'rate_rps', '')} req/s")
    lines = [f"### {real.name}", "",
             f"{resolve_model(cfg.model).name}, {cfg.label()}, {load}, {real.summary['counts']['arrived']} requests, "
             f"KV cache {cfg.engine.memory.num_tokens or cfg.engine.memory.num_blocks} "
             f"{'tokens' if cfg.engine.memory.num_tokens else 'blocks'}, "
             f"replay: **{'identical' if replay['identical'] else 'DIFFERS'}** ({replay['detail']}).", "",
             "| metric | real | simulated | error | target |", "|---|---|---|---|---|"]
    for r in cmp["table"].itertuples():
        verdict = "" if r.meets is None else ("met" if r.meets else "**missed**")
        lines.append(f"| {r.metric} | {_num(r.real)} | {_num(r.simulated)} | {_pct(r.error)} | {verdict} |")
    for name, (a, b) in cmp["counts"].items():
        lines.append(f"| {name} | {_num(a)} | {_num(b)} | {_pct(_rel(b, a)) if a else 'n/a'} | |")
    per = cmp["per_request"]
    if per.get("e2e_s"):
        lines += ["", "Per-request relative error (simulated vs real, finished in both): "
                  f"E2E median |err| {per['e2e_s']['abs_p50']:.1%}, p90 {per['e2e_s']['abs_p90']:.1%}, "
                  f"mean {per['e2e_s']['mean']:+.1%}; TTFT median |err| {per['ttft_s']['abs_p50']:.1%}, "
                  f"p90 {per['ttft_s']['abs_p90']:.1%}."]
    lines += ["", "Step check (every real step priced by the cost model; seconds summed over the run):", "",
              "| steps | n | measured | predicted | error | mean step APE | device real / pred | host real / pred |",
              "|---|---|---|---|---|---|---|---|"]
    for r in steps.itertuples():
        lines.append(f"| {r.kind} | {r.steps} | {r.measured_s:.3f} | {r.predicted_s:.3f} | {_pct(r.error)} | "
                     f"{r.step_ape_mean:.1%} | {r.device_s:.3f} / {r.device_pred_s:.3f} | "
                     f"{r.host_s:.3f} / {r.host_pred_s:.3f} |")
    if oracle is not None:
        speed, table = oracle
        t = table.set_index("metric")["error"]
        lines += ["", f"Host-speed diagnosis (reads this run, so not a prediction): its host issued eager steps "
                      f"{speed:.2f}x as slowly as during calibration; with the engine's host terms scaled by that, "
                      f"the simulation's errors are throughput {_pct(t['throughput (req/s)'])}, TTFT mean "
                      f"{_pct(t['ttft_s mean'])}, TPOT mean {_pct(t['tpot_s mean'])}, E2E mean {_pct(t['e2e_s mean'])}, "
                      f"p50 {_pct(t['e2e_s p50'])}, p99 {_pct(t['e2e_s p99'])}."]
    if plots:
        links = [os.path.relpath(p, link_root) if link_root else str(p) for p in plots]
        lines += ["", "Plots: " + ", ".join(f"[{Path(l).stem.removeprefix(real.name + '_')}]({l})" for l in links)]
    return lines + [""]


def summary_row(real: RealRun, cmp: dict, replay: dict, steps: pd.DataFrame,
                oracle: tuple[float, dict] | None = None) -> dict:
    t = cmp["table"].set_index("metric")
    row = {"run": real.name, "model": resolve_model(real.config.model).name, "config": real.config.label(),
           "replay": "identical" if replay["identical"] else "differs",
           "throughput": t.loc["throughput (req/s)", "error"]}
    for metric in LATENCIES:
        for stat in ("mean", "p50", "p99"):
            row[f"{metric.removesuffix('_s')} {stat}"] = t.loc[f"{metric} {stat}", "error"]
    judged = t[t["meets"].notna()]
    row["misses"] = ", ".join(judged.index[~judged["meets"].astype(bool)]) or "none"
    row["step error"] = float(steps.set_index("kind").loc["all", "error"])
    if oracle is not None:
        row["host speed"] = oracle[0]
        row["e2e mean, host-speed oracle"] = float(oracle[1].set_index("metric").loc["e2e_s mean", "error"])
    return row


def summary_table(rows: list[dict]) -> list[str]:
    cols = [c for c in rows[0] if c not in ("run", "model", "config", "replay", "misses", "host speed")]
    lines = ["| run | config | replay | " + " | ".join(cols) + " | targets missed |",
             "|" + "---|" * (len(cols) + 4)]
    for r in rows:
        lines.append(f"| {r['run']} | {r['config']} | {r['replay']} | "
                     + " | ".join(_pct(r[c]) for c in cols) + f" | {r['misses']} |")
    met = sum(r["misses"] == "none" for r in rows)
    lines += ["", f"{met} of {len(rows)} runs meet every target (throughput, mean and p50 within "
                  f"{TARGET_CENTRAL:.0%}, p99 within {TARGET_P99:.0%}); replay identical in "
                  f"{sum(r['replay'] == 'identical' for r in rows)} of {len(rows)}."]
    return lines


def fidelity(run_dirs: list[Path], out_dir: Path, report: Path | None = None, notes: Path | None = None,
             command: str = "", log=print, profiles: Path | None = None) -> str:
    """Compare every real run with its simulation; returns the markdown report."""
    runs = [load_real_run(p) for p in run_dirs]          # every input checked before any work
    if notes is not None and not Path(notes).is_file():
        raise ValueError(f"--notes {notes}: no such file")
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    sections, rows = [], []
    for run in runs:
        replay = replay_check(run)
        sim = simulate_twin(run.config, profiles)
        cmp = compare(run, sim)
        steps = step_check(run, profiles)
        speed, oracle_sim = host_oracle(run, profiles)
        oracle = (speed, compare(run, oracle_sim)["table"])
        plots = plot_comparison(run, sim, plots_dir)
        link_root = report.parent if report is not None else out_dir
        sections += run_section(run, cmp, replay, steps, [p.resolve() for p in plots], link_root.resolve(),
                                oracle)
        rows.append(summary_row(run, cmp, replay, steps, oracle))
        log(f"{run.name}: replay {rows[-1]['replay']}, throughput {_pct(rows[-1]['throughput'])}, "
            f"E2E mean {_pct(rows[-1]['e2e mean'])}, p99 {_pct(rows[-1]['e2e p99'])}; misses: {rows[-1]['misses']}")
    pd.DataFrame(rows).to_csv(out_dir / "fidelity.csv", index=False)
    lines = ["# Fidelity: real runs beside their simulation", ""]
    if command:
        lines += [f"Generated by `{command}`.", ""]
    lines += ["Each real run was served by `pagesim serve` on the GPU; each simulation runs the same config "
              "(workload, seed, KV capacity) with the `profiled` cost model, whose profile never saw these "
              "runs (its engine terms come from the calibration serving runs of `pagesim calibrate`). "
              "Errors are `(simulated - real) / real`.", "", "## Summary", ""]
    lines += summary_table(rows) + [""]
    if notes is not None:
        lines += [Path(notes).read_text().rstrip(), ""]
    lines += ["## Runs", ""] + sections
    text = "\n".join(lines).rstrip() + "\n"
    from experiments.atomic import atomic_path

    with atomic_path(out_dir / "fidelity.md") as tmp:
        tmp.write_text(text)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(report) as tmp:
            tmp.write_text(text)
    return text
