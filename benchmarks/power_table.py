"""Power of `check`'s p99 test: the smallest p99 change it detects with 80 % power, by sample size.

    python benchmarks/power_table.py [--reps 1000]

The test is stats.exceedance_test (the count of the run's samples above the baseline's p99 order
statistic against its beta-binomial law), one-sided at level alpha / m: alpha = 0.01 and m = 1
(one (group, statistic) pair) or m = 26 (a layer-type check of 13 groups x {p50, p99}). Both
samples have n values, independent (the test's assumption). The change simulated is a scale
shift of a log-normal: new = r * base in distribution, so the p99 ratio is exactly r. The test
counts ranks, so its power depends on the distribution only through p1 = P(new > base p99) =
1 - Phi(z_0.99 - ln(r) / sigma); the table is simulated at sigma = 1 and converted to sigma = 0.25
and 0.5 through p1 (printed too). Power at each r from `--reps` simulated checks; r found by
bisection on log r. `check` also needs the ratio to exceed --max-p99-regression (10 % by default).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from hybridscope.analyze.stats import exceedance_test

Z99 = 2.3263478740408408  # Phi^-1(0.99)


def power(n: int, r: float, level: float, reps: int, rng: np.random.Generator) -> float:
    hits = 0
    for _ in range(reps):
        base = np.sort(rng.lognormal(0.0, 1.0, n))
        new = r * rng.lognormal(0.0, 1.0, n)
        hits += exceedance_test(base, new, 0.99)["p_high"] < level
    return hits / reps


def smallest_ratio(n: int, level: float, reps: int, seed: int, target: float = 0.8) -> float:
    """The r at which power crosses `target` (bisection on log r over [1, 64])."""
    lo, hi = 0.0, math.log(64.0)
    for step in range(14):
        mid = (lo + hi) / 2
        rng = np.random.default_rng(seed + step)  # common draws per step keep the bisection steady
        if power(n, math.exp(mid), level, reps, rng) >= target:
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the table as JSON here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for m in (1, 26):
        for n in (100, 400, 2000, 10_000):
            r1 = smallest_ratio(n, 0.01 / m, a.reps, a.seed)
            p1 = 1 - phi(Z99 - math.log(r1))  # sigma = 1
            ratios = {s: math.exp(s * math.log(r1)) for s in (0.25, 0.5, 1.0)}
            rows.append({"m": m, "n": n, "p1": p1, "ratio": ratios})
            print(f"m={m:>2} n={n:>6}: P(new > base p99) = {100 * p1:5.2f}% (expected 1%); smallest p99 change "
                  + ", ".join(f"sigma {s:g}: +{100 * (v - 1):.0f}%" for s, v in ratios.items()), flush=True)
    print(f"{a.reps} checks per power estimate, {time.perf_counter() - t0:.0f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"reps": a.reps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
