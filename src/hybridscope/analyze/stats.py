"""Quantiles and their bootstrap confidence intervals, exact and O(B) per quantile.

The project's one quantile definition is the continuous quantile (linear interpolation between
order statistics, numpy's default 'linear', docs/analyses.md): DuckDB's `quantile_cont` in SQL,
`quantile_cont` / `quantile` here in Python. No analysis computes a percentile another way.

The bootstrap resamples n values with replacement and takes the quantile of the resample. We
never build the resamples: drawing n indices uniformly is drawing n uniforms U on [0, 1) and
taking floor(U * n), and floor is monotone, so the k-th smallest index of a resample is
floor(U_(k) * n) where U_(k) is the k-th order statistic of n uniforms, U_(k) ~ Beta(k, n + 1 - k).
The next one is U_(k+1) = U_(k) + (1 - U_(k)) * Beta(1, n - k). So one replicate of the continuous
quantile (linear interpolation between the order statistics k and k+1, as DuckDB's quantile_cont)
costs two Beta draws on the sorted sample, whatever n: the same distribution as the textbook
bootstrap, at the cost of B instead of B * n.
"""

from __future__ import annotations

import numpy as np


def quantile_cont(sorted_x: np.ndarray, q: float) -> float:
    """DuckDB's quantile_cont / numpy 'linear': x[floor(h)] + frac(h) * (x[ceil(h)] - x[floor(h)]), h = (n-1) q."""
    n = len(sorted_x)
    if n == 0:
        raise ValueError("quantile of an empty sample")
    h = (n - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, n - 1)
    return float(sorted_x[lo] + (h - lo) * (sorted_x[hi] - sorted_x[lo]))


def quantile(values, q: float) -> float | None:
    """`quantile_cont` of unsorted `values` at `q` (0..1); None when there are none."""
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    return quantile_cont(v, q) if v.size else None


def bootstrap_quantile(sorted_x: np.ndarray, q: float, b: int, rng: np.random.Generator) -> np.ndarray:
    """`b` bootstrap replicates of quantile_cont(resample, q) for a sorted sample (module doc)."""
    n = len(sorted_x)
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    if n == 1:
        return np.full(b, float(sorted_x[0]))
    h = (n - 1) * q
    k = int(np.floor(h))  # 0-based order statistic below h
    frac = h - k
    u_k = rng.beta(k + 1, n - k, size=b)  # U_(k+1) in 1-based terms
    lo_idx = np.minimum((u_k * n).astype(np.int64), n - 1)
    lo_val = sorted_x[lo_idx].astype(np.float64)
    if frac == 0.0 or k + 1 >= n:
        return lo_val
    u_next = u_k + (1.0 - u_k) * rng.beta(1, n - k - 1, size=b)
    hi_idx = np.minimum((u_next * n).astype(np.int64), n - 1)
    return lo_val + frac * (sorted_x[hi_idx].astype(np.float64) - lo_val)


def ratio_ci(
    base_sorted: np.ndarray,
    new_sorted: np.ndarray,
    q: float,
    *,
    alpha: float,
    b: int,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """(point, lo, hi): new/base ratio of the q-quantile with a two-sided 1-alpha percentile CI.

    Each side is resampled independently; replicates whose base quantile is 0 are dropped (a zero
    duration quantile has no ratio). Returns NaNs when the point ratio is undefined.
    """
    base_q = quantile_cont(base_sorted, q)
    new_q = quantile_cont(new_sorted, q)
    if base_q <= 0:
        return float("nan"), float("nan"), float("nan")
    rb = bootstrap_quantile(base_sorted, q, b, rng)
    rn = bootstrap_quantile(new_sorted, q, b, rng)
    keep = rb > 0
    ratios = rn[keep] / rb[keep]
    ratios.sort()
    return new_q / base_q, quantile_cont(ratios, alpha / 2), quantile_cont(ratios, 1 - alpha / 2)
