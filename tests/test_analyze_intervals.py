"""Interval arithmetic against hand-computed answers."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

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


spans = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), max_size=25)


def covered(pairs) -> set[int]:
    return {t for s, d in pairs for t in range(s, s + d)}


@settings(max_examples=150, deadline=None)
@given(spans, spans)
def test_union_and_intersection_match_brute_force(a, b):
    ua = intervals.union([s for s, _ in a], [s + d for s, d in a])
    ub = intervals.union([s for s, _ in b], [s + d for s, d in b])
    assert intervals.length(ua) == len(covered(a))
    assert intervals.intersection_length(ua, ub) == len(covered(a) & covered(b))
    assert (ua[0][1:] > ua[1][:-1]).all()  # disjoint, sorted, not touching
    g0, g1 = intervals.gaps(ua)
    if ua[0].size:
        span = int(ua[1][-1] - ua[0][0])
        assert intervals.length(ua) + int((g1 - g0).sum()) == span
