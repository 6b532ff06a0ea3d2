"""Verdicts a team can gate on: exceedance tests, steps resampled whole, run-to-run noise, warm-up
left out, like with like, missing groups (docs/analyses.md, "compare" and "warm-up")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from factories import add_events, add_run, add_steps, new_store
from paths import TRACES

from hybridscope.analyze import compare, warmup
from hybridscope.analyze.decompose import MEASURES
from hybridscope.analyze.stats import (
    block_bootstrap_quantile,
    exceedance_test,
    noise_bound,
    t_quantile,
)
from hybridscope.cli import main
from hybridscope.store import baselines


def cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def test_exceedance_count_against_beta_binomial_by_hand():
    base = np.arange(1, 101)  # n_b = 100: the p99 order statistic is x_(ceil(99 * 0.99) + 1) = x_(100) = 100
    new = np.array([50] * 9 + [150])  # one of ten above it
    got = exceedance_test(base, new, 0.99)
    assert got["threshold"] == 100 and got["k"] == 1
    # K ~ BetaBinomial(10, a = 1, b = 100): P(K = 0) = B(1, 110) / B(1, 100) = 100 / 110
    assert got["p_high"] == pytest.approx(1 - 100 / 110)
    assert got["expected"] == pytest.approx(10 / 101)
    # P(K = 1) = C(10, 1) B(2, 109) / B(1, 100) = 10 * 100 / (110 * 109)
    assert got["p_low"] == pytest.approx(100 / 110 + 1000 / (110 * 109))


def test_median_test_sees_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = np.sort(rng.lognormal(0, 0.3, 2000))
    assert exceedance_test(base, rng.lognormal(0, 0.3, 2000), 0.5)["p_high"] > 0.01
    assert exceedance_test(base, rng.lognormal(0.1, 0.3, 2000), 0.5)["p_high"] < 1e-6


def test_block_bootstrap_resamples_whole_steps():
    # two steps of ten calls: step 0 all 1, step 1 all 2. A resample draws 2 steps of 2:
    # (0,0) -> median 1, (0,1) -> 1.5, (1,1) -> 2, with probabilities 1/4, 1/2, 1/4
    x = np.array([1] * 10 + [2] * 10)
    steps = np.array([0] * 10 + [1] * 10)
    reps = block_bootstrap_quantile(x, steps, 0.5, 20_000, np.random.default_rng(1))
    assert set(np.unique(reps)) == {1.0, 1.5, 2.0}
    assert np.mean(reps == 1.5) == pytest.approx(0.5, abs=0.02)
    assert np.mean(reps == 1.0) == pytest.approx(0.25, abs=0.02)


def test_noise_bound_is_the_t_prediction_bound():
    assert t_quantile(0.99, 1) == pytest.approx(math.tan(math.pi * 0.49), rel=1e-4)  # Cauchy: closed form
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-5)
    logs = np.array([0.0, 0.2])
    s = np.std(logs, ddof=1)
    want = math.exp(logs.mean() + math.tan(math.pi * 0.49) * s * math.sqrt(1 + 1 / 2))
    assert noise_bound(list(np.exp(logs)), 0.01) == pytest.approx(want, rel=1e-4)
    assert noise_bound([5.0], 0.01) is None


def test_warmup_rule_and_override(tmp_path):
    con = new_store(tmp_path / "w.duckdb")
    run = add_run(con)
    lat = [5_000_000, 4_000_000] + [1_000_000] * 10  # two slow steps, then settled
    add_steps(con, run, lat, phase="decode")
    starts = np.concatenate([[0], np.cumsum(lat[:-1])])
    for i, t0 in enumerate(starts):
        add_events(con, run, [lat[i] // 2], layer_type="mamba", ts_ns=[int(t0)], step=i)
    w = warmup.detect(con, run)
    assert w.steps == {0: 2} and w.cutoffs == {0: 9_000_000}
    info = warmup.left_out(con, run, MEASURES["kernels"], w)
    assert info["events"] == 2 and info["time_ns"] == 4_500_000
    assert warmup.detect(con, run, warmup=3).cutoffs == {0: int(starts[3])}
    assert warmup.detect(con, run, warmup=0).cutoffs == {}
    s = compare.run_samples(con, run)
    assert len(s.groups["mamba"]) == 10 and s.groups["mamba"].max() == 500_000
    assert len(compare.run_samples(con, run, warmup=0).groups["mamba"]) == 12


def test_a_step_that_captured_a_cuda_graph_is_warm_up_mid_run(tmp_path):
    con = new_store(tmp_path / "g.duckdb")
    run = add_run(con)
    lat = [5_000_000, 4_000_000] + [1_000_000] * 5 + [3_000_000] + [1_000_000] * 4  # step 7: a capture
    add_steps(con, run, lat, phase="decode")
    starts = np.concatenate([[0], np.cumsum(lat[:-1])])
    for i, t0 in enumerate(starts):
        add_events(con, run, [lat[i] // 2], layer_type="mamba", ts_ns=[int(t0)], step=i)
    con.execute("UPDATE runs SET notes = ? WHERE run_id = ?",
                ['{"ranks": {"0": {"cuda_graphs": {"capture_steps": [1, 7]}}}}', run])
    w = warmup.detect(con, run)
    # step 7 is settled (<= 1.5x the p90 of the late steps, 2 ms): only the note makes it warm-up;
    # step 1 lies in the warm-up steps already
    assert w.steps == {0: 2} and w.graph_steps == ((0, 7),)
    info = warmup.left_out(con, run, MEASURES["kernels"], w)
    assert info["events"] == 3 and info["time_ns"] == 2_500_000 + 2_000_000 + 1_500_000
    assert info["graph_capture_steps"] == 1 and "and 1 CUDA-graph capture step(s)" in warmup.describe(info)
    s = compare.run_samples(con, run)
    assert len(s.groups["mamba"]) == 9 and s.groups["mamba"].max() == 500_000
    from hybridscope.analyze import steps

    kept, n_warm = steps.steady_windows(con, run)
    assert [w["step"] for w in kept] == [2, 3, 4, 5, 6, 8, 9, 10, 11] and n_warm == 3
    assert warmup.detect(con, run, warmup=1).graph_steps == ()  # --warmup N: exactly N steps


def test_first_call_of_a_kernel_is_warmup_without_steps(tmp_path):
    con = new_store(tmp_path / "f.duckdb")
    run = add_run(con)
    add_events(con, run, [40_000_000] + [200_000] * 50, layer_type="moe_comm", name="nccl")
    add_events(con, run, [900_000] + [200_000] * 50, layer_type="mamba", name="k")  # 4.5x: not warm-up
    s = compare.run_samples(con, run)
    assert len(s.groups["moe_comm"]) == 50 and s.groups["moe_comm"].max() == 200_000
    assert len(s.groups["mamba"]) == 51


def _store(path, *, device="NVIDIA H200", layer_events=False, groups=("mamba", "moe_comm"), n_runs=1, seed=0):
    con = new_store(path)
    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(n_runs):
        run = add_run(con, device_name=device)
        for g in groups:
            d = rng.lognormal(np.log(50_000), 0.2, 400).astype(np.int64)
            if layer_events:
                add_events(con, run, d, layer_type=g, source="layer", kind="layer", name=g)
            else:
                add_events(con, run, d, layer_type=g, name=f"k_{g}")
        ids.append(run)
    return con, ids


def test_check_and_diff_refuse_other_measures_and_devices(tmp_path, capsys):
    con, (a,) = _store(tmp_path / "s.duckdb")
    layers = add_run(con, device_name="NVIDIA H200")
    for g in ("mamba", "moe_comm"):
        add_events(con, layers, [50_000] * 100, layer_type=g, source="layer", kind="layer", name=g)
    cpu = add_run(con, device_name="x86_64")
    for g in ("mamba", "moe_comm"):
        add_events(con, cpu, [50_000] * 100, layer_type=g, name=f"k_{g}")
    con.close()
    db = tmp_path / "s.duckdb"
    assert cli("baseline", "save", "--db", db, "--name", "gpu", "--run", a) == 0
    capsys.readouterr()
    assert cli("check", "--db", db, "--baseline", "gpu", "--run", layers) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "measure 'kernels' vs 'layers'" in err and "--force" in err
    assert cli("check", "--db", db, "--baseline", "gpu", "--run", cpu) == 1
    assert "device 'NVIDIA H200' vs 'x86_64'" in capsys.readouterr().err
    assert cli("diff", a, cpu, "--db", db) == 1
    assert cli("check", "--db", db, "--baseline", "gpu", "--run", cpu, "--force") in (0, 3)
    assert "compared although the device differs" in capsys.readouterr().out
    assert cli("diff", a, layers, "--db", db, "--force") == 0


def test_missing_group_fails_unless_allowed(tmp_path, capsys):
    con, (a,) = _store(tmp_path / "m.duckdb", groups=("mamba", "moe_comm", "attention"))
    b = add_run(con, device_name="NVIDIA H200")
    rng = np.random.default_rng(9)
    for g in ("mamba", "moe_comm"):
        add_events(con, b, rng.lognormal(np.log(50_000), 0.2, 400).astype(np.int64), layer_type=g, name=f"k_{g}")
    con.close()
    db = tmp_path / "m.duckdb"
    assert cli("baseline", "save", "--db", db, "--name", "base", "--run", a) == 0
    capsys.readouterr()
    assert cli("check", "--db", db, "--baseline", "base", "--run", b) == 3
    io = capsys.readouterr()
    assert "attention" in io.out and "missing" in io.out and "1 group(s) missing" in io.err
    assert cli("check", "--db", db, "--baseline", "base", "--run", b, "--allow-missing") == 0


def test_multi_run_baseline_has_a_noise_floor(tmp_path, capsys):
    con, ids = _store(tmp_path / "r.duckdb", n_runs=4)
    con.close()
    db = tmp_path / "r.duckdb"
    assert cli("baseline", "save", "--db", db, "--name", "three", "--run", ids[0], "--run", ids[1],
               "--run", ids[2]) == 0
    assert "3 runs" in capsys.readouterr().err
    assert cli("baseline", "save", "--db", db, "--name", "one", "--run", ids[0]) == 0
    assert "run-to-run noise unknown" in capsys.readouterr().err
    con = new_store(db)
    three = baselines.load(con, "three")
    assert three.n_runs == 3 and three.info["run_ids"] == ids[:3]
    assert sorted(np.unique(three.parts["mamba"]).tolist()) == [0, 1, 2]
    new = compare.run_samples(con, ids[3])
    t3 = compare.check_table(three, new, limits={"p50": 0.05, "p99": 0.1}, meta={})
    t1 = compare.check_table(baselines.load(con, "one"), new, limits={"p50": 0.05, "p99": 0.1}, meta={})
    con.close()
    assert all(r["noise_pct"] is not None for r in t3.to_records())
    assert all(r["noise_pct"] is None for r in t1.to_records())
    assert any("run-to-run noise unknown" in n for n in t1.meta["notes"])


@pytest.mark.slow
def test_skewed_engine_run_flags_moe_comm_p99_against_ep2_bal(tmp_path):
    """The issue's case: balanced 2-GPU EP baseline (../shared/traces/ep2_bal), a skewed engine run
    (2 gloo ranks on CPU, the demo's skew). Different measures and devices: refused, then --force."""
    from hybridscope.demo import default_options, run_demo

    base = tmp_path / "base.duckdb"
    assert cli("import", *[TRACES / f"ep2_bal_rank{r}.pt.trace.json.gz" for r in (0, 1)], "--db", base,
               "--no-progress") == 0
    assert cli("baseline", "save", "--db", base, "--name", "bal") == 0
    assert cli("baseline", "save", "--db", base, "--name", "bal_warm", "--warmup", "0") == 0
    db, run = run_demo(tmp_path / "skew", default_options(device="cpu", requests=6))
    assert cli("check", "--db", db, "--run", run, "--baseline", "bal", "--baseline-db", base) == 1
    for name in ("bal", "bal_warm"):
        con = new_store(base)
        b = baselines.load(con, name)
        con.close()
        con = new_store(db)
        new = compare.run_samples(con, run)
        con.close()
        table = compare.check_table(b, new, limits={"p50": 0.05, "p99": 0.10}, meta={})
        assert table.record(group="moe_comm", stat="p99")["status"] == "regressed", name
        assert cli("check", "--db", db, "--run", run, "--baseline", name, "--baseline-db", base, "--force") == 3
    con = new_store(base)
    assert baselines.load(con, "bal_warm").groups["moe_comm"].max() > 40_000_000  # the NCCL warm-up call kept
    assert baselines.load(con, "bal").groups["moe_comm"].max() < 1_000_000  # and left out
    con.close()
