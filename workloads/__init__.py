"""Request streams for pagesim: arrival processes, token-length distributions,
trace loaders and the ``workload`` section of a config (docs/workloads.md).

    spec = WorkloadSpec(num_requests=100, arrival={"process": "poisson", "rate_rps": 4.0},
                        lengths={"preset": "sharegpt"})
    workload = generate(spec, np.random.default_rng(0))
"""
from workloads.arrivals import AllAtOnce, ArrivalProcess, ConstantArrivals, GammaArrivals, PoissonArrivals, TraceArrivals
from workloads.lengths import (
    LENGTH_PRESETS,
    EmpiricalLength,
    FixedLength,
    LengthDistribution,
    LengthPair,
    LognormalLength,
    UniformLength,
)
from workloads.spec import WorkloadSpec, generate, generate_with_trace
from workloads.stats import format_stats, plot_length_histograms, trace_stats
from workloads.trace_formats import TraceColumns, TraceError
from workloads.traces import EMBEDDED_TRACES, TraceLoad, load_trace
from workloads.types import Workload

__all__ = [
    "AllAtOnce", "ArrivalProcess", "ConstantArrivals", "GammaArrivals", "PoissonArrivals", "TraceArrivals",
    "LENGTH_PRESETS", "EmpiricalLength", "FixedLength", "LengthDistribution", "LengthPair", "LognormalLength",
    "UniformLength", "WorkloadSpec", "generate", "generate_with_trace", "format_stats", "plot_length_histograms",
    "trace_stats", "TraceColumns", "TraceError", "EMBEDDED_TRACES", "TraceLoad", "load_trace", "Workload",
]
