"""Capacity-search speed benchmark.

    python -m experiments.bench_capacity [--repeat 3] [--out docs/results/bench_capacity.json]

Times ``pagesim capacity experiments/configs/quickstart.yaml --slo
'ttft_s_p99<=1' --slo 'tpot_s_p99<=0.1'`` (four configurations, 3 seeds,
2% tolerance) from an empty probe cache, with every core of this machine,
``--repeat`` times; prints and writes (JSON) each wall time, the median, the
number of probes simulated and the answers. Compare figures as ratios within
one run of this script: this machine's timings are noisy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from experiments.bench_sim import _cpu_model, write_record
from experiments.capacity import Search, parse_objective, plan
from experiments.config import load_config

CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"
SLOS = ("ttft_s_p99<=1", "tpot_s_p99<=0.1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="searches from an empty cache; the median is reported")
    p.add_argument("--out", type=Path, default=Path("results/bench_capacity.json"), help="JSON results file")
    args = p.parse_args(argv)
    cfg, raw = load_config(CONFIG)
    search = Search(tuple(parse_objective(s) for s in SLOS), seeds=3, tolerance=0.02)
    walls, table = [], None
    for i in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="pagesim-bench-capacity-"))
        try:
            t0 = time.perf_counter()
            table = plan(raw, cfg, out / "cap", search, quiet=True)
            walls.append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"run {i + 1}: {walls[-1]:.1f} s, {int(table['probes'].sum())} probes", flush=True)
    median = sorted(walls)[len(walls) // 2]
    answers = {r["config"]: [round(r["max_rate_rps"], 4), round(r["max_rate_min_rps"], 4),
                             round(r["max_rate_max_rps"], 4)] for r in table.to_dict("records")}
    print(f"median {median:.1f} s on {os.cpu_count()} cores; max rate (median, min, max) per configuration: {answers}")
    record = {"date": time.strftime("%Y-%m-%d"), "machine": _cpu_model(), "cpus": os.cpu_count(),
              "command": "python -m experiments.bench_capacity " + " ".join(argv if argv is not None else sys.argv[1:]),
              "equivalent": f"pagesim capacity {CONFIG.relative_to(Path(__file__).parent.parent)} "
                            + " ".join(f"--slo '{s}'" for s in SLOS),
              "wall_s": [round(w, 2) for w in walls], "median_wall_s": round(median, 2),
              "probes": int(table["probes"].sum()), "max_rate_rps": answers}
    return write_record(args.out, record)


if __name__ == "__main__":
    sys.exit(main())
