"""Interval arithmetic against hand-computed answers."""

import numpy as np

from hybridscope.analyze import intervals


def seg(*pairs):
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def test_union_merges_overlapping_touching_and_nested():
    s, e = intervals.union([10, 0, 5, 30, 32, 50], [20, 5, 8, 40, 35, 50])  # [50,50) is empty
    assert s.tolist() == [0, 10, 30] and e.tolist() == [8, 20, 40]
    assert intervals.length((s, e)) == 8 + 10 + 10


def test_union_of_nothing():
    s, e = intervals.union([], [])
    assert s.size == 0 and intervals.length((s, e)) == 0


def test_intersection_length():
    a = seg((0, 10), (20, 30))
    b = seg((5, 25), (28, 40))
    # [5,10) + [20,25) + [28,30)
    assert intervals.intersection_length(a, b) == 5 + 5 + 2
    assert intervals.intersection_length(a, seg()) == 0


def test_gaps_between_segments():
    g0, g1 = intervals.gaps(seg((0, 10), (15, 20), (40, 50)))
    assert g0.tolist() == [10, 20] and g1.tolist() == [15, 40]


def test_max_concurrency_touching_is_not_overlap():
    assert intervals.max_concurrency([0, 10, 5], [10, 20, 12]) == 2
    assert intervals.max_concurrency([0, 10], [10, 20]) == 1
    assert intervals.max_concurrency([], []) == 0
