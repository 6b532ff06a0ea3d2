"""The windowed whole-step bootstrap equals the full one, draw for draw (stats.block_bootstrap_quantile)."""

import numpy as np
import pytest

from hybridscope.analyze.stats import (
    _block_bootstrap_full,
    _block_bootstrap_window,
    block_bootstrap_quantile,
    cluster_ids,
)


def _clustered(n: int, seed: int):
    """Sorted durations with step labels of uneven sizes (1..~60 calls), a few without a step (-1)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, size=n)
    steps = np.repeat(np.arange(len(sizes)), sizes)[:n]
    steps[rng.random(n) < 0.01] = -1
    x = rng.lognormal(0.0, 1.0, n)
    x[rng.random(n) < 0.02] *= 50  # a heavy tail
    order = np.argsort(x, kind="stable")
    return x[order], rng.permutation(steps)[order]


@pytest.mark.parametrize("n", [30, 500, 4_000, 20_000])
@pytest.mark.parametrize("q", [0.5, 0.99])
def test_window_equals_full_for_the_same_draws(n, q):
    x, steps = _clustered(n, seed=n)
    want = _block_bootstrap_full(x, steps, q, 300, np.random.default_rng(7))
    got = block_bootstrap_quantile(x, steps, q, 300, np.random.default_rng(7))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_forced_fallback_still_equals_full(q):
    x, steps = _clustered(5_000, seed=3)
    ids, c = cluster_ids(steps)
    got, fallback = _block_bootstrap_window(x, ids, c, q, 200, np.random.default_rng(11), half_width=0)
    assert fallback > 100  # a window of two values misses most replicates
    assert np.array_equal(got, _block_bootstrap_full(x, steps, q, 200, np.random.default_rng(11)))


def test_few_steps_fall_back_when_the_window_is_too_narrow():
    # two steps of 1000: a resample is all-step-0, mixed or all-step-1, the quantile jumps by 1000 ranks
    x = np.arange(2_000, dtype=np.float64)
    steps = np.repeat([0, 1], 1_000)
    ids, c = cluster_ids(steps)
    got, fallback = _block_bootstrap_window(x, ids, c, 0.5, 400, np.random.default_rng(5), half_width=10)
    assert 0 < fallback < 400
    assert np.array_equal(got, _block_bootstrap_full(x, steps, 0.5, 400, np.random.default_rng(5)))


def test_the_window_path_is_taken():
    x, steps = _clustered(50_000, seed=9)
    ids, c = cluster_ids(steps)
    for q in (0.5, 0.99):
        got, fallback = _block_bootstrap_window(x, ids, c, q, 1_000, np.random.default_rng(2))
        assert fallback == 0
        assert np.array_equal(got, _block_bootstrap_full(x, steps, q, 1_000, np.random.default_rng(2)))
