"""benchmarks/fix_ab.py without serving: what it reads from `hybridscope diff --format json` and the
medians it prints over repetitions, fix beside control, on hand-made diffs."""

from __future__ import annotations

import importlib.util

from paths import ROOT

spec = importlib.util.spec_from_file_location("fix_ab", ROOT / "benchmarks" / "fix_ab.py")
fix_ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fix_ab)


def diff(p99_change, thr, significant):
    row = {"group": "moe_comm", "p99_a_ns": 10e6, "p99_b_ns": 10e6 * (1 + p99_change / 100),
           "p99_change_pct": p99_change, "p99_ci_lo_pct": p99_change - 5, "p99_ci_hi_pct": p99_change + 5,
           "p50_a_ns": 1e6, "p50_b_ns": 1e6, "significant": "p99" if significant else ""}
    return {"rows": [{"group": "mamba"}, row], "meta": {"throughput_change_pct": thr, "verdict": "v"}}


def rep(i, fix, control=None):
    r = {"rep": i, "knobs": {"route_imbalance_cap": "1.5"}, "rerouted_share": 0.08, "diff": diff(*fix)}
    if control:
        r["control"] = diff(*control)
    return r


def test_summary_reads_moe_comm_and_throughput_of_each_diff():
    s = fix_ab.summary(rep(0, (-30.0, -2.0, True), (1.0, 4.0, False)))
    assert (s["p99_change_pct"], s["ci"], s["throughput_change_pct"], s["p99_significant"]) == (-30.0, (-35.0, -25.0), -2.0, True)
    assert (s["control"]["p99_change_pct"], s["control"]["throughput_change_pct"], s["control"]["p99_significant"]) == (1.0, 4.0, False)


def test_medians_over_repetitions_fix_beside_control():
    results = [rep(0, (-30.0, -8.0, True), (2.0, 3.0, False)), rep(1, (-20.0, 1.0, True), (-4.0, -6.0, False)),
               rep(2, (-25.0, -1.0, False), (0.5, 28.0, True))]
    fix, control = fix_ab.medians(results)
    assert fix == ("median of 3, fix (A -> B): moe_comm p99 -25.0% (significant in 2), throughput -1.0% "
                   "(range -8.0% … +1.0%)")
    assert control == ("median of 3, control (A -> A'): moe_comm p99 +0.5% (significant in 1), throughput +3.0% "
                       "(range -6.0% … +28.0%)")
    text = fix_ab.render(results)
    assert text.count("control, A again: v") == 3 and text.endswith(control)
    assert fix_ab.medians([rep(0, (-30.0, -8.0, True))]) == [
        "median of 1, fix (A -> B): moe_comm p99 -30.0% (significant in 1), throughput -8.0% (range -8.0% … -8.0%)"]
