"""Timing and provenance for the benchmark harness: CUDA-graph replays timed
by ``triton.testing.do_bench``, host overhead per call, the copy-bandwidth and
matmul ceilings measured in the same run, and the GPU/software description."""
from __future__ import annotations

import sys
import time


def time_ms(fn, graph: bool = True) -> float:
    """Median device time of ``fn`` in ms. With ``graph`` the call is captured in
    a CUDA graph and the replay is timed, so the Python wrapper's host time
    (checks, launch) stays out of the number, as it does in a graph-captured
    serving step; do_bench still clears L2 before every replay."""
    import torch
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    if graph:
        fn = _graphed(fn)
    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
    torch.cuda.synchronize()   # surfaces any launch error here, not later
    return float(ms)


def _graphed(fn):
    """``fn`` captured in a CUDA graph (its replay), or ``fn`` itself with a
    warning when capture fails."""
    import torch

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            fn()
    except RuntimeError as exc:
        print(f"warning: CUDA graph capture failed ({str(exc).splitlines()[0]}); "
              "timing plain launches", file=sys.stderr)
        torch.cuda.synchronize()
        return fn
    return captured.replay


def host_us(fn, calls: int = 200) -> float:
    """Host time per call of ``fn`` (checks + launches, GPU work not waited for)."""
    import torch

    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - started
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def measure_ceilings() -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate."""
    import torch

    src = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)   # 2 GiB
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), graph=False)
    del src, dst
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    mm_ms = time_ms(lambda: a @ b, graph=False)
    return {"copy_gbps": 2 * 2 * 2**30 / copy_ms / 1e6,
            "matmul_tflops": 2 * n**3 / mm_ms / 1e9}


def device_info(argv: list[str]) -> dict:
    import datetime
    import os
    import subprocess

    import torch
    import triton

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "num_sms": props.multi_processor_count,
            "driver": driver, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "commit": os.environ.get("PAGESIM_COMMIT", "unknown"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python -m kernels.harness.bench", *argv])}


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; unknown names -> a filesystem-safe form."""
    import re

    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name.replace("NVIDIA", ""))
    if match:
        return match.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
