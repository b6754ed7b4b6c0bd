"""Timing one call on the device: what the profiler and the multi-GPU
timing harnesses share."""
from __future__ import annotations

import time

import torch


def elapsed_s(fn, cuda: bool) -> float:
    """Seconds one call of ``fn`` takes on this rank: between CUDA events on
    a GPU, by the host clock on the CPU."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
