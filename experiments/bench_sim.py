"""Simulator speed benchmarks.

    taskset -c 0 python -m experiments.bench_sim [--repeat 3] [--no-fast-forward] [--out FILE]
    taskset -c 0 python -m experiments.bench_sim --scale 10000,100000,1000000 [--out FILE]
    taskset -c 0 python -m experiments.bench_sim [--scale N] --against OTHER_CHECKOUT [--pairs 4]

Without ``--scale``: the full Azure conversation trace (19,366 requests)
under continuous batching + paged KV, llama-2-7b on h100-sxm. With
``--scale``: ShareGPT-like Poisson requests at 20 req/s (about 90% of that
configuration's capacity), continuous + paged, llama-2-7b on h100-sxm, at
each size, every size in a fresh process so that its peak memory is its
own (``--policy``, ``--layout``, ``--rate`` change the setup).

Prints and writes (JSON) the wall time of the simulation itself, of the whole
run (workload generation and metric tables included), simulated iterations
per second, SimPy events, microseconds per request, per event and per
iteration, and the peak resident memory. Compare figures as ratios within one
run of this script: this machine's timings are noisy.

``--against DIR`` compares this checkout with another one (say, a
``git worktree`` of the commit before a change): ``--pairs`` pairs of runs,
each run in a fresh process of its own checkout, the order within a pair
alternating so that a drift of the machine's speed hits both sides alike;
it prints and writes each pair's ratio (this / other) and their median.

``--instructions`` counts instead of timing (it needs valgrind): the CPU
instructions the simulation executes per request, which do not drift with
the machine's speed, as callgrind counts them for a run at two sizes (the
``--scale`` size and half of it; the whole trace and its first 100 rows),
the difference divided by the requests between them, so that start-up and
workload generation cancel. With ``--against`` both checkouts are counted
and their ratio printed. A run under valgrind takes about 50 times as long.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from experiments.atomic import atomic_path
from experiments.config import load_config
from experiments.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]       # this checkout
CONFIG = Path(__file__).parent / "configs" / "azure_conv.yaml"


FEATURES = ["engine.memory.prefix_caching=true", "workload.prefix={shared_tokens: 256, tenants: 8}",
            "engine.batching.chunked_prefill=true", "engine.batching.max_batch_tokens=2048"]
"""``--features``: prefix caching over 8 tenants' 256-token system prompts, chunked prefill at 2,048 tokens."""


def measure(fast_forward: bool, cost_model: str, limit: int | None, features: bool = False) -> dict:
    overrides = [f"fast_forward={str(fast_forward).lower()}", f"engine.cost_model.kind={cost_model}"]
    overrides += ["sweep=null", *FEATURES] if features else []
    if limit:
        overrides.append(f"workload.trace.limit={limit}")
    cfg, _ = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    out = run_experiment(cfg)
    total_s = time.perf_counter() - t0
    s = out.summary
    return {
        "fast_forward": fast_forward, "features": features, "cost_model": s["cost_model"],
        "requests": s["counts"]["arrived"], "sim_wall_s": s["sim_wall_s"], "run_wall_s": total_s,
        "sim_steps": s["sim_steps"], "sim_events": s["sim_events"],
        "steps_per_s": s["sim_steps"] / s["sim_wall_s"],
        "us_per_event": 1e6 * s["sim_wall_s"] / s["sim_events"],
        "us_per_step": 1e6 * s["sim_wall_s"] / s["sim_steps"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,   # this process's so far
    }


def measure_scale(num_requests: int, policy: str, layout: str, rate_rps: float) -> dict:
    """One scaling point, in this process (``_scale`` runs each in a fresh one)."""
    from experiments.config import validate

    cfg = validate(dict(
        name="bench-scale", seed=0, model="llama-2-7b", hardware="h100-sxm",
        workload=dict(num_requests=num_requests, arrival=dict(process="poisson", rate_rps=rate_rps),
                      lengths=dict(preset="sharegpt")),
        engine=dict(batching=dict(policy=policy), memory=dict(layout=layout))))
    t0 = time.perf_counter()
    out = run_experiment(cfg)
    total_s = time.perf_counter() - t0
    s = out.summary
    return {"requests": num_requests, "policy": policy, "layout": layout, "rate_rps": rate_rps,
            "sim_wall_s": s["sim_wall_s"], "run_wall_s": total_s, "sim_steps": s["sim_steps"],
            "sim_events": s["sim_events"], "finished": s["counts"]["finished"],
            "accounted": s["counts"]["finished"] + s["counts"]["rejected"] + s["counts"]["unfinished"],
            "us_per_request": 1e6 * s["sim_wall_s"] / num_requests,
            "us_per_step": 1e6 * s["sim_wall_s"] / s["sim_steps"],
            "mean_batch_size": s["mean_batch_size"], "throughput_rps": s["throughput_rps"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _scale(sizes: list[int], policy: str, layout: str, rate_rps: float) -> list[dict]:
    rows = []
    for n in sizes:
        row, _ = _run_in(ROOT, _scale_call(n, policy, layout, rate_rps))
        rows.append(row)
        print(f"{n:>9,} requests: simulation {row['sim_wall_s']:.1f} s, whole run {row['run_wall_s']:.1f} s, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['us_per_request']:.0f} us/request, "
              f"{row['us_per_step']:.0f} us/step, {row['sim_steps']:,} steps, batch {row['mean_batch_size']:.0f}",
              flush=True)
    return rows


def _run_in(checkout: Path, call: str, wrapper: tuple[str, ...] = (), **env: str) -> tuple[dict, str]:
    """``call`` (a ``bench_sim`` function call) in a fresh process that
    imports pagesim from ``checkout`` (under ``wrapper``, e.g. valgrind,
    with ``env`` added): its result row and what it wrote to stderr."""
    import subprocess

    code = f"import json\nfrom experiments.bench_sim import *\nprint(json.dumps({call}))"
    proc = subprocess.run([*wrapper, sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(checkout), **env))
    if proc.returncode:
        raise SystemExit(f"bench_sim: the run in {checkout} failed: "
                         f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _scale_call(num_requests: int, policy: str, layout: str, rate_rps: float) -> str:
    return f"measure_scale({num_requests}, {policy!r}, {layout!r}, {rate_rps!r})"


def _compare(other: Path, pairs: int, call: str) -> dict:
    """``pairs`` alternating pairs of ``call`` here and in ``other``."""
    rows: dict[str, list[dict]] = {"this": [], "other": []}
    ratios = []
    for i in range(pairs):
        order = [("this", ROOT), ("other", other)][:: 1 if i % 2 == 0 else -1]
        for side, checkout in order:
            rows[side].append(_run_in(checkout, call)[0])
        a, b = rows["this"][-1]["sim_wall_s"], rows["other"][-1]["sim_wall_s"]
        ratios.append(a / b)
        print(f"pair {i + 1}: this {a:.2f} s, other {b:.2f} s, ratio {a / b:.3f}", flush=True)
    median = statistics.median(ratios)
    print(f"this / other: median {median:.3f} over {pairs} pair{'s' if pairs > 1 else ''} "
          f"({', '.join(f'{r:.3f}' for r in ratios)})")
    return {"other_checkout": str(other), "other_commit": _commit(other), "this_commit": _commit(ROOT),
            "call": call, "ratios": ratios, "median_ratio": median, "this": rows["this"], "other": rows["other"]}


def _commit(checkout: Path) -> str | None:
    import subprocess

    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


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
    p.add_argument("--scale", default=None, metavar="N,N,...",
                   help="scaling table instead: ShareGPT-like requests at these sizes, one process each")
    p.add_argument("--policy", default="continuous", choices=["continuous", "static"], help="--scale: batching")
    p.add_argument("--layout", default="paged", choices=["paged", "contiguous"], help="--scale: KV layout")
    p.add_argument("--rate", type=float, default=20.0, help="--scale: Poisson rate (req/s)")
    p.add_argument("--features", action="store_true",
                   help="also time the trace with prefix caching (8 tenants' system prompts) and chunked "
                        "prefill on, alternating with the plain runs")
    p.add_argument("--against", type=Path, default=None, metavar="DIR",
                   help="compare with the pagesim checkout in DIR, in alternating pairs of runs")
    p.add_argument("--pairs", type=int, default=4, help="--against: pairs of runs (default 4)")
    p.add_argument("--instructions", action="store_true",
                   help="count the simulation's instructions per request under valgrind instead of timing it")
    args = p.parse_args(argv)
    if args.instructions:
        return _main_instructions(args, argv)
    if args.against is not None:
        return _main_against(args, argv)
    if args.scale is not None:
        rows = _scale([int(x) for x in args.scale.split(",")], args.policy, args.layout, args.rate)
        return _write(args, argv, rows, max(r["peak_rss_mb"] for r in rows))
    variants = [(True, False)] + ([(False, False)] if args.no_fast_forward else []) \
        + ([(True, True)] if args.features else [])
    rows = []
    runs_of: dict = {v: [] for v in variants}
    for _ in range(args.repeat):                  # alternate the variants: drifts hit them alike
        for ff, feat in variants:
            runs_of[(ff, feat)].append(measure(ff, args.cost_model, args.limit, feat))
    for (ff, feat), runs in runs_of.items():
        best = sorted(runs, key=lambda r: r["sim_wall_s"])[len(runs) // 2]   # median run
        best["sim_wall_s_all"] = [round(r["sim_wall_s"], 3) for r in runs]
        rows.append(best)
        print(f"fast_forward={ff}{', features on' if feat else ''}: {best['requests']} requests, {best['sim_steps']} iterations, "
              f"{best['sim_events']} events; simulation {best['sim_wall_s']:.2f} s "
              f"(median of {[f'{x:.2f}' for x in best['sim_wall_s_all']]}), whole run "
              f"{best['run_wall_s']:.2f} s, {best['steps_per_s']:,.0f} iterations/s, "
              f"{best['us_per_event']:.0f} us/event", flush=True)
    if args.features:
        plain, feat = rows[0]["sim_wall_s"], rows[-1]["sim_wall_s"]
        print(f"features on / off: {feat / plain:.2f}x simulation time")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")
    return _write(args, argv, rows, peak_mb)


def _other_checkout(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """``--against``'s checkout, or the error line if it is not one."""
    other = args.against.resolve()
    if not (other / "experiments" / "bench_sim.py").is_file():
        return None, f"--against: {args.against} is not a pagesim checkout (no experiments/bench_sim.py in it)"
    return other, None


def _one_size(args: argparse.Namespace, mode: str) -> tuple[int | None, str | None]:
    """``--scale``'s single size where ``mode`` takes one, or the error line."""
    sizes = args.scale.split(",")
    if len(sizes) != 1 or not sizes[0].strip().isdigit() or int(sizes[0]) < 2:
        return None, f"--scale: {args.scale!r} with {mode}; allowed: one size of 2 requests or more"
    return int(sizes[0]), None


def _main_against(args: argparse.Namespace, argv: list[str] | None) -> int:
    other, error = _other_checkout(args)
    if error:
        return _bad(error)
    if args.pairs < 1:
        return _bad(f"--pairs: {args.pairs}; allowed: 1 or more")
    if args.scale is not None:
        n, error = _one_size(args, "--against")
        if error:
            return _bad(error)
        call = _scale_call(n, args.policy, args.layout, args.rate)
    else:
        call = f"measure(True, {args.cost_model!r}, {args.limit!r})"
    comparison = _compare(other, args.pairs, call)
    # an older checkout's Azure rows may not carry their peak
    peak_mb = max(r.get("peak_rss_mb", 0.0) for r in comparison["this"] + comparison["other"])
    return _write(args, argv, [comparison], peak_mb)


TRACE_HEAD = 100         # --instructions: the trace's first rows, whose count is subtracted as start-up


def _main_instructions(args: argparse.Namespace, argv: list[str] | None) -> int:
    import shutil

    checkouts = [("this", ROOT)]
    if args.against is not None:
        other, error = _other_checkout(args)
        if error:
            return _bad(error)
        checkouts.append(("other", other))
    if args.scale is not None:
        n, error = _one_size(args, "--instructions")
        if error:
            return _bad(error)
        calls = [_scale_call(m, args.policy, args.layout, args.rate) for m in (n // 2, n)]
    elif args.limit is not None and args.limit <= TRACE_HEAD:
        return _bad(f"--limit: {args.limit} with --instructions; allowed: more than {TRACE_HEAD} rows")
    else:
        calls = [f"measure(True, {args.cost_model!r}, {limit!r})" for limit in (TRACE_HEAD, args.limit)]
    if shutil.which("valgrind") is None:
        return _bad("--instructions: needs valgrind on PATH (e.g. apt install valgrind)")
    rows = []
    for side, checkout in checkouts:
        (small, i_small), (large, i_large) = (_counted_in(checkout, call) for call in calls)
        per = (i_large - i_small) / (large["requests"] - small["requests"])
        rows.append({"side": side, "checkout": str(checkout), "commit": _commit(checkout), "calls": calls,
                     "instructions": [i_small, i_large], "requests": [small["requests"], large["requests"]],
                     "instructions_per_request": round(per)})
        print(f"{side} ({checkout}): {per:,.0f} instructions per request "
              f"({small['requests']:,} -> {large['requests']:,} requests)", flush=True)
    if len(rows) == 2:
        ratio = rows[0]["instructions_per_request"] / rows[1]["instructions_per_request"]
        rows.append({"ratio_this_over_other": ratio})
        print(f"this / other: {ratio:.4f}")
    return _write(args, argv, rows, None)


COUNTED_ENV = {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""A counted run's environment: the same hashes every run, and no idle BLAS
threads, whose spinning callgrind counts (with them, identical runs of
2,000 requests differed by about 0.25%; without, by 606 instructions in
3.7 billion)."""


def _counted_in(checkout: Path, call: str) -> tuple[dict, int]:
    """``call`` under callgrind in a fresh process of ``checkout``: its result
    row and the instructions the whole process executed."""
    import re

    row, stderr = _run_in(checkout, call, ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
                          **COUNTED_ENV)
    counted = re.search(r"Collected : ([\d,]+)", stderr)
    if counted is None:
        raise SystemExit(f"bench_sim: the counted run in {checkout} printed no instruction count")
    return row, int(counted.group(1).replace(",", ""))


def _bad(message: str) -> int:
    print(f"python -m experiments.bench_sim: {message}", file=sys.stderr)
    return 2


def _write(args: argparse.Namespace, argv: list[str] | None, rows: list[dict], peak_mb: float | None) -> int:
    record = {
        "date": date.today().isoformat(), "machine": _cpu_model(),
        "cpus_allowed": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
        "command": "python -m experiments.bench_sim " + " ".join(argv if argv is not None else sys.argv[1:]),
        "peak_rss_mb": None if peak_mb is None else round(peak_mb, 1), "results": rows,
    }
    return write_record(args.out, record)


def write_record(path: Path, record: dict) -> int:
    """A benchmark's figures as JSON, atomically; exit status 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
