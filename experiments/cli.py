"""The ``pagesim`` command: run, sweep, capacity, plot, workloads, kernels, calibrate.

Bad input (config, trace, arguments) ends with one ``pagesim: error: ...``
line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.inputs import first_input_error, output_dir_error, output_kind
from experiments.outputs import check_out_dir, check_out_file

EXIT_BAD_INPUT = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML file (see README: config reference)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by dotted path, value parsed as YAML; "
                        "repeatable (e.g. --set engine.batching.policy=static)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """A config and one run's output directory (``run`` and ``serve``)."""
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced atomically)")
    p.add_argument("--csv", action="store_true", help="also write requests.csv")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    _add_force(p)


def _add_no_graphs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-graphs", action="store_true",
                   help="run every step eagerly, capturing no CUDA graphs (a fallback where a decode step "
                        "cannot be captured; pagesim fidelity then prices the run's steps as eager)")


def _check_backend(args: argparse.Namespace) -> None:
    if args.address and args.backend != "ray":
        raise ValueError("--address: applies to --backend ray only")


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the work runs: local processes (default) or Ray tasks (optional extra)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--backend ray: an existing Ray cluster (e.g. ray://head:10001 or auto); "
                        "default: a local Ray instance started for this command")


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into an existing directory that pagesim did not write (replacing it for a run)")


def _cmd_run(args: argparse.Namespace) -> int:
    return _produce_run(args, "experiments.runner:run_experiment", "steps")


def _cmd_serve(args: argparse.Namespace) -> int:
    return _produce_run(args, "experiments.serve:serve_experiment", "real steps",
                        lambda serve: {"device": serve.Device(use_graphs=not args.no_graphs)})


def _produce_run(args: argparse.Namespace, producer: str, steps_word: str, options=None) -> int:
    """Load the config, produce a run with ``producer`` (``module:function``,
    simulated or real, imported once the inputs are known good; ``options``:
    the producer's module -> its extra keyword arguments), write the output
    contract."""
    import importlib

    from experiments.config import load_config

    cfg, _ = load_config(args.config, args.overrides)
    check_out_dir(Path(args.out), force=args.force)
    module_name, name = producer.split(":")
    module = importlib.import_module(module_name)
    produce = getattr(module, name)
    from experiments.runner import write_outputs

    if cfg.sweep and not args.quiet:
        print(f"pagesim: note: {args.config} has a sweep: section; this runs its base config only "
              f"(pagesim sweep runs the grid)", file=sys.stderr)
    out = produce(cfg, progress=not args.quiet,
                  log=None if args.quiet else lambda note: print(note, file=sys.stderr),
                  **(options(module) if options else {}))
    write_outputs(out, Path(args.out), csv=args.csv, plots=not args.no_plots)
    if not args.quiet:
        print(_one_line(out.summary).replace(" steps in ", f" {steps_word} in "))
        print(f"wrote {args.out}/ (config.yaml, requests.parquet, timeline.parquet, summary.json"
              f"{', plots/' if not args.no_plots else ''})")
    return 0


def _one_line(s: dict) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    c = s["counts"]
    return (f"{s['config_label']}: {f(s['throughput_rps'], '.3f')} req/s, "
            f"{f(s['throughput_tokens_per_s'], '.0f')} tok/s, "
            f"TTFT p50 {f(s['ttft_s']['p50'], '.3f')} s, TPOT p50 {f(s['tpot_s']['p50'], '.4f')} s, "
            f"norm. latency {f(s['normalized_latency_s_per_token']['mean'], '.4f')} s/tok, "
            f"KV util {f(s['kv_utilization_mean'], '.1%')} of held, batch {f(s['mean_batch_size'], '.1f')}"
            f"{_rows(s)}, "
            f"finished {c['finished']}/{c['arrived']} (rejected {c['rejected']}, "
            f"unfinished {c['unfinished']}), {s['sim_steps']} steps in {s['sim_wall_s']:.2f} s")


def _rows(s: dict) -> str:
    """Static batching computes padded rows of finished sequences too: say so."""
    seqs, rows = s.get("mean_batch_size"), s.get("mean_batch_rows")
    if seqs is None or rows is None or abs(rows - seqs) < 0.05:
        return ""
    return f" seqs ({rows:.1f} rows computed)"


def _cmd_serve_suite(args: argparse.Namespace) -> int:
    from experiments.suite import serve_suite

    check_out_dir(Path(args.out), force=args.force, replace=False)
    serve_suite(Path(args.suite), Path(args.out), args.only, plots=not args.no_plots, graphs=not args.no_graphs,
                log=lambda line: print(line, flush=True))
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from experiments.fidelity import REPORT_TITLE, fidelity

    check_out_dir(Path(args.out), force=args.force, replace=False)
    if args.report:
        check_out_file(Path(args.report), REPORT_TITLE, force=args.force, flag="--report")
    command = "pagesim fidelity " + " ".join(_abbreviated(args.argv_text, args.runs))
    text = fidelity([Path(d) for d in args.runs], Path(args.out), Path(args.report) if args.report else None,
                    Path(args.notes) if args.notes else None, command=command,
                    log=lambda line: print(line, flush=True), profiles=args.profiles)
    if not args.quiet:
        print(text[text.index("## Summary"):text.index("## Runs")].strip())
    print(f"wrote {args.out}/fidelity.md, fidelity.csv, plots/" + (f" and {args.report}" if args.report else ""))
    return 0


def _abbreviated(argv: list[str], runs: list[str]) -> list[str]:
    """The command line with a long list of run directories that make up one
    folder written as ``FOLDER/*``, as the user most likely typed it."""
    parents = {str(Path(r).parent) for r in runs}
    if len(runs) <= 3 or len(parents) != 1:
        return argv
    parent = parents.pop()
    everything = {str(p) for p in Path(parent).iterdir() if p.is_dir()}
    if {str(Path(r)) for r in runs} != everything:
        return argv
    out, inserted = [], False
    for arg in argv:
        if arg in runs:
            if not inserted:
                out.append(f"{parent}/*")
                inserted = True
        else:
            out.append(arg)
    return out


def _cmd_sweep(args: argparse.Namespace) -> int:
    from experiments.config import ConfigError, load_config
    from experiments.sweep import run_sweep

    cfg, raw = load_config(args.config, args.overrides)
    if not cfg.sweep:
        raise ConfigError(f"{args.config}: has no 'sweep:' section (dotted path -> list of values)")
    if args.slo:
        from sim.metrics import summary_metrics

        known = summary_metrics()
        for slo in args.slo:
            if slo.metric not in known:
                raise ValueError(f"--slo {slo.metric}: not a sweep.csv metric; allowed: {', '.join(known)}")
    check_out_dir(Path(args.out), force=args.force, replace=False)
    _check_backend(args)
    table = run_sweep(raw, cfg, Path(args.out), jobs=args.jobs, x_key=args.x_key,
                      plots=not args.no_plots, progress=not args.quiet, backend=args.backend,
                      address=args.address)
    if not args.quiet:
        cols = [c for c in ["config_label", *cfg.sweep, "throughput_rps",
                            "normalized_latency_s_per_token_mean", "ttft_s_p99",
                            "kv_utilization_mean", "mean_batch_size", "steady_state_verdict"] if c in table.columns]
        cols = list(dict.fromkeys(cols))
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if args.slo:
            from experiments.analysis import capacity

            cap = capacity(table, args.x_key, args.slo, group_keys=list(cfg.sweep))
            print(f"\nhighest load ({args.x_key}) meeting "
                  f"{' and '.join(f'{s.metric}<={s.limit:g}' for s in args.slo)}:")
            print(cap.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {args.out}/sweep.csv, {args.out}/points/, {args.out}/plots/")
    return 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    from experiments.capacity import Search, plan, search_units, write_results
    from experiments.config import load_config
    from sim.presets import HARDWARE

    overrides = list(args.overrides)
    if args.requests is not None:
        overrides.append(f"workload.num_requests={args.requests}")
    cfg, raw = load_config(args.config, overrides)
    gpu_cost = {}
    for text in args.gpu_cost:
        hw, sep, price = text.partition("=")
        try:
            value = float(price)
        except ValueError:
            value = -1.0
        if not sep or not (value > 0 and value < 1e6):
            raise ValueError(f"--gpu-cost {text!r}: expected HARDWARE=DOLLARS_PER_GPU_HOUR, e.g. h200=3.5")
        if hw not in HARDWARE and hw not in _inline_hardware(cfg):
            raise ValueError(f"--gpu-cost {hw}: unknown hardware; allowed: {', '.join(HARDWARE)}")
        gpu_cost[hw] = value
    if args.target_rate is not None and not (0 < args.target_rate <= 1e6):
        raise ValueError(f"--target-rate: must be a rate in (0, 1e6] req/s (got {args.target_rate:g})")
    if args.gpu_cost and args.target_rate is None:
        print("pagesim: note: --gpu-cost without --target-rate prices each configuration at its capacity "
              "($ per 1M output tokens)", file=sys.stderr)
    search = Search(tuple(args.slo), args.attainment, args.seeds, args.tolerance)
    if args.attainment_given and not any(o.per_request for o in search.objectives):
        raise ValueError("--attainment: give per-request objectives with it, e.g. --slo ttft_s<=1 --slo tpot_s<=0.1")
    _check_backend(args)
    units = search_units(raw, cfg, args.target_rate)
    check_out_dir(Path(args.out), force=args.force, replace=False)
    table = plan(raw, cfg, Path(args.out), search, target_rps=args.target_rate, gpu_cost=gpu_cost or None,
                 max_replicas=args.max_replicas, workers=args.jobs, quiet=args.quiet, backend=args.backend,
                 address=args.address, cands=units)
    cands = {c.cid: c for c in units}
    import shlex

    command = "pagesim capacity " + shlex.join(args.argv_text)
    paths = write_results(table, Path(args.out), cfg.name, command, search, args.target_rate, gpu_cost or None,
                          cands)
    if not args.quiet:
        text = paths["md"].read_text()
        print(text[text.index("| configuration"):].strip())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _inline_hardware(cfg) -> set[str]:
    """Names of inline hardware specs a config or its sweep uses."""
    names = set()
    for value in [cfg.hardware, *(cfg.sweep or {}).get("hardware", [])]:
        name = getattr(value, "name", None) or (value.get("name") if isinstance(value, dict) else None)
        if name:
            names.add(name)
    return names


def _objective(text: str):
    from experiments.capacity import parse_objective

    try:
        return parse_objective(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(kind, low: float, high: float, low_open: bool = True):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, "
                                             f"got {text!r}") from None
        if not ((value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {text}")
        return value
    return parse


class _Given(argparse.Action):
    """Stores the value and notes that the flag was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def _cmd_plot(args: argparse.Namespace) -> int:
    from experiments.plots import plot_run, plot_sweep

    d = Path(args.dir)
    kind = output_kind(d)
    if kind == "capacity":
        import pandas as pd

        from experiments.plots.capacity import plot_capacity

        table = pd.read_csv(d / "capacity.csv")
        target = float(table["target_rps"].iloc[0]) if "target_rps" in table and len(table) else None
        paths = plot_capacity(table, d / "plots", target)
    elif kind == "sweep":
        paths = plot_sweep(d, x_key=args.x_key)
    elif kind == "run":
        paths = plot_run(d)
    else:
        raise ValueError(output_dir_error(d))
    for p in paths:
        print(p)
    return 0


def _slo(text: str):
    from experiments.analysis import SLO

    try:
        return SLO.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage dump), exit 2, like every other
    bad input."""

    def error(self, message: str):  # type: ignore[override]
        where = self.prog.removeprefix("pagesim").strip()
        self.exit(EXIT_BAD_INPUT, f"pagesim: error: {where + ': ' if where else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pagesim",
        description="Simulate LLM serving: batching policies x KV-cache layouts, "
                    "with a clock calibrated from real GPU kernels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run one experiment and write results + plots",
                       description="Run one experiment config and write DIR/config.yaml, "
                                   "requests.parquet, timeline.parquet, summary.json and plots/.")
    _add_run_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run the cartesian product of a config's sweep: section",
                       description="Run every point of the config's sweep: section in parallel "
                                   "processes (finished points are skipped on re-run) and write "
                                   "OUT/sweep.csv, OUT/points/<id>/ and comparison plots.")
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel processes (default: number of CPU cores)")
    p.add_argument("--x-key", default="workload.arrival.rate_rps", metavar="PATH",
                   help="swept key on the plots' x axis (default: workload.arrival.rate_rps)")
    p.add_argument("--slo", action="append", default=[], type=_slo, metavar="METRIC<=VALUE",
                   help="service-level objective on a sweep.csv column (repeatable), e.g. "
                        "ttft_s_p99<=1.0: prints, per configuration, the highest x that meets all")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    _add_backend(p)
    _add_force(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "capacity", help="highest sustainable load per configuration, or the cheapest for a target",
        description="For every configuration of the config's sweep: section (the load key left out), "
                    "find the highest arrival rate at which the simulated system is stable and meets every "
                    "--slo (bracket, then bisection, over --seeds seeds); with --target-rate, the fewest "
                    "GPUs and the lowest cost that serve it. Writes OUT/capacity.csv, capacity.md, "
                    "recommended.yaml (runnable, with the equivalent vLLM flags), plots/ and a probe "
                    "cache (re-runs resume).")
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--slo", action="append", default=[], type=_objective, metavar="METRIC<=VALUE",
                   help="objective (repeatable): a summary metric, latencies over the steady-state window "
                        "(ttft_s_p99<=1, tpot_s_p50<=0.05), or a per-request latency (ttft_s<=1, tpot_s<=0.1, "
                        "e2e_s<=20) that --attainment of requests must meet (goodput)")
    p.add_argument("--attainment", type=_bounded(float, 0.0, 1.0), default=0.99, action=_Given, metavar="A",
                   help="share of requests that must meet every per-request objective (default 0.99)")
    p.add_argument("--seeds", type=_bounded(int, 1, 100, low_open=False), default=3, metavar="N",
                   help="repeat each search over N seeds and report the spread (default 3)")
    p.add_argument("--tolerance", type=_bounded(float, 0.0, 0.5), default=0.02, metavar="REL",
                   help="stop bisecting when the bracket is within this relative width (default 0.02)")
    p.add_argument("--target-rate", type=float, default=None, metavar="RPS",
                   help="find the cheapest configuration (replicas x GPUs) that serves this many req/s")
    p.add_argument("--gpu-cost", action="append", default=[], metavar="HARDWARE=DOLLARS",
                   help="price of one GPU-hour (repeatable), e.g. h200=3.5; ranks by GPUs when absent")
    p.add_argument("--max-replicas", type=_bounded(int, 1, 4096, low_open=False), default=64, metavar="N",
                   help="--target-rate: most replicas tried per configuration (default 64)")
    p.add_argument("--requests", type=_bounded(int, 10, 10**7, low_open=False), default=None, metavar="N",
                   help="requests per probe (default: the config's workload.num_requests)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel processes (default: number of CPU cores)")
    p.add_argument("--quiet", action="store_true", help="no probe lines and no table")
    _add_backend(p)
    _add_force(p)
    p.set_defaults(func=_cmd_capacity, attainment_given=False)

    p = sub.add_parser("serve", help="run an experiment on the real engine (GPU) and write run's outputs",
                       description="Serve the config's requests on the real engine -- the simulator's own "
                                   "batching policy and KV manager driven against wall-clock time on this "
                                   "GPU, with pagesim's Triton kernels and random weights of the model's "
                                   "geometry -- and write the same DIR/ as pagesim run (the timeline holds "
                                   "real step durations). Needs a CUDA GPU matching the config's hardware.")
    _add_run_args(p)
    _add_no_graphs(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("serve-suite", help="serve every run of a fidelity suite (GPU), resumable",
                       description="Serve each run of a suite file (a base config and per-run overrides) "
                                   "into OUT/<run>/; runs already there with the same config are skipped.")
    p.add_argument("suite", help="suite YAML, e.g. experiments/configs/fidelity/suite.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory, one folder per run")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="serve only runs whose name matches (repeatable), e.g. 'llama-2-7b-*'")
    p.add_argument("--no-plots", action="store_true", help="skip each run's plots")
    _add_no_graphs(p)
    _add_force(p)
    p.set_defaults(func=_cmd_serve_suite)

    p = sub.add_parser("fidelity", help="compare real runs (pagesim serve) with their simulation",
                       description="For each real run directory: replay its measured step times through the "
                                   "simulator (the schedule must be identical), simulate the same config with "
                                   "the profiled cost model, and report throughput and latency errors, a "
                                   "per-step check of the cost model, and comparison plots.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories written by pagesim serve")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory: fidelity.md, fidelity.csv, plots/")
    p.add_argument("--report", default=None, metavar="FILE", help="also write the report here (e.g. docs/fidelity.md)")
    p.add_argument("--notes", default=None, metavar="FILE", help="markdown inserted after the summary table")
    p.add_argument("--profiles", default=None, type=Path, metavar="DIR",
                   help="profiles root holding <hardware>/<model>/ (default: the committed kernels/profiles)")
    p.add_argument("--quiet", action="store_true", help="no summary table on stdout")
    p.add_argument("--force", action="store_true",
                   help="write into a directory, or replace a --report file, that pagesim did not write")
    p.set_defaults(func=_cmd_fidelity)

    p = sub.add_parser("plot", help="(re)draw the plots of a run, sweep or capacity directory",
                       description="Redraw DIR/plots/ from a run directory (summary.json), a "
                                   "sweep directory (sweep.csv) or a capacity directory (capacity.csv).")
    p.add_argument("dir", metavar="DIR", help="a run or sweep output directory")
    p.add_argument("--x-key", default="workload.arrival.rate_rps", metavar="PATH",
                   help="sweep only: swept key on the x axis")
    p.set_defaults(func=_cmd_plot)

    for module in ("workloads.cli", "kernels.harness.cli", "kernels.calibration.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)       # --help and argument errors end here, before heavy imports
    missing = first_input_error(args)    # so do inputs that are not there
    if missing:
        print(f"pagesim: error: {missing}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.argv_text = list(sys.argv[1:] if argv is None else argv)[1:]
    from pydantic import ValidationError
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1 (got {args.jobs})")   # one line, exit 2
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        from experiments.config import format_validation_error

        print(f"pagesim: error: {format_validation_error(exc)}", file=sys.stderr)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"pagesim: error: {msg}", file=sys.stderr)
    except KeyboardInterrupt:
        print("pagesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (``| head``): stop quietly, as a
        # command killed by SIGPIPE would, and let nothing flush into the closed pipe
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
