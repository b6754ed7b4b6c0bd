"""Where a whole step's time goes, against its operators timed alone.

    python -m kernels.calibration.diagnose_step --model llama-2-7b \\
        --steps kernels/profiles/h100-sxm/llama-2-7b/steps.csv --ids 52,50,40,44,48

For each chosen row of a profile's ``steps.csv`` (on the GPU, paged layout):

* ``step``: the whole step, graph-replayed after 0.1 s of warm-up, exactly as
  ``kernels.calibration.profile`` times it;
* ``no_gemm``: the same step with every GEMM replaced by an empty output of
  the right shape, so ``step - no_gemm`` is what the GEMMs cost inside it;
* ``gemm_sustained`` / ``gemm_burst``: the step's layer GEMMs (QKV, output,
  MLP) at its token count timed alone and summed over the layers, after 50 ms
  of GEMM-only replay (as the profile's ``gemm.csv``) and with no warm-up.

The calibration check over-predicts mid-size steps of the MHA models
(``docs/calibration.md``); these figures say whether the isolated GEMM timing
or the rest of the step accounts for it. Prints a table and writes it as CSV.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kernels.calibration.inputs import Composition
from kernels.calibration.model import Transformer, random_weights
from sim.presets import MODELS
from kernels.calibration.profile import DEVICE, WEIGHT_SETS, GraphTimer, _copies, _randn, time_step

LAYER_GEMMS = ("qkv", "out", "up", "down")


def gemms_alone_s(model: Transformer, tokens: int, timer: GraphTimer, warm_s: float) -> float:
    """The layer GEMMs of a ``tokens``-row step, timed alone, summed over layers."""
    layer, total = model.weights.layers[0], 0.0
    for op in LAYER_GEMMS:
        weight, bias = getattr(layer, op)
        copies = [(weight.clone(), bias) for _ in range(_copies(weight.numel() * weight.element_size()))]
        x = _randn(tokens, weight.shape[1])
        total += timer(lambda i, x=x, c=copies: model.project(x, c[i]), len(copies),
                       target_s=10e-3, warm_s=warm_s)
        del copies
    return total * model.geom.num_layers


def _empty_projection(x: torch.Tensor, wb) -> torch.Tensor:
    return x.new_empty((x.shape[0], wb[0].shape[0]))


def diagnose(model: Transformer, row: pd.Series, timer: GraphTimer, rng) -> dict:
    comp = Composition(tuple(json.loads(row.prefill_new_tokens)),
                       tuple(json.loads(row.prefill_context_tokens)),
                       tuple(json.loads(row.decode_context_tokens)))
    step_s, _ = time_step(model, comp, "paged", timer, rng)
    model.project = _empty_projection           # instance attribute shadows the method
    try:
        no_gemm_s, _ = time_step(model, comp, "paged", timer, rng)
    finally:
        del model.project
    return dict(step_id=int(row.step_id), kind=row.kind, tokens=comp.num_tokens,
                profiled_step_ms=1e3 * float(row.measured_s), step_ms=1e3 * step_s,
                no_gemm_ms=1e3 * no_gemm_s, gemm_in_step_ms=1e3 * (step_s - no_gemm_s),
                gemm_sustained_ms=1e3 * gemms_alone_s(model, comp.num_tokens, timer, 0.05),
                gemm_burst_ms=1e3 * gemms_alone_s(model, comp.num_tokens, timer, 0.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.calibration.diagnose_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--steps", required=True, type=Path, help="a profile's steps.csv")
    p.add_argument("--ids", required=True, help="comma-separated step_id values (paged rows)")
    p.add_argument("--out", type=Path, default=None, help="CSV of the table")
    args = p.parse_args(argv)
    steps = pd.read_csv(args.steps).set_index("step_id", drop=False)
    ids = [int(s) for s in args.ids.split(",")]
    missing = [i for i in ids if i not in steps.index]
    if missing:
        p.error(f"--ids: no step_id {missing} in {args.steps}")
    g = MODELS[args.model]
    model = Transformer(g, random_weights(g, num_sets=WEIGHT_SETS, device=DEVICE, seed=0))
    timer, rng = GraphTimer(7), np.random.default_rng(0)
    rows = [diagnose(model, steps.loc[i], timer, rng) for i in ids]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
