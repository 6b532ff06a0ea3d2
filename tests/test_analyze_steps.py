"""Steps: derived windows, per-step stacks, phases and the slowest steps, by hand."""

import pytest
from factories import add_events, add_run, add_scopes, add_steps, new_store

from hybridscope.analyze import steps, timeline


def test_steps_derived_from_step_ranges_and_launches(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_scopes(con, run, [(0, 100), (100, 200)], kind="annotation", name=["step#0", "step#1"])
    add_scopes(con, run, [(0, 200)], kind="annotation", name="ProfilerStep#7")  # loses to step#N
    # A launched at 50 (step 0) runs late, 150-250; B launched at 150 (step 1) runs 260-300;
    # C has no recorded launch: its own start (120) puts it in step 1
    add_events(con, run, [100, 40], ts_ns=[150, 260], layer_type=["mamba", "moe_comm"], correlation=[1, 2])
    add_events(con, run, [10], ts_ns=[120], layer_type="attention", stream=9)
    add_events(con, run, [5, 5], ts_ns=[50, 150], source="cuda_api", kind="runtime",
               name="cudaLaunchKernel", correlation=[1, 2])
    t = steps.steps(con, run)
    s0, s1 = t.record(step=0), t.record(step=1)
    assert (s0["latency_ns"], s0["gpu_ns"], s0["top_layer_type"]) == (250, 100, "mamba")  # extended to 250
    assert (s1["latency_ns"], s1["gpu_ns"], s1["n_kernels"]) == (200, 50, 2)  # 100 .. 300
    assert s1["top_layer_type"] == "moe_comm" and s1["top_share_pct"] == pytest.approx(80.0)
    assert s0["phase"] == "unknown" and t.meta["steps_from"] == "derived from step ranges"
    stack = {(r["step"], r["layer_type"]): r["gpu_ns"] for r in steps.step_stack(con, run).to_records()}
    assert stack == {(0, "mamba"): 100, (1, "attention"): 10, (1, "moe_comm"): 40}


def test_profiler_steps_when_nothing_else(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_scopes(con, run, [(0, 100), (100, 200)], kind="annotation", name=["ProfilerStep#3", "ProfilerStep#4"])
    add_events(con, run, [10], ts_ns=[110], layer_type="mamba")
    assert steps.steps(con, run).column("step") == [3, 4]


def _recorded(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_steps(con, run, [10_000, 10_000, 10_000, 100_000], phase=["prefill", "decode", "decode", "decode"])
    starts = [0, 10_000, 20_000, 30_000]
    for step, (start, comm) in enumerate(zip(starts, [2_000, 2_000, 2_000, 80_000])):
        add_events(con, run, [5_000], ts_ns=[start], layer_type="mamba", step=step)
        add_events(con, run, [comm], ts_ns=[start + 5_000], layer_type="moe_comm", step=step)
    return con, run


def test_recorded_steps_keep_their_duration(tmp_path):
    con, run = _recorded(tmp_path)
    t = steps.steps(con, run)
    assert t.column("latency_ns") == [10_000, 10_000, 10_000, 100_000]
    assert t.meta["steps_from"] == "recorded"
    assert timeline.step_windows(con, run)[3]["gpu_ns"] == 85_000


def test_phases(tmp_path):
    con, run = _recorded(tmp_path)
    t = steps.phases(con, run)
    assert t.column("phase") == ["prefill", "decode"]
    d = t.record(phase="decode")
    assert d["n_steps"] == 3 and d["p50_ns"] == pytest.approx(10_000)
    assert d["p99_ns"] == pytest.approx(10_000 + 0.98 * 90_000)
    assert d["gpu_mean_ns"] == pytest.approx((7_000 + 7_000 + 85_000) / 3)


def test_slow_steps(tmp_path):
    con, run = _recorded(tmp_path)
    t = steps.slow_steps(con, run)
    # p99 of [10k,10k,10k,100k] = 10k + 0.97*90k = 97.3k: only step 3 is slow
    assert t.meta["n_slow"] == 1 and t.meta["slow_steps"] == [[0, 3]]
    assert t.meta["threshold_ns"] == pytest.approx(97_300)
    comm = t.record(layer_type="moe_comm")
    assert comm["slow_mean_ns"] == 80_000 and comm["typical_mean_ns"] == 2_000 and comm["growth_ns"] == 78_000
    assert comm["slow_share_pct"] == pytest.approx(100 * 80 / 85)
    assert t.record(layer_type="mamba")["growth_ns"] == 0
    assert t.meta["dominant"] == "moe_comm" and t.meta["grew_most"] == "moe_comm"


def test_no_steps(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [10], layer_type="mamba")
    assert len(steps.steps(con, run)) == 0
    assert steps.slow_steps(con, run).meta["n_slow"] == 0


def test_step_stack_bins(tmp_path):
    con, run = _recorded(tmp_path)
    one = steps.step_stack_bins(con, run)
    assert one.meta["n_bins"] == 4 and len(one) == 8  # one bin per step, mamba + moe_comm each
    two = steps.step_stack_bins(con, run, max_bars=2)
    got = {(r["bin"], r["layer_type"]): (r["first_step"], r["last_step"], r["gpu_ns"]) for r in two.to_records()}
    assert got[(0, "moe_comm")] == (0, 1, 2_000.0)
    assert got[(1, "moe_comm")] == (2, 3, (2_000 + 80_000) / 2)
    assert got[(1, "mamba")] == (2, 3, 5_000.0)


def test_layer_types_outside_the_vocabulary_come_last_by_name(tmp_path):
    """An import keeps the layer types it was given: the stacks list them after the vocabulary's."""
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_steps(con, run, [1_000, 1_000])
    add_events(con, run, [100, 100, 100, 100], ts_ns=[0, 100, 200, 1_000], step=[0, 0, 0, 1],
               layer_type=["zeta", "mamba", "alpha", "zeta"])
    assert [r["layer_type"] for r in steps.step_stack(con, run).to_records() if r["step"] == 0] == \
        ["mamba", "alpha", "zeta"]
    assert [r["layer_type"] for r in steps.step_stack_bins(con, run).to_records() if r["bin"] == 0] == \
        ["mamba", "alpha", "zeta"]
    assert steps.slow_steps(con, run, quantile=0.5).meta["n_slow"] >= 1


def test_layers_mode_capture_stacks_layer_timings(tmp_path):
    """A `layers`-mode run has no kernels, only per-layer device times tagged with their step."""
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, source="capture")
    add_steps(con, run, [1_000, 3_000], phase=["prefill", "decode"])
    add_events(con, run, [300, 200, 900], ts_ns=[0, 400, 1_000], source="layer", kind="layer",
               layer_type=["mamba", "moe_comm", "moe_comm"], step=[0, 0, 1])
    t = steps.steps(con, run)
    assert t.column("gpu_ns") == [500, 900] and t.column("n_kernels") == [0, 0]
    assert t.record(step=1)["top_layer_type"] == "moe_comm"
    stack = {(r["step"], r["layer_type"]): r["gpu_ns"] for r in steps.step_stack(con, run).to_records()}
    assert stack == {(0, "mamba"): 300, (0, "moe_comm"): 200, (1, "moe_comm"): 900}


def test_unsampled_capture_steps_have_a_latency_but_no_breakdown(tmp_path):
    """Capture samples k steps of every n: the others are timed but carry no layer timings, so
    they count for latency and never as steps that spent no time in any layer."""
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, source="capture")
    add_steps(con, run, [1_000, 9_000, 2_000], phase=["decode"] * 3, sampled=[True, False, True])
    add_events(con, run, [600, 1_500], ts_ns=[0, 10_000], source="layer", kind="layer",
               layer_type=["mamba", "moe_comm"], step=[0, 2])
    ph = steps.phases(con, run).record(phase="decode")
    assert ph["n_steps"] == 3 and ph["max_ns"] == 9_000  # the unsampled step's latency counts
    assert ph["gpu_mean_ns"] == (600 + 1_500) / 2  # its missing breakdown does not
    slow = steps.slow_steps(con, run)
    assert slow.meta["n_steps"] == 2 and slow.meta["slow_steps"] == [[0, 2]]
    assert slow.meta["dominant"] == "moe_comm"
    bins = steps.step_stack_bins(con, run)
    assert bins.meta["n_steps"] == 2
