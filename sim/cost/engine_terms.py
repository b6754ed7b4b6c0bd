"""What the real engine adds to a step's GPU time, fitted on the calibration
serving runs of a profile's ``engine_steps.csv`` (sim/cost/profiled.py says
how a step is priced with it; docs/calibration.md how the runs are made)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.cost.graphs import graph_batch_sizes
from sim.cost.profile_io import LAYOUTS, check_enum, json_lists, nnls, read_csv


@dataclass(frozen=True)
class EngineTerms:
    """What the real engine adds to a step's GPU time (module docstring)."""

    graph_sizes: tuple[int, ...]
    host_coef: tuple[float, ...]      # . host_features()
    issue_coef: tuple[float, ...]     # . (1, has prefill, has decode): eager issue time
    graph_residual_s: float
    eager_residual_s: float

    def host_s(self, seqs: int, prefill_tokens: int, graphed: bool) -> float:
        """Host seconds of a step of ``seqs`` sequence rows (padding rows
        included) and ``prefill_tokens`` prefill tokens."""
        c0, c1, c2, c3 = self.host_coef
        return c0 + c1 * seqs + c2 * prefill_tokens + c3 * graphed

    def issue_s(self, has_prefill: bool, has_decode: bool) -> float:
        c0, c1, c2 = self.issue_coef
        return c0 + c1 * has_prefill + c2 * has_decode


ENGINE_STEP_COLUMNS = ("layout", "batch_rows", "graph_batch", "step_s", "launch_s", "wait_s",   # rows: sequences
                       "prefill_new_tokens", "prefill_context_tokens", "decode_seqs",
                       "decode_context_sum", "decode_context_max")


def fit_engine_terms(path: Path, cost, max_batch_size: int) -> EngineTerms | None:
    """Fit the engine's host, issue and residual terms on the calibration
    serving runs of ``engine_steps.csv``; None without the file."""
    if not path.is_file():
        return None
    df = read_csv(path, ENGINE_STEP_COLUMNS)
    check_enum(df, "layout", LAYOUTS, path)
    new, ctx = json_lists(df, "prefill_new_tokens", path), json_lists(df, "prefill_context_tokens", path)
    graph = df["graph_batch"].to_numpy(int)
    seqs = df["batch_rows"].to_numpy(int)
    decode_seqs = df["decode_seqs"].to_numpy(int)
    prefill_tokens = np.array([sum(n) for n in new], dtype=float)
    token_rows = np.where(graph > 0, graph, prefill_tokens + decode_seqs).astype(int)
    device = (df["launch_s"] + df["wait_s"]).to_numpy(float)
    host = df["step_s"].to_numpy(float) - device
    gpu = np.array([cost.gpu_s(lay, r, n, c, d, ds, dm) for lay, r, n, c, d, ds, dm in zip(
        df["layout"], token_rows, new, ctx, decode_seqs, df["decode_context_sum"], df["decode_context_max"])])
    features = np.column_stack([np.ones(len(df)), seqs, prefill_tokens, graph > 0])
    host_coef = nnls(features, host)
    eager = graph == 0
    has_p = np.array([bool(n) for n in new])
    has_d = df["decode_seqs"].to_numpy(int) > 0
    issue = df["launch_s"].to_numpy(float)
    if eager.sum() >= 3:
        issue_coef = nnls(np.column_stack([np.ones(eager.sum()), has_p[eager], has_d[eager]]), issue[eager])
        eager_res = float(np.median(device[eager] - np.maximum(gpu[eager], issue[eager])))
    else:
        issue_coef, eager_res = np.zeros(3), 0.0
    graph_res = float(np.median(device[~eager] - gpu[~eager])) if (~eager).any() else 0.0
    return EngineTerms(graph_batch_sizes(max_batch_size), tuple(map(float, host_coef)),
                       tuple(map(float, issue_coef)), graph_res, eager_res)
