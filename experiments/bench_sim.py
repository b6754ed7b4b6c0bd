"""Simulator speed benchmark: the full Azure conversation trace (19,366
requests) under continuous batching + paged KV, llama-2-7b on h100-sxm.

    taskset -c 0 python -m experiments.bench_sim [--repeat 3] [--no-fast-forward] [--out FILE]

Prints and writes (JSON) the wall time of the simulation itself, of the whole
run (workload loading and metric tables included), simulated iterations per
second, SimPy events, microseconds per event and per iteration, and the
process's peak resident memory. Compare figures as ratios within one run of
this script: this machine's timings are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

from experiments.atomic import atomic_path
from experiments.config import load_config
from experiments.runner import run_experiment

CONFIG = Path(__file__).parent / "configs" / "azure_conv.yaml"


def measure(fast_forward: bool, cost_model: str, limit: int | None) -> dict:
    overrides = [f"fast_forward={str(fast_forward).lower()}", f"engine.cost_model.kind={cost_model}"]
    if limit:
        overrides.append(f"workload.trace.limit={limit}")
    cfg, _ = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    out = run_experiment(cfg)
    total_s = time.perf_counter() - t0
    s = out.summary
    return {
        "fast_forward": fast_forward, "cost_model": s["cost_model"],
        "requests": s["counts"]["arrived"], "sim_wall_s": s["sim_wall_s"], "run_wall_s": total_s,
        "sim_steps": s["sim_steps"], "sim_events": s["sim_events"],
        "steps_per_s": s["sim_steps"] / s["sim_wall_s"],
        "us_per_event": 1e6 * s["sim_wall_s"] / s["sim_events"],
        "us_per_step": 1e6 * s["sim_wall_s"] / s["sim_steps"],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="runs per variant; the median is reported")
    p.add_argument("--no-fast-forward", action="store_true",
                   help="also time stepping one iteration at a time (slow)")
    p.add_argument("--cost-model", default="roofline", choices=["roofline", "auto", "linear"],
                   help="cost model (default roofline: independent of committed profiles)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N trace rows")
    p.add_argument("--out", type=Path, default=Path("results/bench_sim.json"), help="JSON results file")
    args = p.parse_args(argv)
    variants = [True] + ([False] if args.no_fast_forward else [])
    rows = []
    for ff in variants:
        runs = [measure(ff, args.cost_model, args.limit) for _ in range(args.repeat)]
        best = sorted(runs, key=lambda r: r["sim_wall_s"])[len(runs) // 2]   # median run
        best["sim_wall_s_all"] = [round(r["sim_wall_s"], 3) for r in runs]
        rows.append(best)
        print(f"fast_forward={ff}: {best['requests']} requests, {best['sim_steps']} iterations, "
              f"{best['sim_events']} events; simulation {best['sim_wall_s']:.2f} s "
              f"(median of {[f'{x:.2f}' for x in best['sim_wall_s_all']]}), whole run "
              f"{best['run_wall_s']:.2f} s, {best['steps_per_s']:,.0f} iterations/s, "
              f"{best['us_per_event']:.0f} us/event", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")
    record = {
        "date": date.today().isoformat(), "machine": _cpu_model(),
        "cpus_allowed": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
        "command": "python -m experiments.bench_sim " + " ".join(argv if argv is not None else sys.argv[1:]),
        "peak_rss_mb": round(peak_mb, 1), "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
