"""Quantiles and their bootstrap confidence intervals, exact and cheap per quantile.

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

import functools
from dataclasses import dataclass
from fractions import Fraction

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


# --- exact statistics per group, as DuckDB's aggregates compute them ----------------------------


@dataclass(frozen=True)
class Groups:
    """What `by_group` finds: per group (ascending code), its code, count, max and sum of the
    values, and per level set asked for, a [groups, levels] array of quantile_cont."""

    codes: np.ndarray
    n: np.ndarray
    max: np.ndarray
    sum: np.ndarray
    quantiles: tuple[np.ndarray, ...]


def by_group(codes: np.ndarray, n_codes: int, values: np.ndarray, *level_sets) -> Groups:
    """count(*), max, sum and quantile_cont at each set of levels of the int64 `values` per group
    of `codes` (ints in [0, n_codes)), as a DuckDB GROUP BY computes them, equal to the bit (the
    interpolation rounded as `duckdb_rounding()` found, which must not be None). Raises
    ValueError when a code and a value do not pack into one int64 (`packing`)."""
    codes = np.asarray(codes, np.int64)
    values = np.asarray(values, np.int64)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    shift = packing(n_codes, hi - lo)
    if shift is None:
        raise ValueError(f"{n_codes} codes and values spanning {hi - lo} do not pack into 63 bits")
    s = (codes << shift) | (values - lo)
    s.sort()
    return sorted_groups(s, shift, lo, n_codes, *level_sets)


def packing(n_codes: int, span: int) -> int | None:
    """The shift that packs a code below `n_codes` and a value's offset from the smallest (at most
    `span`) into one non-negative int64, (code << shift) | offset: sorting those sorts by code, then
    value. None when they need more than 63 bits."""
    shift = max(int(span).bit_length(), 1)
    return shift if max(int(n_codes) - 1, 1).bit_length() + shift <= 63 else None


def sorted_groups(s: np.ndarray, shift: int, lo: int, n_codes: int, *level_sets) -> Groups:
    """`by_group`'s statistics from the sorted packed keys `s` ((code << shift) | (value - lo)).

    The sort is numpy's of int64 (AVX-512 where there is one: 0.06 s for 10M values on the 2-core
    VM, where DuckDB's quantile aggregate with 111 levels took 0.8 s); nothing else passes over
    all the values but one sum: a group's bounds are found by bisection, and only the values at
    quantile positions are read."""
    if s.size == 0:
        empty = np.zeros(0, np.int64)
        return Groups(empty, empty, empty, empty, tuple(np.zeros((0, len(q))) for q in level_sets))
    if n_codes <= 1 << 20:
        bounds = np.searchsorted(s, np.arange(n_codes + 1, dtype=np.int64) << shift)
        codes = np.flatnonzero(bounds[1:] > bounds[:-1])
        first = bounds[codes]
    else:
        group = s >> shift
        first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        codes = group[first]
    n = np.diff(np.r_[first, s.size])
    base = codes << shift
    # sum of a group's keys less its codes' part, in int64 arithmetic (exact where the sum fits)
    sums = np.add.reduceat(s, first) - n * base + n * lo
    mask = (1 << shift) - 1

    def value(i):
        return (s[i] & mask) + lo

    quantiles = tuple(_quantiles(value, first, n, np.asarray(q, np.float64)) for q in level_sets)
    return Groups(codes, n, value(first + n - 1), sums, quantiles)


def _quantiles(value, first: np.ndarray, n: np.ndarray, q: np.ndarray) -> np.ndarray:
    """quantile_cont at levels `q` of each group of sorted values (`value(i)`: the i-th; groups at
    `first`, sizes `n`), as DuckDB computes it: position RN = (n - 1) q, lo and hi the values at
    floor and ceil of RN, lo where they are one, else lo (1 - d) + hi d with d = RN - floor(RN),
    rounded as this DuckDB build rounds it (`duckdb_rounding`)."""
    rn = (n - 1).astype(np.float64)[:, None] * q[None, :]
    f, c = np.floor(rn).astype(np.int64), np.ceil(rn).astype(np.int64)
    lo = value(first[:, None] + f).astype(np.float64)
    hi = value(first[:, None] + c).astype(np.float64)
    d = rn - f
    out = lo.copy()
    mid = f != c
    if mid.any():
        out[mid] = _interpolate(lo[mid], d[mid], hi[mid])
    return out


def _interpolate(lo: np.ndarray, d: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """DuckDB's `lo * (1.0 - d) + hi * d` for doubles, rounded as its build does (`duckdb_rounding`)."""
    how = duckdb_rounding()
    if how == "plain":
        return lo * (1.0 - d) + hi * d
    if how != "fused":
        raise RuntimeError("DuckDB's quantile interpolation is not one this module reproduces")
    # one rounding of lo (1 - d) + fl(hi d): the compiler fused the multiply-add (an FMA); a few
    # thousand values per report, exact in rationals
    w, p = 1.0 - d, hi * d
    return np.array([float(Fraction(a) * Fraction(b) + Fraction(c)) for a, b, c in
                     zip(lo.tolist(), w.tolist(), p.tolist())], np.float64)


@functools.cache
def duckdb_rounding() -> str | None:
    """How this DuckDB build rounds quantile_cont's interpolation lo (1 - d) + hi d: 'plain' (each
    product and the sum rounded), 'fused' (the build fused `lo * (1 - d) + ...` into one
    multiply-add, as the x86-64 wheels do), None when neither reproduces it (then callers ask DuckDB).
    Found once per process from 256 quantiles of value pairs (a pair's quantile at d is its
    interpolation at d exactly), 46 of which the two forms round apart."""
    import duckdb

    lo, d, hi = _probe()
    with duckdb.connect() as con:
        got = con.execute("SELECT g, quantile_cont(x, $q) FROM (SELECT unnest($g) AS g, unnest($x) AS x) "
                          "GROUP BY g ORDER BY g", {"q": d[:_PROBE_LEVELS].tolist(),
                                                    "g": np.repeat(np.arange(_PROBE_PAIRS), 2).tolist(),
                                                    "x": np.c_[lo[::_PROBE_LEVELS], hi[::_PROBE_LEVELS]]
                                                    .astype(np.int64).reshape(-1).tolist()}).fetchall()
    return _rounding(np.array([x for _, qs in got for x in qs], np.float64), lo, d, hi)


_PROBE_PAIRS, _PROBE_LEVELS = 32, 8


def _probe() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, d, hi) of the probe: each of 32 pairs of integers at each of 8 levels, pair-major."""
    rng = np.random.default_rng(20261205)
    pairs = np.sort(rng.integers(0, 10**12, size=(_PROBE_PAIRS, 2)), axis=1).astype(np.float64)
    levels = np.round(rng.random(_PROBE_LEVELS), 6)
    return (np.repeat(pairs[:, 0], _PROBE_LEVELS), np.tile(levels, _PROBE_PAIRS),
            np.repeat(pairs[:, 1], _PROBE_LEVELS))


def _rounding(want: np.ndarray, lo: np.ndarray, d: np.ndarray, hi: np.ndarray) -> str | None:
    """Which interpolation gives `want` for (lo, d, hi): 'fused', 'plain', or None."""
    fused = np.array([float(Fraction(a) * Fraction(1.0 - b) + Fraction(c * b)) for a, b, c in
                      zip(lo.tolist(), d.tolist(), hi.tolist())])
    if np.array_equal(want, fused):
        return "fused"
    if np.array_equal(want, lo * (1.0 - d) + hi * d):
        return "plain"
    return None


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


# --- exceedance tests: how many new samples lie above the baseline's quantile -------------------


def exceedance_threshold(sorted_base: np.ndarray, q: float) -> tuple[float, int]:
    """(t, r): the baseline order statistic the exceedance test counts above, and its 1-based rank.

    t = x_(r) with r = ceil((n - 1) q) + 1, the order statistic at or above quantile_cont(x, q):
    an order statistic, so that its exceedance probability has an exact distribution (below).
    """
    n = len(sorted_base)
    r = min(int(np.ceil((n - 1) * q - 1e-9)) + 1, n)
    return float(sorted_base[r - 1]), r


def _betabinom_logpmf(n: int, a: float, b: float) -> np.ndarray:
    """log P(K = k), k = 0..n, for K ~ BetaBinomial(n, a, b), through the ratio of consecutive terms."""
    from math import lgamma

    k = np.arange(n, dtype=np.float64)
    log0 = lgamma(n + b) + lgamma(a + b) - lgamma(n + a + b) - lgamma(b)  # P(K = 0) = B(a, n + b) / B(a, b)
    ratios = np.log(n - k) - np.log(k + 1) + np.log(k + a) - np.log(n - k - 1 + b)
    return np.concatenate(([log0], log0 + np.cumsum(ratios)))


def exceedance_test(sorted_base: np.ndarray, new: np.ndarray, q: float) -> dict:
    """Count the new samples above the baseline's q-quantile order statistic and test the count.

    Under H0 (both samples drawn independently from one continuous distribution), the probability
    that one new value exceeds x_(r) is 1 - U_(r), U_(r) ~ Beta(r, n_b + 1 - r); so the count K of
    the n new values above it is BetaBinomial(n, n_b + 1 - r, r): the binomial with p = 1 - q,
    widened by the baseline quantile's own uncertainty. Returns k, expected, p_high = P(K >= k)
    (evidence of a slower tail), p_low = P(K <= k) (a faster one).
    """
    t, r = exceedance_threshold(sorted_base, q)
    n, nb = len(new), len(sorted_base)
    k = int(np.count_nonzero(np.asarray(new) > t))
    a, b = nb + 1 - r, r
    logp = _betabinom_logpmf(n, a, b)
    pmf = np.exp(logp - logp.max())
    pmf /= pmf.sum()
    return {"k": k, "n": n, "expected": n * a / (a + b), "threshold": t,
            "p_high": float(min(1.0, pmf[k:].sum())), "p_low": float(min(1.0, pmf[:k + 1].sum()))}


# --- the bootstrap of whole steps ----------------------------------------------------------------


def cluster_ids(clusters: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids 0..C-1 for cluster labels; a label < 0 (no step known) is a cluster of its own."""
    c = np.asarray(clusters, dtype=np.int64).copy()
    lone = c < 0
    if lone.any():
        c[lone] = c.max(initial=0) + 1 + np.arange(int(lone.sum()))
    _, ids = np.unique(c, return_inverse=True)
    return ids.reshape(-1), int(ids.max()) + 1 if len(ids) else 0


def block_bootstrap_quantile(sorted_x: np.ndarray, clusters: np.ndarray, q: float, b: int,
                             rng: np.random.Generator, *, chunk: int = 64,
                             half_width: int | None = None) -> np.ndarray:
    """`b` replicates of quantile_cont over resamples of whole clusters (steps), with replacement.

    A resample draws C clusters out of C; each value counts as often as its cluster was drawn, and
    the continuous quantile is read from the value-sorted sample with those weights. Without
    clusters (every value its own) this is the ordinary bootstrap: bootstrap_quantile does it in O(b).

    Cost O(n + b (C + w)), not O(b n): the quantile of a resample lies almost always among a window
    [i0, i1) of w values around rank q (n - 1). `before[c]`, the number of values of cluster c among
    the first i0, is counted once; a replicate's weight before the window is then counts . before
    (O(C)) and the cumulative weight is built inside the window only. A replicate whose quantile
    position falls outside the window (weight before it above the position, or the window's weight
    not reaching it) is recomputed over all n values (`_quantile_from_counts`), so the result is
    exactly that of the full method with the same draws. The window's half-width is WINDOW_SDS
    standard deviations of the weight before rank q (sqrt(sum_c (before_c - q size_c)^2), the
    multinomial's) plus WINDOW_MIN values; `half_width` overrides it (tests).
    """
    ids, c = cluster_ids(clusters)
    if c == len(sorted_x):
        return bootstrap_quantile(sorted_x, q, b, rng)
    return _block_bootstrap_window(np.asarray(sorted_x, dtype=np.float64), ids, c, q, b, rng,
                                   chunk=chunk, half_width=half_width)[0]


WINDOW_SDS = 8.0  # half-width of the window in sds of the resampled rank (fallback: docs/benchmarks.md)
WINDOW_MIN = 256


def _window_bounds(ids: np.ndarray, c: int, size: np.ndarray, q: float, half_width: int | None) -> tuple[int, int]:
    """[i0, i1): the values around rank q (n - 1) that a replicate's quantile falls among
    (`size`: values per cluster)."""
    n = len(ids)
    k = round(q * (n - 1))
    if half_width is None:
        dev = np.bincount(ids[:k], minlength=c) - (k / n) * size
        half_width = int(np.ceil(WINDOW_SDS * np.sqrt(float(dev @ dev)))) + WINDOW_MIN
    return max(0, k - half_width), min(n, k + half_width + 2)


def _block_bootstrap_window(x: np.ndarray, ids: np.ndarray, c: int, q: float, b: int,
                            rng: np.random.Generator, *, chunk: int = 64,
                            half_width: int | None = None) -> tuple[np.ndarray, int]:
    """(replicates, how many fell outside the window and were recomputed in full)."""
    n = len(x)
    size = np.bincount(ids, minlength=c)
    i0, i1 = _window_bounds(ids, c, size, q, half_width)
    before = np.bincount(ids[:i0], minlength=c)
    inside = ids[i0:i1]
    out = np.empty(b)
    fallback = 0
    for s in range(0, b, chunk):
        m = min(chunk, b - s)
        counts = rng.multinomial(c, np.full(c, 1.0 / c), size=m)  # [m, C]
        total = counts @ size
        h = np.maximum(total - 1, 0) * q
        lo = np.floor(h)
        top = np.minimum(lo + 1, total - 1)
        w0 = counts @ before  # weight of the first i0 values
        cum = w0[:, None] + np.cumsum(counts[:, inside], axis=1)  # [m, w]
        i_lo = np.minimum(i0 + (cum <= lo[:, None]).sum(axis=1), n - 1)
        i_hi = np.minimum(i0 + (cum <= top[:, None]).sum(axis=1), n - 1)
        rep = x[i_lo] + (h - lo) * (x[i_hi] - x[i_lo])
        outside = (w0 > lo) | ((cum[:, -1] <= top) & (i1 < n))
        if outside.any():
            rep[outside] = _quantile_from_counts(x, ids, counts[outside], q)
            fallback += int(outside.sum())
        out[s:s + m] = rep
    return out, fallback


def _quantile_from_counts(x: np.ndarray, ids: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """quantile_cont of each resample (row of cluster counts) over all n values: O(m n)."""
    cum = np.cumsum(counts[:, ids], axis=1)  # [m, n] weight of the first i+1 values
    total = cum[:, -1]
    h = np.maximum(total - 1, 0) * q
    lo = np.floor(h)
    # 0-based position p of the expanded resample lies in value i where cum[i-1] <= p < cum[i]
    i_lo = np.minimum((cum <= lo[:, None]).sum(axis=1), len(x) - 1)
    i_hi = np.minimum((cum <= np.minimum(lo + 1, total - 1)[:, None]).sum(axis=1), len(x) - 1)
    return x[i_lo] + (h - lo) * (x[i_hi] - x[i_lo])


def _block_bootstrap_full(sorted_x: np.ndarray, clusters: np.ndarray, q: float, b: int,
                          rng: np.random.Generator, *, chunk: int = 64) -> np.ndarray:
    """The reference: block_bootstrap_quantile with the full [m, n] cumulative weight per chunk."""
    ids, c = cluster_ids(clusters)
    if c == len(sorted_x):
        return bootstrap_quantile(sorted_x, q, b, rng)
    x = np.asarray(sorted_x, dtype=np.float64)
    out = np.empty(b)
    for s in range(0, b, chunk):
        m = min(chunk, b - s)
        out[s:s + m] = _quantile_from_counts(x, ids, rng.multinomial(c, np.full(c, 1.0 / c), size=m), q)
    return out


def ratio_ci_blocks(base_sorted: np.ndarray, base_clusters: np.ndarray, new_sorted: np.ndarray,
                    new_clusters: np.ndarray, q: float, *, alpha: float, b: int,
                    rng: np.random.Generator) -> tuple[float, float, float]:
    """ratio_ci with each side resampled by whole steps (block_bootstrap_quantile)."""
    base_q, new_q = quantile_cont(base_sorted, q), quantile_cont(new_sorted, q)
    if base_q <= 0:
        return float("nan"), float("nan"), float("nan")
    rb = block_bootstrap_quantile(base_sorted, base_clusters, q, b, rng)
    rn = block_bootstrap_quantile(new_sorted, new_clusters, q, b, rng)
    keep = rb > 0
    ratios = np.sort(rn[keep] / rb[keep])
    return new_q / base_q, quantile_cont(ratios, alpha / 2), quantile_cont(ratios, 1 - alpha / 2)


# --- the noise floor from run to run --------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (p in (0.5, 1)), by bisection on the CDF integrated from the density."""
    from math import gamma, pi, sqrt

    c = gamma((df + 1) / 2) / (sqrt(df * pi) * gamma(df / 2))

    def cdf(t: float) -> float:
        grid = np.linspace(0.0, t, 20_001)
        dens = c * (1 + grid * grid / df) ** (-(df + 1) / 2)
        return 0.5 + float(np.sum((dens[1:] + dens[:-1]) * np.diff(grid)) / 2)

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def noise_bound(per_run: list[float], alpha: float) -> float | None:
    """The largest value of the statistic a new run of the baseline's kind reaches by chance
    (one-sided, 1 - alpha), from the statistic of each of the baseline's k >= 2 runs.

    log of the statistic is taken as normal across runs: a new run's log minus the mean of the k
    logs has sd s sqrt(1 + 1/k) (s: their sample sd), so the prediction bound is
    exp(mean + t_{1-alpha, k-1} s sqrt(1 + 1/k)). None with fewer than 2 runs (run-to-run noise
    unknown) or a statistic <= 0.
    """
    v = np.asarray([x for x in per_run if x is not None], dtype=np.float64)
    if len(v) < 2 or (v <= 0).any():
        return None
    logs = np.log(v)
    s = float(np.std(logs, ddof=1))
    return float(np.exp(logs.mean() + t_quantile(1 - alpha, len(v) - 1) * s * np.sqrt(1 + 1 / len(v))))
