"""The bad-input corpus: every way a user can hand pagesim something wrong,
each with the words its one-line error must contain.

A case is a command line run in a fresh directory that holds ``exp.yaml``
(a config tree, raw text, or nothing), any extra ``files`` (text or bytes),
and ``out/``, an earlier pagesim run that a failing command must leave
byte-for-byte as it was. ``tests/test_bad_input_corpus.py`` runs them all.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

RUN = ["run", "exp.yaml", "--out", "out", "--quiet", "--no-plots"]
SWEEP = ["sweep", "exp.yaml", "--out", "out", "--quiet", "--no-plots", "--jobs", "1"]
CAPACITY = ["capacity", "exp.yaml", "--out", "cap", "--quiet", "--jobs", "1"]
HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"

BASE: dict = {
    "name": "corpus",
    "seed": 0,
    "model": "llama-2-7b",
    "hardware": "h100-sxm",
    "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate_rps": 5.0},
                 "lengths": {"preset": "alpaca"}},
    "engine": {"cost_model": {"kind": "roofline"}},
}
TINY_MODEL = {"name": "tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 4,
              "head_dim": 16, "ffn_size": 128, "vocab_size": 100, "max_context_tokens": 64}


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    config: dict | str | None
    expect: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)


_UNSET = object()


def with_(changes: dict[str, Any] | None = None, base: dict = BASE, drop: tuple[str, ...] = ()) -> dict:
    """``base`` with dotted paths set (a value of ``_UNSET`` deletes the key)."""
    tree = copy.deepcopy(base)
    for dotted, value in (changes or {}).items():
        *parents, last = dotted.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = tree
        for key in parents:
            node = node[key]
        del node[last]
    return tree


def run(id: str, changes: dict | None, *expect: str, extra: tuple[str, ...] = (), **kw) -> Case:
    return Case(id, [*RUN, *extra], with_(changes), expect, **kw)


def trace(id: str, text: str | bytes, *expect: str, trace_opts: dict | None = None, **workload) -> Case:
    """A run on ``t.csv`` holding ``text``."""
    tree = with_({"workload": {"trace": {"path": "t.csv", **(trace_opts or {})}, **workload}})
    return Case(id, RUN, tree, expect, files={"t.csv": text})


def sweep(id: str, grid: Any, *expect: str, extra: tuple[str, ...] = ()) -> Case:
    return Case(id, [*SWEEP, *extra], with_({"sweep": grid}), expect)


CASES: list[Case] = [
    # ------------------------------------------------------------ config files
    Case("yaml-broken", RUN, "name: x\nworkload: {num_requests: [5}\n", ("exp.yaml: line 2: not valid YAML",)),
    Case("yaml-empty", RUN, "", ("exp.yaml", "empty")),
    Case("yaml-top-level-list", RUN, "- 1\n- 2\n", ("exp.yaml", "mapping")),
    Case("yaml-top-level-scalar", RUN, "42\n", ("exp.yaml", "mapping")),
    Case("yaml-binary", RUN, None, ("exp.yaml",), files={"exp.yaml": b"\xff\xfe\x00\x01garbage\x00"}),
    Case("yaml-tabs", RUN, "name: x\n\tworkload: 1\n", ("exp.yaml", "not valid YAML")),
    Case("config-missing", RUN, None, ("exp.yaml: no such config file",)),
    Case("config-is-directory", ["run", "cfgdir", "--out", "out", "--quiet"], None, ("cfgdir",),
         files={"cfgdir/a.yaml": "name: x\n"}),
    run("unknown-top-key", {"bogus": 1}, "bogus: unknown key; allowed:"),
    run("unknown-nested-key", {"engine.memory.blocksize": 16}, "engine.memory.blocksize: unknown key; allowed:"),
    run("unknown-batching-key", {"engine.batching.max_batch": 4}, "engine.batching.max_batch: unknown key"),
    run("unknown-workload-key", {"workload.requests": 4}, "workload.requests: unknown key"),
    run("name-not-string", {"name": ["a"]}, "name:"),
    run("seed-negative", {"seed": -1}, "seed:", "greater than or equal to 0"),
    run("seed-string", {"seed": "abc"}, "seed:", "valid integer"),
    run("seed-bool", {"seed": True}, "seed:", "valid integer"),
    run("seed-float", {"seed": 1.5}, "seed:", "valid integer"),
    run("model-unknown", {"model": "gpt-9"}, "model:", "unknown model 'gpt-9'"),
    run("hardware-unknown", {"hardware": "tpu-v9"}, "hardware:", "unknown hardware 'tpu-v9'"),
    run("model-inline-zero-layers", {"model": {**TINY_MODEL, "num_layers": 0}}, "model.num_layers"),
    run("model-inline-missing-field", {"model": {k: v for k, v in TINY_MODEL.items() if k != "hidden_size"}},
        "model", "hidden_size"),
    run("model-inline-unknown-field", {"model": {**TINY_MODEL, "layers": 3}}, "model", "layers"),
    run("hardware-inline-bad", {"hardware": {"name": "x", "memory_bytes": -5}}, "hardware"),
    run("horizon-negative", {"horizon_s": -1.0}, "horizon_s:", "greater than 0"),
    run("horizon-too-late", {"horizon_s": 1e20}, "horizon_s:", "less than or equal to"),
    run("horizon-nan", {"horizon_s": float("nan")}, "horizon_s:"),
    run("fast-forward-not-bool", {"fast_forward": "maybe"}, "fast_forward:", "valid boolean"),
    run("timeline-rows-one", {"timeline_max_rows": 1}, "timeline_max_rows"),
    run("timeline-rows-zero", {"timeline_max_rows": 0}, "timeline_max_rows:", "greater than or equal to 2"),
    # ------------------------------------------------------------ workload
    run("num-requests-bool", {"workload.num_requests": True}, "workload.num_requests:", "valid integer",
        "(got True)"),
    run("num-requests-zero", {"workload.num_requests": 0}, "workload.num_requests:", "greater than 0"),
    run("num-requests-negative", {"workload.num_requests": -5}, "workload.num_requests:", "greater than 0"),
    run("num-requests-fraction", {"workload.num_requests": 2.5}, "workload.num_requests:", "valid integer"),
    run("num-requests-e-string", {"workload.num_requests": "1e20"}, "workload.num_requests:", "valid integer"),
    run("num-requests-beyond-2-53", {"workload.num_requests": 10**20}, "workload.num_requests:",
        "less than or equal to 9007199254740992"),
    run("num-requests-beyond-memory", {"workload.num_requests": 10**15, "workload.arrival.rate_rps": 1e7}, "workload.num_requests:",
        "of memory to simulate", "available"),
    run("num-requests-missing", None, "num_requests", "required", extra=("--set", "workload.num_requests=null")),
    run("arrival-process-unknown", {"workload.arrival": {"process": "bursty", "rate_rps": 1.0}},
        "workload.arrival", "bursty"),
    run("arrival-missing-rate", {"workload.arrival": {"process": "poisson"}}, "workload.arrival", "rate_rps"),
    run("rate-zero", {"workload.arrival.rate_rps": 0}, "workload.arrival.rate_rps:", "greater than 0"),
    run("rate-negative", {"workload.arrival.rate_rps": -2.5}, "workload.arrival.rate_rps:", "(got -2.5)"),
    run("rate-string", {"workload.arrival.rate_rps": "fast"}, "workload.arrival.rate_rps:", "valid number"),
    run("rate-inf", {"workload.arrival.rate_rps": float("inf")}, "workload.arrival.rate_rps:", "finite"),
    run("rate-nan", {"workload.arrival.rate_rps": float("nan")}, "workload.arrival.rate_rps:", "finite"),
    run("rate-underflows-the-clock", {"workload.arrival.rate_rps": 1e-300}, "workload.arrival.rate_rps:",
        "the clock holds times up to"),
    run("gamma-cv-zero", {"workload.arrival": {"process": "gamma", "rate_rps": 1.0, "cv": 0}},
        "workload.arrival.cv:", "greater than 0"),
    run("trace-process-without-trace", {"workload.arrival": {"process": "trace"}}, "workload",
        "'trace' needs the 'trace' section"),
    run("lengths-missing", None, "lengths", extra=("--set", "workload.lengths=null")),
    run("lengths-preset-unknown", {"workload.lengths": {"preset": "novels"}}, "workload.lengths", "novels"),
    run("lengths-dist-unknown", {"workload.lengths": {"prompt": {"dist": "zipf"}, "output": {"dist": "fixed", "value": 3}}},
        "workload.lengths.prompt", "zipf"),
    run("lengths-fixed-zero", {"workload.lengths": {"prompt": {"dist": "fixed", "value": 0},
                                                    "output": {"dist": "fixed", "value": 3}}},
        "workload.lengths.prompt.value:", "greater than 0"),
    run("lengths-uniform-inverted", {"workload.lengths": {"prompt": {"dist": "uniform", "low": 9, "high": 3},
                                                          "output": {"dist": "fixed", "value": 3}}},
        "workload.lengths.prompt"),
    run("lengths-lognormal-mean-outside", {"workload.lengths": {
        "prompt": {"dist": "lognormal", "mean": 5000, "sigma": 1.0, "min_tokens": 1, "max_tokens": 100},
        "output": {"dist": "fixed", "value": 3}}}, "workload.lengths.prompt", "mean"),
    run("lengths-only-prompt", {"workload.lengths": {"prompt": {"dist": "fixed", "value": 3}}},
        "workload.lengths"),
    # ------------------------------------------------------------ engine
    run("policy-unknown", {"engine.batching.policy": "dynamic"}, "engine.batching.policy:",
        "'static' or 'continuous'", "(got 'dynamic')"),
    run("max-batch-zero", {"engine.batching.max_batch_size": 0}, "engine.batching.max_batch_size:"),
    run("max-batch-bool", {"engine.batching.max_batch_size": True}, "engine.batching.max_batch_size:",
        "valid integer"),
    run("max-batch-tokens-negative", {"engine.batching.max_batch_tokens": -1}, "engine.batching.max_batch_tokens:"),
    run("max-wait-negative", {"engine.batching.max_wait_s": -1.0}, "engine.batching.max_wait_s:"),
    run("preemption-unknown", {"engine.batching.preemption": "evict"}, "engine.batching.preemption:"),
    run("swap-with-contiguous", {"engine.batching.preemption": "swap", "engine.memory.layout": "contiguous"},
        "engine.batching.preemption:", "paged only"),
    run("swap-with-static", {"engine.batching.preemption": "swap", "engine.batching.policy": "static"},
        "engine.batching.preemption:", "continuous only"),
    run("layout-unknown", {"engine.memory.layout": "radix"}, "engine.memory.layout:"),
    run("block-size-not-pow2", {"engine.memory.block_size": 24}, "engine.memory.block_size:", "power of two"),
    run("block-size-zero", {"engine.memory.block_size": 0}, "engine.memory.block_size:"),
    run("block-size-huge", {"engine.memory.block_size": 1024}, "engine.memory.block_size:", "power of two"),
    run("gpu-util-zero", {"engine.memory.gpu_memory_utilization": 0.0}, "engine.memory.gpu_memory_utilization:"),
    run("gpu-util-over-one", {"engine.memory.gpu_memory_utilization": 1.5}, "engine.memory.gpu_memory_utilization:"),
    run("watermark-one", {"engine.memory.watermark": 1.0}, "engine.memory.watermark:"),
    run("reservation-unknown", {"engine.memory.reservation": "min"}, "engine.memory.reservation:"),
    run("num-tokens-huge", {"engine.memory.num_tokens": 10**20}, "engine.memory.num_tokens:",
        "less than or equal to"),
    run("num-tokens-e-string", {"engine.memory.num_tokens": "1e20"}, "engine.memory.num_tokens:", "valid integer"),
    run("num-blocks-huge", {"engine.memory.num_blocks": 10**17}, "engine.memory.num_blocks:"),
    run("num-blocks-and-tokens", {"engine.memory.num_blocks": 10, "engine.memory.num_tokens": 160},
        "engine.memory", "not both"),
    run("num-blocks-contiguous", {"engine.memory.num_blocks": 10, "engine.memory.layout": "contiguous"},
        "engine.memory", "paged only"),
    run("swap-space-negative", {"engine.memory.swap_space_gb": -1}, "engine.memory.swap_space_gb:"),
    run("cache-too-small-for-weights", {"model": "llama-2-70b", "hardware": "a100-40gb"}, "memory"),
    run("replicas-zero", {"engine.replicas": 0}, "engine.replicas:"),
    run("router-unknown", {"engine.router": "random"}, "engine.router:"),
    run("cost-kind-unknown", {"engine.cost_model": {"kind": "magic"}}, "engine.cost_model",
        "unknown cost model kind"),
    run("cost-linear-missing", {"engine.cost_model": {"kind": "linear", "base_s": 0.01}}, "engine.cost_model",
        "per_prefill_token_s"),
    run("cost-linear-negative", {"engine.cost_model": {"kind": "linear", "base_s": -0.01, "per_prefill_token_s": 0,
                                                       "per_decode_seq_s": 0, "per_context_token_s": 0}},
        "engine.cost_model.base_s:"),
    run("cost-profiled-missing-dir", {"engine.cost_model": {"kind": "profiled", "profile_dir": "nowhere"}},
        "nowhere"),
    run("cost-overhead-negative", {"engine.cost_model": {"kind": "roofline", "step_overhead_s": -1}},
        "engine.cost_model.step_overhead_s:"),
    # ------------------------------------------------------------ --set
    Case("set-without-equals", [*RUN, "--set", "engine.batching.policy"], BASE,
         ("--set 'engine.batching.policy': expected KEY=VALUE",)),
    Case("set-empty-key", [*RUN, "--set", "=3"], BASE, ("--set '=3': KEY must be a dotted path",)),
    Case("set-leading-dot", [*RUN, "--set", ".seed=3"], BASE, ("--set '.seed=3': KEY must be a dotted path",)),
    Case("set-double-dot", [*RUN, "--set", "engine..replicas=3"], BASE, ("KEY must be a dotted path",)),
    Case("set-bad-yaml", [*RUN, "--set", "engine.batching.policy=[static"], BASE,
         ("--set 'engine.batching.policy=[static': value is not valid YAML",)),
    Case("set-unknown-key", [*RUN, "--set", "engine.batching.max_batch=4"], BASE,
         ("engine.batching.max_batch: unknown key; allowed:",)),
    Case("set-through-scalar", [*RUN, "--set", "seed.value=3"], BASE, ("--set seed.value: seed is not a mapping",)),
    Case("set-num-requests-true", [*RUN, "--set", "workload.num_requests=true"], BASE,
         ("workload.num_requests:", "(got True)")),
    Case("set-num-tokens-1e20", [*RUN, "--set", "engine.memory.num_tokens=1e20"], BASE,
         ("engine.memory.num_tokens:", "valid integer")),
    Case("set-rate-tiny", [*RUN, "--set", "workload.arrival.rate_rps=1.0e-300"], BASE,
         ("workload.arrival.rate_rps:", "the clock holds times")),
    Case("set-model-unknown", [*RUN, "--set", "model=gpt-9"], BASE, ("model:", "unknown model")),
    # ------------------------------------------------------------ traces
    Case("trace-missing-file", RUN, with_({"workload": {"trace": {"path": "nowhere.csv"}}}),
         ("nowhere.csv: no such trace file",)),
    Case("trace-is-directory", RUN, with_({"workload": {"trace": {"path": "tdir"}}}), ("tdir",),
         files={"tdir/x.csv": HEADER}),
    trace("trace-empty", "", "t.csv: empty file"),
    trace("trace-header-only", HEADER, "t.csv", "no requests"),
    trace("trace-unknown-header", "a,b,c\n1,2,3\n", "t.csv: cannot tell the trace format"),
    trace("trace-binary", bytes(range(256)) * 8, "t.csv: not a UTF-8 text file"),
    trace("trace-nul-bytes", HEADER + "0,1,\x00\x00\n", "t.csv: row 1:"),
    trace("trace-word-in-tokens", HEADER + "0,10,5\n1,12,lots\n", "t.csv: row 2: num_decode_tokens is not a finite number"),
    trace("trace-missing-cell", HEADER + "0,10,5\n1,,5\n", "t.csv: row 2: missing num_prefill_tokens"),
    trace("trace-extra-field", HEADER + "0,10,5\n1,12,6,7\n", "t.csv: row 2: expected 3 fields, saw 4"),
    trace("trace-negative-tokens", HEADER + "0,-10,5\n", "t.csv: row 1: num_prefill_tokens must be a whole number"),
    trace("trace-fractional-tokens", HEADER + "0,10.5,5\n", "t.csv: row 1: num_prefill_tokens must be a whole number"),
    trace("trace-1e20-tokens", HEADER + "0,10,5\n1,1e20,5\n", "t.csv: row 2: num_prefill_tokens must be at most"),
    trace("trace-inf-tokens", HEADER + "0,inf,5\n", "t.csv: row 1: num_prefill_tokens is not a finite number"),
    trace("trace-negative-time", HEADER + "-1,10,5\n", "t.csv: row 1: arrived_at is negative"),
    trace("trace-1e300-time", HEADER + "0,10,5\n1e300,10,5\n", "t.csv: row 2: arrived_at", "clock loses precision"),
    trace("trace-time-scale-zero", HEADER + "0,10,5\n", "workload.arrival.time_scale:", "greater than 0",
          arrival={"time_scale": 0}),
    trace("trace-time-scale-negative", HEADER + "0,10,5\n", "workload.arrival.time_scale:",
          arrival={"time_scale": -2}),
    trace("trace-time-scale-overflows", HEADER + "0,10,5\n100,10,5\n", "workload.arrival.time_scale:",
          "the clock holds times", arrival={"time_scale": 1e300}),
    trace("trace-limit-zero", HEADER + "0,10,5\n", "workload.trace.limit:", trace_opts={"limit": 0}),
    trace("trace-format-unknown", HEADER + "0,10,5\n", "workload.trace.format:", trace_opts={"format": "json"}),
    trace("trace-csv-without-columns", HEADER + "0,10,5\n", "workload.trace", "needs 'columns'",
          trace_opts={"format": "csv"}),
    trace("trace-window-inverted", HEADER + "0,10,5\n", "workload.trace", "end_s",
          trace_opts={"start_s": 5.0, "end_s": 1.0}),
    trace("trace-max-context-one", HEADER + "0,10,5\n", "workload.trace.max_context_tokens:",
          trace_opts={"max_context_tokens": 1}),
    trace("trace-azure-bad-datetime", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,5\n",
          "t.csv: row 1: TIMESTAMP is not a date-time"),
    # ------------------------------------------------------------ sweeps
    sweep("sweep-invalid-value", {"engine.memory.block_size": [16, 24]}, "sweep engine.memory.block_size=24:",
          "power of two"),
    sweep("sweep-not-a-list", {"seed": 3}, "sweep.seed:", "valid list"),
    sweep("sweep-empty-list", {"seed": []}, "sweep.seed: give at least one value"),
    sweep("sweep-unknown-key", {"engine.batching.max_batch": [1, 2]}, "engine.batching.max_batch: unknown key"),
    sweep("sweep-bad-key-syntax", {"engine..policy": ["static"]}, "sweep key 'engine..policy'"),
    sweep("sweep-not-a-mapping", [1, 2], "sweep:", "valid dictionary"),
    sweep("sweep-slo-unknown-metric", {"seed": [0, 1]}, "--slo latency_p99: not a sweep.csv metric; allowed:",
          extra=("--slo", "latency_p99<=1")),
    sweep("sweep-slo-bad-syntax", {"seed": [0, 1]}, "--slo 'ttft<1'", extra=("--slo", "ttft<1")),
    Case("sweep-point-too-big", SWEEP, with_({"workload.arrival.rate_rps": 1e7,
                                              "sweep": {"workload.num_requests": [10, 10**15]}}),
         ("workload.num_requests:", "of memory")),
    sweep("sweep-point-too-late", {"workload.num_requests": [10, 10**10]}, "workload.num_requests=10000000000:",
          "workload.arrival.rate_rps:", "the clock holds times"),
    Case("sweep-without-section", SWEEP, BASE, ("exp.yaml: has no 'sweep:' section",)),
    Case("sweep-jobs-zero", [*SWEEP[:-1], "0"], with_({"sweep": {"seed": [0]}}), ("--jobs must be >= 1 (got 0)",)),
    Case("sweep-jobs-word", [*SWEEP[:-1], "two"], with_({"sweep": {"seed": [0]}}), ("--jobs", "invalid int value")),
    # ------------------------------------------------------------ CLI arguments
    Case("cli-no-command", [], BASE, ("the following arguments are required: COMMAND",)),
    Case("cli-unknown-command", ["simulate", "exp.yaml"], BASE, ("invalid choice: 'simulate'",)),
    Case("cli-run-without-out", ["run", "exp.yaml"], BASE, ("the following arguments are required: --out",)),
    Case("cli-run-unknown-flag", [*RUN, "--bogus"], BASE, ("unrecognized arguments: --bogus",)),
    Case("cli-plot-not-a-run", ["plot", "elsewhere"], BASE, ("elsewhere:", "not a run (summary.json), sweep (sweep.csv) or capacity (capacity.csv) directory"),
         files={"elsewhere/x.txt": "x"}),
    Case("cli-plot-missing-dir", ["plot", "nowhere"], BASE, ("nowhere",)),
    Case("cli-stats-missing-trace", ["workloads", "stats", "nowhere.csv"], None, ("nowhere.csv",)),
    Case("cli-stats-limit-zero", ["workloads", "stats", "t.csv", "--limit", "0"], None, ("limit",),
         files={"t.csv": HEADER + "0,10,5\n"}),
    Case("cli-stats-time-scale-zero", ["workloads", "stats", "t.csv", "--time-scale", "0"], None, ("time_scale",),
         files={"t.csv": HEADER + "0,10,5\n"}),
    Case("cli-stats-half-columns", ["workloads", "stats", "t.csv", "--arrival-column", "a"], None,
         ("--arrival-column, --prompt-column and --output-column must be given together",),
         files={"t.csv": HEADER + "0,10,5\n"}),
    Case("cli-stats-plot-format", ["workloads", "stats", "t.csv", "--plot", "h.xyz"], None,
         ("h.xyz: unsupported image format",), files={"t.csv": HEADER + "0,10,5\n"}),
    Case("cli-stats-plot-is-directory", ["workloads", "stats", "t.csv", "--plot", "out"], None,
         ("--plot out: is a directory",), files={"t.csv": HEADER + "0,10,5\n"}),
    Case("cli-fidelity-not-a-run", ["fidelity", "elsewhere", "--out", "fid"], None, ("elsewhere",),
         files={"elsewhere/x.txt": "x"}),
    Case("cli-serve-suite-missing", ["serve-suite", "nosuite.yaml", "--out", "out"], None, ("nosuite.yaml",)),
    Case("cli-calibrate-unknown-hardware", ["calibrate", "--check", "--hardware", "tpu-v9", "--results", "-"],
         None, ("tpu-v9",)),
    # ------------------------------------------------------------ parallelism and capacity
    Case("parallel-tensor-does-not-divide", RUN, with_({"engine.parallel": {"tensor": 3}}),
         ("engine.parallel.tensor: llama-2-7b has 32 attention heads, which 3 does not divide", "allowed: 1, 2, 4")),
    Case("parallel-too-many-stages", RUN, with_({"engine.parallel": {"pipeline": 33}}),
         ("engine.parallel.pipeline: llama-2-7b has 32 layers, fewer than 33 stages",)),
    Case("parallel-unknown-key", RUN, with_({"engine.parallel": {"tensors": 2}}),
         ("engine.parallel.tensors: unknown key; allowed: pipeline, tensor",)),
    Case("parallel-serve", ["serve", "exp.yaml", "--out", "srv", "--quiet"],
         with_({"engine.parallel": {"tensor": 2, "pipeline": 2}}),
         ("engine.parallel.pipeline: pagesim serve runs no pipeline stages; allowed: 1 (got 2)",)),
    Case("capacity-unknown-slo", [*CAPACITY, "--slo", "ttft_p99<=1"], BASE,
         ("--slo ttft_p99: unknown metric", "ttft_s_p99")),
    Case("capacity-slo-zero-limit", [*CAPACITY, "--slo", "ttft_s_p99<=0"], BASE,
         ("the limit must be a finite number > 0",)),
    Case("capacity-attainment-without-request-slo", [*CAPACITY, "--attainment", "0.9", "--slo", "ttft_s_p99<=1"],
         BASE, ("--attainment: give per-request objectives with it",)),
    Case("capacity-attainment-above-one", [*CAPACITY, "--attainment", "1.5"], BASE, ("--attainment", "(0, 1]")),
    Case("capacity-negative-target", [*CAPACITY, "--target-rate", "-4"], BASE, ("--target-rate: must be a rate",)),
    Case("capacity-cost-unknown-hardware", [*CAPACITY, "--target-rate", "4", "--gpu-cost", "tpu-v9=2"], BASE,
         ("--gpu-cost tpu-v9: unknown hardware", "h200")),
    Case("capacity-cost-not-a-price", [*CAPACITY, "--target-rate", "4", "--gpu-cost", "h200=cheap"], BASE,
         ("--gpu-cost 'h200=cheap': expected HARDWARE=DOLLARS_PER_GPU_HOUR",)),
    Case("capacity-cost-missing-for-candidate", [*CAPACITY, "--target-rate", "4", "--gpu-cost", "h200=3"], BASE,
         ("--gpu-cost: no price for h100-sxm",)),
    Case("capacity-unsplittable-tensor-in-sweep", CAPACITY,
         with_({"sweep": {"engine.parallel.tensor": [1, 3]}}),
         ("sweep engine.parallel.tensor=3", "which 3 does not divide")),
    Case("capacity-target-with-swept-replicas", [*CAPACITY, "--target-rate", "4"],
         with_({"sweep": {"engine.replicas": [1, 2]}}), ("engine.replicas is what --target-rate searches",)),
    Case("capacity-seeds-zero", [*CAPACITY, "--seeds", "0"], BASE, ("--seeds", "must be in [1, 100]")),
    # ------------------------------------------------------------ prefix caching
    Case("prefix-caching-contiguous", RUN, with_({"engine.memory": {"layout": "contiguous", "prefix_caching": True}}),
         ("engine.memory.prefix_caching: applies to layout: paged only",)),
    Case("prefix-caching-static", RUN, with_({"engine.memory": {"prefix_caching": True},
                                              "engine.batching": {"policy": "static"}}),
         ("memory.prefix_caching: applies to policy: continuous only",)),
    Case("prefix-turns-with-trace", RUN, with_({"workload": {"trace": "azure_conv_2023", "num_requests": 10,
                                                             "prefix": {"turns": 2}}}),
         ("workload.prefix.turns: conversations are generated from a synthetic arrival process",)),
    Case("prefix-unknown-key", RUN, with_({"workload.prefix": {"system_tokens": 100}}),
         ("workload.prefix.system_tokens: unknown key", "shared_tokens")),
    Case("prefix-negative-think", RUN, with_({"workload.prefix": {"turns": 2, "think_time_s": -1}}),
         ("workload.prefix.think_time_s",)),
    Case("chunked-prefill-static", RUN, with_({"engine.batching": {"policy": "static", "chunked_prefill": True}}),
         ("engine.batching.chunked_prefill: applies to policy: continuous only",)),
    Case("chunk-below-a-block", RUN, with_({"engine.batching": {"chunked_prefill": True, "max_batch_tokens": 8}}),
         ("engine.batching.max_batch_tokens: chunked prefill needs a budget of at least one KV block "
          "(engine.memory.block_size=16), got 8",)),
    Case("chunked-prefill-unmixed", RUN, with_({"engine.batching": {"chunked_prefill": True,
                                                                    "mixed_prefill_decode": False}}),
         ("chunked_prefill: chunks share steps with decodes",)),
    Case("sampling-static", RUN, with_({"workload.sampling": {"n": 2}, "engine.batching": {"policy": "static"}}),
         ("workload.sampling.n: several samples per request need policy: continuous",)),
    Case("sampling-swap", RUN, with_({"workload.sampling": {"n": 2}, "engine.batching": {"preemption": "swap"}}),
         ("workload.sampling.n: several samples per request are preempted by recompute only",)),
    Case("sampling-n-and-beams", RUN, with_({"workload.sampling": {"n": 2, "beam_width": 2}}),
         ("workload.sampling", "give n (parallel sampling) or beam_width (beam search), not both")),
    Case("beams-static", RUN, with_({"workload.sampling": {"beam_width": 2}, "engine.batching": {"policy": "static"}}),
         ("workload.sampling.beam_width: several samples per request need policy: continuous",)),
    Case("sampling-over-batch", RUN, with_({"workload.sampling": {"beam_width": 8},
                                            "engine.batching": {"max_batch_size": 4}}),
         ("workload.sampling.beam_width: 8 sequences per request exceed engine.batching.max_batch_size=4",)),
    Case("sampling-too-many", RUN, with_({"workload.sampling": {"n": 65}}),
         ("workload.sampling.n", "less than or equal to 64")),
    Case("mooncake-bad-row", ["workloads", "stats", "t.jsonl"], None,
         ("t.jsonl: row 2: 600 input tokens need 2 hash ids of 512 tokens, got 1",),
         files={"t.jsonl": '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
                           '{"timestamp": 5, "input_length": 600, "output_length": 2, "hash_ids": [1]}\n'}),
    # ------------------------------------------------------------ output locations
    Case("out-user-directory", ["run", "exp.yaml", "--out", "mine", "--quiet", "--no-plots"], BASE,
         ("--out mine: exists and was not written by pagesim",), files={"mine/notes.txt": "important\n"}),
    Case("out-is-a-file", ["run", "exp.yaml", "--out", "notes.txt", "--quiet", "--no-plots"], BASE,
         ("--out notes.txt: exists and is not a directory",), files={"notes.txt": "important\n"}),
    Case("out-below-a-file", ["run", "exp.yaml", "--out", "notes.txt/run", "--quiet", "--no-plots"], BASE,
         ("notes.txt", "is a file"), files={"notes.txt": "important\n"}),
    Case("out-current-directory", ["run", "exp.yaml", "--out", ".", "--quiet", "--no-plots"], BASE,
         ("--out .: is the current directory",)),
    Case("out-parent-directory", ["run", "exp.yaml", "--out", "..", "--quiet", "--no-plots"], BASE,
         ("--out ..: is the current directory or one of its parents",)),
    Case("out-sweep-user-directory", ["sweep", "exp.yaml", "--out", "mine", "--quiet", "--no-plots"],
         with_({"sweep": {"seed": [0, 1]}}), ("--out mine: exists and was not written by pagesim",),
         files={"mine/notes.txt": "important\n"}),
    Case("out-fidelity-report-user-file", ["fidelity", "out", "--out", "fid", "--report", "notes.md"], None,
         ("--report notes.md: exists and was not written by pagesim",), files={"notes.md": "# my notes\n"}),
    Case("out-calibrate-profiles-user-directory",
         ["calibrate", "--model", "llama-2-7b", "--hardware", "h200", "--profiles", "prof"], None,
         ("--profiles prof/h200/llama-2-7b: exists and was not written by pagesim", "choose a new directory"),
         files={"prof/h200/llama-2-7b/notes.txt": "mine\n"}),
    Case("out-calibrate-results-user-file", ["calibrate", "--check", "--results", "notes.md"], None,
         ("--results notes.md: exists and was not written by pagesim",), files={"notes.md": "# my notes\n"}),
]
