"""A suite of real runs: one YAML naming a base config and, per run, the
dotted overrides that make it (``experiments/configs/fidelity/suite.yaml``).

    base: {name: ..., model: ..., workload: ..., engine: ...}
    runs:
      llama-2-7b-static-contiguous-light: {model: llama-2-7b, engine.batching.policy: static, ...}

``pagesim serve-suite SUITE --out DIR`` serves every run (or those ``--only``
selects) into ``DIR/<run>/``; a run whose directory already holds the
output of the same resolved config is skipped, so an interrupted suite
resumes and a suite can be split across several device sessions.
"""
from __future__ import annotations

import copy
import fnmatch
import time
from pathlib import Path

import yaml

from experiments.config import ConfigError, ExperimentConfig, read_yaml, resolved_dict, set_path, validate
from experiments.outputs import write_marker


def load_suite(path: Path) -> dict[str, ExperimentConfig]:
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("base"), dict) or not isinstance(raw.get("runs"), dict):
        raise ConfigError(f"{path}: a suite is a mapping with 'base' (a config) and 'runs' (name -> overrides)")
    unknown = set(raw) - {"base", "runs"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: base, runs")
    runs = {}
    for name, overrides in raw["runs"].items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: runs.{name}: give a mapping of dotted config paths to values")
        if not str(name).replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"{path}: runs.{name}: a run name is letters, digits, '-', '_' and '.'")
        tree = copy.deepcopy(raw["base"])
        for key, value in overrides.items():
            set_path(tree, key, value)
        tree.setdefault("name", name)
        runs[str(name)] = validate(tree, f"{path}: runs.{name}")
    return runs


def select(runs: dict[str, ExperimentConfig], patterns: list[str]) -> dict[str, ExperimentConfig]:
    if not patterns:
        return runs
    chosen = {n: c for n, c in runs.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
    if not chosen:
        raise ConfigError(f"--only {' '.join(patterns)}: matches none of the suite's {len(runs)} runs")
    return chosen


def is_done(run_dir: Path, cfg: ExperimentConfig) -> bool:
    """The directory holds a finished real run of this very config (the
    engine's own KV capacity aside, which it fills in, and the cost model,
    which a real run does not use)."""
    if not (run_dir / "summary.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    try:          # through today's schema, so fields added since keep their defaults
        done = resolved_dict(validate(yaml.safe_load((run_dir / "config.yaml").read_text())))
    except (ConfigError, yaml.YAMLError):
        return False
    want = resolved_dict(cfg)
    for tree in (done, want):
        tree.get("engine", {}).get("memory", {}).pop("num_tokens", None)
        tree.get("engine", {}).pop("cost_model", None)
    return done == want


def serve_suite(suite: Path, out: Path, only: list[str], plots: bool = True, graphs: bool = True,
                log=print) -> list[Path]:
    """Serve the suite's runs into ``out/<run>/`` (``graphs``: capture CUDA graphs)."""
    from experiments.runner import write_outputs
    from experiments.serve import Device, serve_experiment
    from kernels.engine.memory import release_device_memory

    runs = select(load_suite(suite), only)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "serve-suite")
    written = []
    for i, (name, cfg) in enumerate(runs.items()):
        run_dir = out / name
        if is_done(run_dir, cfg):
            log(f"[{i + 1}/{len(runs)}] {name}: done already, skipped")
            written.append(run_dir)
            continue
        started = time.perf_counter()
        output = serve_experiment(cfg, Device(use_graphs=graphs), log=lambda note: log(f"    {note}"))
        write_outputs(output, run_dir, plots=plots)
        s = output.summary
        log(f"[{i + 1}/{len(runs)}] {name}: {s['counts']['finished']}/{s['counts']['arrived']} finished, "
            f"{s['throughput_rps']:.2f} req/s, {s['sim_steps']} steps, {s['preemptions']} preemptions, "
            f"wall {time.perf_counter() - started:.1f} s")
        written.append(run_dir)
        del output
        release_device_memory()         # the next run plans its KV cache from an empty GPU
    return written
