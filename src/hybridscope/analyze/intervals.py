"""Interval arithmetic on GPU timelines, vectorized with numpy (no per-event Python loop).

An interval set is two int64 arrays `(starts, ends)` in nanoseconds. `union` turns any set of
(possibly overlapping) intervals into sorted disjoint segments; the other functions take such
segments. Zero-length intervals are dropped by `union` (a kernel of 0 ns keeps nothing busy).
"""

from __future__ import annotations

import numpy as np

EMPTY = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def union(starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """Sorted disjoint segments covering exactly the points covered by some interval.

    Sort by start, then a running max of ends: a new segment begins where a start lies beyond
    every end seen before it. Touching intervals ([0,5) and [5,9)) merge into one segment.
    """
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return EMPTY
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    run_max = np.maximum.accumulate(e)
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > run_max[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, s.size - 1)
    return s[first], run_max[last]


def length(segments: tuple[np.ndarray, np.ndarray]) -> int:
    """Total covered time of disjoint segments."""
    s, e = segments
    return int((e - s).sum())


def intersection_length(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Time covered by both disjoint segment sets `a` and `b`.

    A sweep over all boundaries: coverage counts of a and b (each 0 or 1) after every boundary,
    and the elapsed time to the next boundary counts where both are 1.
    """
    (sa, ea), (sb, eb) = a, b
    if sa.size == 0 or sb.size == 0:
        return 0
    t = np.concatenate([sa, ea, sb, eb])
    da = np.concatenate([np.ones_like(sa), -np.ones_like(ea), np.zeros_like(sb), np.zeros_like(eb)])
    db = np.concatenate([np.zeros_like(sa), np.zeros_like(ea), np.ones_like(sb), -np.ones_like(eb)])
    order = np.argsort(t, kind="stable")
    t, ca, cb = t[order], np.cumsum(da[order]), np.cumsum(db[order])
    both = (ca[:-1] > 0) & (cb[:-1] > 0)
    return int((np.diff(t) * both).sum())


def gaps(segments: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The idle intervals between consecutive disjoint segments: (gap_starts, gap_ends)."""
    s, e = segments
    if s.size < 2:
        return EMPTY
    return e[:-1].copy(), s[1:].copy()


def max_concurrency(starts, ends) -> int:
    """The largest number of intervals open at one instant (touching ends do not overlap)."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    if s.size == 0:
        return 0
    t = np.concatenate([s, e])
    d = np.concatenate([np.ones_like(s), -np.ones_like(e)])
    order = np.lexsort((d, t))  # at equal times close (-1) before open (+1)
    return int(np.cumsum(d[order]).max())
