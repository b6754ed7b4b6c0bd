"""Request streams for pagesim: arrival processes, token-length distributions,
trace loaders and the ``workload`` section of a config (docs/workloads.md).

    spec = WorkloadSpec(num_requests=100, arrival={"process": "poisson", "rate_rps": 4.0},
                        lengths={"preset": "sharegpt"})
    workload = generate(spec, np.random.default_rng(0))
"""
import importlib

_WHERE = {
    **dict.fromkeys(("AllAtOnce", "ArrivalProcess", "ConstantArrivals", "GammaArrivals", "PoissonArrivals",
                     "TraceArrivals"), "workloads.arrivals"),
    **dict.fromkeys(("LENGTH_PRESETS", "EmpiricalLength", "FixedLength", "LengthDistribution", "LengthPair",
                     "LognormalLength", "UniformLength"), "workloads.lengths"),
    **dict.fromkeys(("WorkloadSpec", "generate", "generate_with_trace"), "workloads.spec"),
    **dict.fromkeys(("format_stats", "plot_length_histograms", "trace_stats"), "workloads.stats"),
    **dict.fromkeys(("TraceColumns", "TraceError"), "workloads.trace_formats"),
    **dict.fromkeys(("TraceLoad", "load_trace"), "workloads.traces"),
    "EMBEDDED_TRACES": "workloads.names",
    "Workload": "workloads.types",
}


def __getattr__(name: str):
    """Names load from their module on first use, so importing the package
    (``pagesim --help``) does not import pandas or pydantic."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'workloads' has no attribute {name!r}")


__all__ = [
    "AllAtOnce", "ArrivalProcess", "ConstantArrivals", "GammaArrivals", "PoissonArrivals", "TraceArrivals",
    "LENGTH_PRESETS", "EmpiricalLength", "FixedLength", "LengthDistribution", "LengthPair", "LognormalLength",
    "UniformLength", "WorkloadSpec", "generate", "generate_with_trace", "format_stats", "plot_length_histograms",
    "trace_stats", "TraceColumns", "TraceError", "EMBEDDED_TRACES", "TraceLoad", "load_trace", "Workload",
]
