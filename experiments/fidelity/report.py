"""The fidelity report: comparison plots and markdown tables."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.fidelity.compare import LATENCIES, TARGET_CENTRAL, TARGET_P99, RealRun, rel_error
from experiments.runner import RunOutput
from sim.presets import resolve_model


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
def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1%}"


def num(x) -> str:
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
        lines.append(f"| {r.metric} | {num(r.real)} | {num(r.simulated)} | {pct(r.error)} | {verdict} |")
    for name, (a, b) in cmp["counts"].items():
        lines.append(f"| {name} | {num(a)} | {num(b)} | {pct(rel_error(b, a)) if a else 'n/a'} | |")
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
        lines.append(f"| {r.kind} | {r.steps} | {r.measured_s:.3f} | {r.predicted_s:.3f} | {pct(r.error)} | "
                     f"{r.step_ape_mean:.1%} | {r.device_s:.3f} / {r.device_pred_s:.3f} | "
                     f"{r.host_s:.3f} / {r.host_pred_s:.3f} |")
    if oracle is not None:
        speed, table = oracle
        t = table.set_index("metric")["error"]
        lines += ["", f"Host-speed diagnosis (reads this run, so not a prediction): its host issued eager steps "
                      f"{speed:.2f}x as slowly as during calibration; with the engine's host terms scaled by that, "
                      f"the simulation's errors are throughput {pct(t['throughput (req/s)'])}, TTFT mean "
                      f"{pct(t['ttft_s mean'])}, TPOT mean {pct(t['tpot_s mean'])}, E2E mean {pct(t['e2e_s mean'])}, "
                      f"p50 {pct(t['e2e_s p50'])}, p99 {pct(t['e2e_s p99'])}."]
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
                     + " | ".join(pct(r[c]) for c in cols) + f" | {r['misses']} |")
    met = sum(r["misses"] == "none" for r in rows)
    lines += ["", f"{met} of {len(rows)} runs meet every target (throughput, mean and p50 within "
                  f"{TARGET_CENTRAL:.0%}, p99 within {TARGET_P99:.0%}); replay identical in "
                  f"{sum(r['replay'] == 'identical' for r in rows)} of {len(rows)}."]
    return lines
