"""Baselines, check and diff: bootstrap quantile CIs, regressions caught, same-distribution runs pass."""

from __future__ import annotations

import numpy as np
import pytest
from factories import add_events, add_run, add_steps, new_store

from hybridscope.analyze import compare
from hybridscope.analyze.stats import bootstrap_quantile, quantile_cont, ratio_ci
from hybridscope.cli import main
from hybridscope.store import baselines
from hybridscope.store.baselines import Samples

LIMITS = {"p50": 0.05, "p99": 0.10}


def samples(**groups) -> Samples:
    g = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in groups.items()}
    return Samples(g, {k: int(v.sum()) for k, v in g.items()}, {k: len(v) for k, v in g.items()}, None, None)


def draw(rng, n=4000, *, comm_tail=1.0):
    """A hybrid run: tight mamba, bursty attention, moe_comm with a heavy tail (scaled by comm_tail)."""
    comm = rng.lognormal(np.log(40_000), 0.25, n)
    tail = comm > np.quantile(comm, 0.97)
    comm[tail] *= comm_tail
    return {
        "mamba": rng.normal(20_000, 500, n).clip(1),
        "attention": rng.lognormal(np.log(30_000), 0.5, n),
        "moe_comm": comm,
    }


def test_quantile_cont_matches_hand_computed():
    x = np.array([1, 2, 3, 4, 100])
    assert quantile_cont(x, 0.5) == 3
    # h = 4 * 0.99 = 3.96 -> 4 + 0.96 * (100 - 4) = 96.16
    assert quantile_cont(x, 0.99) == pytest.approx(96.16)
    assert quantile_cont(np.array([7]), 0.99) == 7


def test_order_statistic_bootstrap_matches_textbook_bootstrap():
    rng = np.random.default_rng(1)
    x = np.sort(rng.lognormal(0, 1, 300))
    fast = bootstrap_quantile(x, 0.9, 20_000, rng)
    slow = np.array([np.quantile(x[rng.integers(0, 300, 300)], 0.9) for _ in range(4000)])
    assert fast.mean() == pytest.approx(slow.mean(), rel=0.02)
    assert fast.std() == pytest.approx(slow.std(), rel=0.08)


def test_ratio_ci_brackets_a_known_shift():
    rng = np.random.default_rng(2)
    base = np.sort(rng.lognormal(0, 0.3, 5000))
    new = np.sort(base * 1.5)
    point, lo, hi = ratio_ci(base, new, 0.5, alpha=0.01, b=2000, rng=rng)
    assert point == pytest.approx(1.5)
    assert lo < 1.5 < hi and lo > 1.3


def test_injected_p99_regression_of_moe_comm_is_caught():
    rng = np.random.default_rng(3)
    base, new = samples(**draw(rng)), samples(**draw(rng, comm_tail=1.2))
    rows = {(r[0], r[1]): r for r in compare.compare_samples(base, new, limits=LIMITS)}
    assert rows[("moe_comm", "p99")][-1] == "regressed"
    assert rows[("moe_comm", "p99")][6] == pytest.approx(20, abs=6)  # change_pct
    assert rows[("mamba", "p99")][-1] == "ok" and rows[("moe_comm", "p50")][-1] == "ok"


def test_same_distribution_passes_99_of_100_seeded():
    rng = np.random.default_rng(4)
    failures = 0
    for seed in range(100):
        rows = compare.compare_samples(samples(**draw(rng)), samples(**draw(rng)), limits=LIMITS, seed=seed)
        failures += any(r[-1] == "regressed" for r in rows)
    assert failures <= 1


def test_improvement_new_missing_and_too_few():
    base = samples(mamba=np.full(100, 1000), attention=np.arange(1, 101) * 100, gone=np.arange(50) + 1)
    new = samples(mamba=np.full(100, 500), attention=np.arange(1, 11) * 100, fresh=np.arange(50) + 1)
    rows = {(r[0], r[1]): r[-1] for r in compare.compare_samples(base, new, limits=LIMITS)}
    assert rows[("mamba", "p50")] == "improved"
    assert rows[("attention", "p99")] == "too few"
    assert rows[("gone", "p50")] == "missing" and rows[("fresh", "p99")] == "new"


def _store_run(con, groups, *, step_tokens=None):
    run = add_run(con)
    for lt, d in groups.items():
        add_events(con, run, [int(x) for x in d], layer_type=lt, name=f"k_{lt}")
    if step_tokens:
        add_steps(con, run, [1_000_000] * len(step_tokens), n_tokens=step_tokens)
    return run


def test_baseline_roundtrip_and_cli_check_exit_codes(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "s.duckdb"
    con = new_store(path)
    a = _store_run(con, draw(rng, 1500))
    b = _store_run(con, draw(rng, 1500))
    c = _store_run(con, draw(rng, 1500, comm_tail=1.5))
    per = {by: compare.run_samples(con, a, by=by) for by in compare.GROUPINGS}
    baselines.save(con, "main", a, per)
    loaded = baselines.load(con, "main")
    assert set(loaded.groups) == {"mamba", "attention", "moe_comm"}
    assert np.array_equal(loaded.groups["mamba"], per["layer_type"].groups["mamba"])
    assert set(baselines.load(con, "main", by="kernel").groups) == {"k_mamba", "k_attention", "k_moe_comm"}
    con.close()

    def run(*args):
        with pytest.raises(SystemExit) as e:
            main(list(args))
        return e.value.code

    junit = tmp_path / "check.xml"
    assert run("check", "--db", str(path), "--baseline", "main", "--run", str(b)) == 0
    assert run("check", "--db", str(path), "--baseline", "main", "--run", str(c), "--junit", str(junit)) == 3
    xml = junit.read_text()
    assert 'failures="1"' in xml and "moe_comm" in xml
    assert run("check", "--db", str(path), "--baseline", "nope") == 1
    assert run("check", "--db", str(path), "--baseline", "main", "--max-p99-regression", "lots") == 2
    assert run("baseline", "save", "--db", str(path), "--name", "main", "--run", str(b)) == 1  # exists
    assert run("baseline", "save", "--db", str(path), "--name", "main", "--run", str(b), "--force") == 0


def test_diff_verdict_reports_moe_comm_tail_and_throughput(tmp_path, capsys):
    rng = np.random.default_rng(6)
    path = tmp_path / "d.duckdb"
    con = new_store(path)
    a = _store_run(con, draw(rng, 3000), step_tokens=[100] * 10)
    b = _store_run(con, draw(rng, 3000, comm_tail=2.0), step_tokens=[100] * 10)
    ta, tb = compare.run_samples(con, a), compare.run_samples(con, b)
    table = compare.diff_table(ta, tb, meta={})
    rec = table.record(group="moe_comm")
    assert rec["p99_change_pct"] > 40 and "p99" in rec["significant"]
    assert table.record(group="mamba")["significant"] == ""
    assert table.meta["verdict"].startswith("p99 of moe_comm +")
    assert "throughput" in table.meta["verdict"]
    # one run a side: the table says its intervals hold no run-to-run noise, just before the verdict
    assert table.meta["notes"][-2].startswith("one run a side: the intervals resample steps within each run")
    assert table.meta["notes"][-1] == table.meta["verdict"]
    con.close()
    with pytest.raises(SystemExit) as e:
        main(["diff", str(a), str(b), "--db", str(path), "--format", "json"])
    assert e.value.code == 0
    assert "moe_comm" in capsys.readouterr().out
