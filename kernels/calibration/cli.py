"""``pagesim calibrate``: profile a model on the GPU, or check the committed
profiles against the held-out real steps measured with them.

    pagesim calibrate --model llama-2-7b[,llama-3-8b] --hardware h200 [--quick]   # on the GPU
    pagesim calibrate --model llama-3-70b --tp 2,4,8 --hardware h200              # tensor shards
    pagesim calibrate --check [--model NAME] [--hardware h200]                      # anywhere

Profiling times every operator and a held-out set of whole steps
(``kernels.calibration.profile``), then runs the engine phase
(``kernels.engine.calibrate``): short serving runs on the real engine whose
per-step measurements become ``engine_steps.csv``.

Importing this module imports neither torch nor the simulator: the profiler
(``kernels.calibration.profile``) and the cost models are loaded by the command that
needs them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET_MEAN_APE = 0.05
TARGET_P95_APE = 0.10
KINDS = ("decode", "prefill", "mixed", "skewed", "static")
DEFAULT_RESULTS = Path("docs/calibration-results.md")
REPORT_TITLE = "# Calibration check: predicted vs measured step time"


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate", help="profile kernels on a GPU, or --check the profiled cost model",
        description="Without --check: time every operator of a real transformer step and a held-out "
                    "set of whole steps on this GPU, and write kernels/profiles/<hardware>/<model>/. "
                    "With --check: compare the profiled and roofline cost models against the held-out "
                    "steps (no GPU needed).")
    p.add_argument("--model", default=None,
                   help="model preset(s), comma-separated (profiling: required; --check: filter, default all)")
    p.add_argument("--hardware", default="h200",
                   help="hardware preset (default h200, the lent GPU); --check: comma-separated list")
    p.add_argument("--tp", default="1", metavar="T[,T...]",
                   help="tensor-parallel degrees: also profile, on this one GPU, exactly the GEMM and "
                        "attention shapes each GPU of a T-way group runs (filed as <model>-tp<T>; "
                        "communication stays analytic); default 1")
    p.add_argument("--quick", action="store_true", help="coarse grid, one step per kind (smoke test)")
    p.add_argument("--engine", choices=("yes", "no", "only"), default="yes",
                   help="run the engine phase (engine_steps.csv) after the operators: yes (default), "
                        "no, or only it (keeping the profile's other files)")
    p.add_argument("--check", action="store_true", help="report prediction errors on held-out steps")
    p.add_argument("--profiles", type=Path, default=None, metavar="DIR",
                   help="profiles root (default: the installed kernels/profiles)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), metavar="FILE",
                   help=f"--check: also write the table here (default {DEFAULT_RESULTS}; '-' for none)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from sim.presets import resolve_hardware, resolve_model

    root = args.profiles or _installed_root()
    if args.check:
        from sim.parallel import resolve_profiled

        models = None if args.model is None else [resolve_profiled(m.strip()).name for m in args.model.split(",")]
        names = [resolve_hardware(h.strip()).name for h in args.hardware.split(",") if h.strip()]
        if args.results != "-":
            from experiments.outputs import check_out_file

            check_out_file(Path(args.results), REPORT_TITLE, flag="--results")
        report = check(root, names, models)
        print(report)
        if args.results != "-":
            from experiments.atomic import atomic_path

            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(Path(args.results)) as tmp:
                tmp.write_text(report)
        return 0
    hardware = resolve_hardware(args.hardware)
    if args.model is None:
        raise ValueError("calibrate: --model is required to profile (or pass --check)")
    from sim.parallel import shard

    degrees = parse_tp(args.tp)
    bases = [resolve_model(m.strip()) for m in args.model.split(",") if m.strip()]
    try:
        shards = [(base.name, t, shard(base, t).name) for base in bases for t in degrees]
    except ValueError as exc:         # "tensor: llama-3-70b has 64 attention heads, ..."
        raise ValueError(f"--tp: {str(exc).partition(': ')[2]}") from None
    from experiments.outputs import check_out_dir, is_pagesim_dir

    def is_profile(directory: Path) -> bool:
        return is_pagesim_dir(directory) or (directory / "provenance.json").is_file()

    for _, _, name in shards:      # before any GPU time: never write over a user's folder
        check_out_dir(root / hardware.name / name, flag="--profiles", replace=False, ours=is_profile,
                      can_force=False)
    from kernels.calibration.profile import main as profile_main

    for base, tensor, name in shards:
        if args.engine != "only":
            argv = ["--model", base, "--tp", str(tensor), "--hardware", hardware.name, "--out", str(root)]
            code = profile_main(argv + (["--quick"] if args.quick else []))
            if code:
                return code
        if tensor > 1:        # the engine serves whole models on one GPU
            print(f"[{name}] engine phase skipped: a tensor shard is profiled as operators and whole steps",
                  flush=True)
            if _measure_communication(tensor, root / hardware.name):
                _measure_tp_steps(base, tensor, root / hardware.name)
        elif args.engine != "no":
            from kernels.engine.calibrate import write_engine_steps

            dest = root / hardware.name / name
            dest.mkdir(parents=True, exist_ok=True)
            print(f"[{name}] engine phase", flush=True)
            print(f"wrote {write_engine_steps(resolve_model(name), dest, quick=args.quick)}", flush=True)
    return 0


def _measure_communication(tensor: int, dest: Path) -> bool:
    """On a machine with ``tensor`` GPUs or more: time its collectives into
    ``dest/comm.csv`` (kernels/distributed/comm.py) and say True; else say
    why not and False."""
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < tensor:
        print(f"[tp{tensor}] communication and whole {tensor}-GPU steps not measured: this machine has {have} "
              f"GPU(s), a {tensor}-way group needs {tensor}; communication stays analytic (sim/parallel.py)",
              flush=True)
        return False
    from kernels.distributed.comm import main as comm_main

    code = comm_main(["--tp", str(tensor), "--out", str(dest)])
    if code:
        raise ValueError(f"--tp {tensor}: timing the collectives failed (exit {code})")
    return True


def _measure_tp_steps(base: str, tensor: int, dest: Path) -> None:
    """The shard profile's held-out steps as whole TP steps across the GPUs
    (kernels/distributed/tp_steps.py), for ``--check``."""
    from kernels.distributed.tp_steps import main as steps_main

    code = steps_main(["--model", base, "--tp", str(tensor), "--profiles", str(dest)])
    if code:
        raise ValueError(f"--tp {tensor}: timing whole tensor-parallel steps failed (exit {code})")


def parse_tp(value: str) -> list[int]:
    """``--tp 1,2,4``: distinct positive degrees, in the order given."""
    try:
        degrees = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        degrees = []
    if not degrees or min(degrees) < 1:
        raise ValueError(f"--tp: expected positive integers, comma-separated, e.g. 1,2,4,8 (got {value!r})")
    return list(dict.fromkeys(degrees))


def _installed_root() -> Path:
    from kernels import PROFILES_DIR

    return PROFILES_DIR


# ---- the check ---------------------------------------------------------------
def check(root: Path, hardware_names: str | list[str], models: list[str] | None = None) -> str:
    """Markdown report: mean and p95 absolute percentage error of the profiled
    and roofline models on each model's held-out steps, per kind of step,
    for every hardware named."""
    from sim.cost.profiled import has_profiles

    hardware_names = [hardware_names] if isinstance(hardware_names, str) else hardware_names
    lines = [REPORT_TITLE, "",
             f"Generated by `pagesim calibrate --check --hardware {','.join(hardware_names)}` from the committed "
             f"profiles. Held-out steps only (never fitted on), each timed as one CUDA graph, against the "
             f"profiled model's GPU time. APE = |predicted - measured| / measured. Target for `profiled`: "
             f"mean <= {TARGET_MEAN_APE:.0%}, p95 <= {TARGET_P95_APE:.0%}.", ""]
    for hardware_name in hardware_names:
        folder = root / hardware_name
        names = models or sorted(d.name for d in folder.glob("*") if has_profiles(d))
        if not names:
            raise ValueError(f"{folder}: no profiles; run `pagesim calibrate --model NAME` on the GPU first")
        for name in names:
            lines += _model_section(folder / name, hardware_name, name)
    return "\n".join(lines) + "\n"


def _model_section(path: Path, hardware_name: str, name: str) -> list[str]:
    import numpy as np

    errors = _errors(path, hardware_name, name)
    prov = json.loads((path / "provenance.json").read_text())
    lines = [f"## {name} on {hardware_name}", "",
             f"{prov.get('gpu', '?')}, driver {prov.get('driver', '?')}, torch {prov.get('torch', '?')}, "
             f"triton {prov.get('triton', '?')}, commit {prov.get('git_commit', '?')}, {prov.get('date_utc', '?')}, "
             f"grid {prov.get('grid', '?')}.", ""]
    tensor = prov.get("tensor_parallel", 1)
    if tensor > 1:
        lines += [f"One GPU of a {tensor}-way tensor-parallel group: the shard's GEMM and attention shapes, "
                  f"timed on one GPU; the group's communication is not in these steps (it is priced "
                  f"from comm.csv where measured, else analytically, sim/parallel.py; whole "
                  f"{tensor}-GPU steps follow the table).", ""]
    lines += ["| steps | n | profiled mean APE | profiled p95 APE | roofline mean APE | roofline p95 APE |",
              "|---|---|---|---|---|---|"]
    groups = [(kind, errors["kind"] == kind) for kind in KINDS]
    groups += [(f"{lay} (all kinds)", errors["layout"] == lay) for lay in ("paged", "contiguous")]
    groups.append(("**all**", np.ones(len(errors), dtype=bool)))
    for label, mask in groups:
        sub = errors[mask]
        if len(sub):
            lines.append(f"| {label} | {len(sub)} | {_stats(sub['profiled'])} | {_stats(sub['roofline'])} |")
    lines += ["", _verdict(errors["profiled"], "profiled"), ""]
    if tensor > 1:
        lines += _tp_section(path, hardware_name, name, tensor)
    elif (path / "tp_steps.csv").is_file():
        lines += _harness_self_check(path)
    return lines


def _harness_self_check(path: Path) -> list[str]:
    """The TP step harness at degree 1 (a group of one GPU) against the
    profile's own whole-step timings of the same held-out steps."""
    import numpy as np
    import pandas as pd

    tp = pd.read_csv(path / "tp_steps.csv")
    own = pd.read_csv(path / "steps.csv").set_index("step_id")["measured_s"]
    dev = (tp["measured_s"] / tp["step_id"].map(own) - 1).abs()
    return [f"Tensor-parallel step harness, self-check (`tp_steps.csv`: the same {len(tp)} held-out steps run "
            f"by `kernels/distributed/tp_steps.py` in a group of one GPU, collectives in the captured graph): "
            f"{dev.mean():.1%} mean, {np.percentile(dev, 95):.1%} p95 from this profile's own timings.", ""]


def _tp_section(path: Path, hardware_name: str, name: str, tensor: int) -> list[str]:
    """Whole tensor-parallel steps (``tp_steps.csv``, timed across the
    group's GPUs by ``kernels/distributed/tp_steps.py``) against the shard's
    profiled GPU time plus communication, measured (``comm.csv``) and analytic."""
    import numpy as np

    tp_path = path / "tp_steps.csv"
    if not tp_path.is_file():
        return [f"Whole {tensor}-GPU steps: not measured yet (`tp_steps.csv` is written by "
                f"`python -m kernels.distributed.tp_steps` on a machine with {tensor} GPUs).", ""]
    errors = tp_step_errors(path, hardware_name, name, tensor)
    lines = [f"Whole {tensor}-GPU steps (`tp_steps.csv`, {len(errors)} held-out steps, timed across the "
             f"group): the shard's profiled GPU time plus communication.", "",
             "| steps | n | + measured communication: mean APE | p95 APE | + analytic communication: mean APE "
             "| p95 APE |", "|---|---|---|---|---|---|"]
    for label, mask in [*((kind, errors["kind"] == kind) for kind in KINDS),
                        ("**all**", np.ones(len(errors), dtype=bool))]:
        sub = errors[mask]
        if len(sub):
            lines.append(f"| {label} | {len(sub)} | {_stats(sub['measured'], 'no comm.csv')} | "
                         f"{_stats(sub['analytic'])} |")
    best = errors["measured"] if not errors["measured"].isna().all() else errors["analytic"]
    return lines + ["", _verdict(best, f"tp{tensor} whole steps"), ""]


def tp_step_errors(path: Path, hardware_name: str, name: str, tensor: int):
    """One row per measured TP step: kind, layout, APE with measured and with
    analytic communication (NaN where no ``comm.csv`` covers the degree)."""
    import numpy as np
    import pandas as pd

    from sim.batch import Batch
    from sim.cost.profiled import ProfiledCostModel
    from sim.parallel import CommModel, Parallelism, ParallelCostModel, read_collectives, resolve_profiled
    from sim.presets import MODELS, resolve_hardware

    full = MODELS[name.rpartition("-tp")[0]]
    hardware = resolve_hardware(hardware_name)
    inner = ProfiledCostModel.from_dir(path, resolve_profiled(name), hardware, engine=False)
    par = Parallelism(tensor=tensor)
    collectives = read_collectives(path.parent / "comm.csv", tensor)
    analytic = ParallelCostModel(inner, CommModel(full, hardware, par))
    measured = (ParallelCostModel(inner, CommModel(full, hardware, par, collectives, str(path.parent / "comm.csv")))
                if collectives is not None else None)
    steps = pd.read_csv(path / "tp_steps.csv")
    rows = []
    for r in steps[steps["tensor"] == tensor].itertuples(index=False):
        batch = Batch(tuple(json.loads(r.prefill_new_tokens)), tuple(json.loads(r.prefill_context_tokens)),
                      tuple(json.loads(r.decode_context_tokens)), kv_layout=r.layout)
        rows.append({"kind": r.kind, "layout": r.layout,
                     "analytic": abs(analytic.step_time(batch) - r.measured_s) / r.measured_s,
                     "measured": np.nan if measured is None else
                     abs(measured.step_time(batch) - r.measured_s) / r.measured_s})
    if not rows:
        raise ValueError(f"{path / 'tp_steps.csv'}: no steps of tensor degree {tensor}")
    return pd.DataFrame(rows)


def _stats(values, missing: str = "roofline unavailable") -> str:
    """``mean | p95`` of an APE column for a table row (``missing`` twice where it has none)."""
    import numpy as np

    if values.isna().all():
        return f"{missing} | {missing}"
    return f"{values.mean():.1%} | {np.percentile(values, 95):.1%}"


def _verdict(values, what: str) -> str:
    """Whether an APE column meets the targets, as a sentence."""
    import numpy as np

    mean, p95 = values.mean(), np.percentile(values, 95)
    verdict = "meets" if mean <= TARGET_MEAN_APE and p95 <= TARGET_P95_APE else "MISSES"
    return f"{what} {verdict} the target: mean {mean:.1%}, p95 {p95:.1%}."


def _errors(path: Path, hardware_name: str, name: str):
    """One row per held-out step: kind, layout, APE of each model (NaN: unavailable)."""
    import numpy as np
    import pandas as pd

    from sim.batch import Batch
    from sim.cost.profiled import ProfiledCostModel
    from sim.parallel import resolve_profiled
    from sim.presets import resolve_hardware

    model, hardware = resolve_profiled(name), resolve_hardware(hardware_name)
    held = read_heldout_steps(path / "steps.csv")
    # steps.csv times whole steps as CUDA graphs: compare the GPU-time model
    # (the engine's launch and host terms are checked on real serving runs)
    models = {"profiled": ProfiledCostModel.from_dir(path, model, hardware, engine=False),
              "roofline": _roofline(model, hardware)}
    rows = []
    for r in held.itertuples(index=False):
        batch = Batch(tuple(json.loads(r.prefill_new_tokens)), tuple(json.loads(r.prefill_context_tokens)),
                      tuple(json.loads(r.decode_context_tokens)), kv_layout=r.layout)
        row = {"kind": r.kind, "layout": r.layout}
        for key, cost in models.items():
            row[key] = np.nan if cost is None else abs(cost.step_time(batch) - r.measured_s) / r.measured_s
        rows.append(row)
    return pd.DataFrame(rows)


def read_heldout_steps(steps_path: Path):
    """The held-out rows of a profile's ``steps.csv`` (never fitted on)."""
    import pandas as pd

    if not steps_path.is_file():
        raise ValueError(f"{steps_path}: missing; the held-out steps come from profiling the model "
                         f"(pagesim calibrate)")
    steps = pd.read_csv(steps_path)
    held = steps[steps["split"] == "heldout"]
    if held.empty:
        raise ValueError(f"{steps_path}: no held-out steps (split == 'heldout')")
    return held


def _roofline(model, hardware):
    try:
        from sim.cost.roofline import RooflineCostModel
    except ImportError:
        return None
    return RooflineCostModel(model, hardware)
