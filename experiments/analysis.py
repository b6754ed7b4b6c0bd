"""Reading sweep tables: the highest load each configuration sustains within
service-level objectives (capacity at equal latency)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

SLO_PATTERN = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*<=\s*([0-9.eE+-]+)\s*$")
"""``METRIC<=VALUE``, as ``--slo`` takes it (sweep and capacity)."""


@dataclass(frozen=True)
class SLO:
    metric: str        # a sweep.csv column, e.g. ttft_s_p99
    limit: float

    @classmethod
    def parse(cls, text: str) -> SLO:
        m = SLO_PATTERN.match(text)
        if not m:
            raise ValueError(f"--slo {text!r}: expected METRIC<=VALUE, e.g. ttft_s_p99<=1.0")
        return cls(m.group(1), float(m.group(2)))


def load_rises_with(x_key: str) -> bool:
    """Whether a larger value of the swept ``x_key`` is more load: false for
    a time scale (a trace replayed at 0.5x arrives twice as fast)."""
    return not x_key.endswith("time_scale")


def capacity(table: pd.DataFrame, x_key: str, slos: list[SLO],
             group_keys: list[str] | None = None) -> pd.DataFrame:
    """Per configuration (``config_label`` plus any ``group_keys``, e.g. other
    swept keys such as ``engine.replicas``): the ``x_key`` value of the
    highest load whose point meets every SLO (``highest_load_passing``), the
    next more loaded one, which misses one (``first_failing``), and a linear
    interpolation of the crossing between them (the ``x`` at which the worst
    SLO ratio reaches 1). ``at_least`` is true when even the most loaded
    swept value meets them. Load rises with ``x_key`` except for a time
    scale (``load_rises_with``). Swept values that are mappings (a whole
    ``engine.memory``, say) group by their text.

    A point whose run was ``saturated`` (``steady_state_verdict``: the queue
    grew through the measurement window) never counts as meeting the SLOs,
    whatever its latencies: a finite run drains its burst and can look fine
    at a rate it could never sustain. No crossing is interpolated into a
    saturated point (its ratio is not a latency ratio)."""
    keys = ["config_label"] + [k for k in (group_keys or []) if k not in ("config_label", x_key)]
    for col in [x_key, *keys] + [s.metric for s in slos]:
        if col not in table.columns:
            raise ValueError(f"sweep table has no column {col!r}")
    sign = 1.0 if load_rises_with(x_key) else -1.0
    table = table.assign(**{k: table[k].map(_hashable) for k in keys}, _load=sign * table[x_key].astype(float))
    rows = []
    for label, group in table.groupby(keys, sort=False):
        g = group.sort_values("_load")
        load = g["_load"]
        ratio = pd.concat([g[s.metric] / s.limit for s in slos], axis=1).max(axis=1).fillna(math.inf)
        if "steady_state_verdict" in g.columns:
            ratio = ratio.where(g["steady_state_verdict"] != "saturated", math.inf)
        ok = ratio <= 1.0
        passing = load[ok]
        best = float(passing.max()) if len(passing) else None
        later = load[(~ok) & (load > (best if best is not None else -math.inf))]
        first_miss = float(later.min()) if len(later) else None
        crossing = best
        if best is not None and first_miss is not None:
            r0 = float(ratio[load == best].iloc[0])
            r1 = float(ratio[load == first_miss].iloc[0])
            if math.isfinite(r1) and r1 > r0:
                crossing = best + (first_miss - best) * (1.0 - r0) / (r1 - r0)
        x = (lambda v: None if v is None else sign * v)
        rows.append({**dict(zip(keys, label if isinstance(label, tuple) else (label,))),
                     "highest_load_passing": x(best), "first_failing": x(first_miss),
                     "interpolated": x(crossing), "at_least": first_miss is None and best is not None})
    return pd.DataFrame(rows)


def _hashable(value):
    """A swept value as a group key: mappings and lists by their JSON text."""
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, sort_keys=True)
    return value
