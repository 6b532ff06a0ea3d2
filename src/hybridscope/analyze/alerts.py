"""Alert bounds from a saved baseline: per layer type, the baseline's p99 and the bound a live p99
must not pass (`hybridscope baseline export-rules`; rendered by present/alerts.py).

bound = p99 of the baseline's durations (analyze.stats.quantile_cont) x (1 + margin). The live p99
Prometheus computes (`histogram_quantile` over hybridscope_layer_seconds) reads a bucketed
histogram whose buckets double, so a bound tighter than that resolution would fire on bucketing
alone: the margin is at least `MIN_MARGIN`.
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze.stats import quantile_cont
from hybridscope.table import Column, Table

MIN_MARGIN = 0.10


def baseline_bounds(groups: dict[str, np.ndarray], *, margin: float, name: str) -> Table:
    """groups: layer type -> durations (ns). One row per layer type with samples."""
    m = max(margin, MIN_MARGIN)
    rows = []
    for lt in sorted(groups):
        d = np.sort(np.asarray(groups[lt], np.float64))
        if not d.size or lt == "unattributed":
            continue
        p99 = float(quantile_cont(d, 0.99))
        rows.append((lt, int(d.size), p99, p99 * (1 + m) / 1e9))
    cols = (Column("layer_type", "str", "", "layer type"), Column("n", "int", "baseline samples"),
            Column("p99_ns", "ns", "baseline p99", "p99"),
            Column("bound_s", "float", "alert when the live p99 exceeds this (seconds)", "bound (s)"))
    return Table("alert_bounds", cols, rows, {"title": f"Alert bounds from baseline {name}", "baseline": name,
                                              "margin": m})
