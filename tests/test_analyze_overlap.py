"""Overlap, exposed communication, idle gaps and launch-bound detection, by hand."""

import pytest
from factories import add_events, add_run, add_steps, new_store

from hybridscope.analyze import overlap


@pytest.fixture
def store(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, window_ns=(0, 1000))
    add_events(con, run, [100, 10], ts_ns=[0, 150], layer_type="mamba", stream=7, name="scan")
    add_events(con, run, [150, 100], ts_ns=[50, 300], layer_type="moe_comm", stream=11, name="nccl")
    return con, run


def test_exposed_communication(store):
    con, run = store
    r = overlap.overlap(con, run).record(rank=0)
    # comm [50,200) + [300,400) = 250; compute [0,100) + [150,160) = 110; both: 50 + 10 = 60
    assert (r["comm_ns"], r["compute_ns"], r["overlapped_ns"], r["exposed_ns"]) == (250, 110, 60, 190)
    assert (r["busy_ns"], r["idle_ns"], r["compute_only_ns"]) == (300, 700, 50)  # busy = [0,200)+[300,400)
    assert r["exposed_comm_pct"] == pytest.approx(76.0) and r["exposed_wall_pct"] == pytest.approx(19.0)


def test_gaps(store):
    con, run = store
    g = overlap.gaps(con, run)
    s = g["gap_summary"].record(rank=0)
    # busy [0,200) and [300,400): one gap of 100
    assert (s["n_gaps"], s["idle_ns"], s["max_ns"]) == (1, 100, 100) and s["idle_pct"] == pytest.approx(10.0)
    top = g["top_gaps"].to_records()[0]
    assert (top["at_ns"], top["gap_ns"], top["before"], top["after"]) == (200, 100, "moe_comm", "moe_comm")
    site = g["gap_sites"].record(before="moe_comm", after="moe_comm")
    assert site["n_gaps"] == 1 and site["idle_ns"] == 100
    assert g["gap_histogram"].rows == ((64, 128, 1, 100),)


def test_gap_neighbours_and_sites(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    # a [0,10) attention, b [5,30) mamba (ends last), gap 30..40, c [40,50) moe_router, gap 50..80, d norm
    add_events(con, run, [10, 25, 10, 5], ts_ns=[0, 5, 40, 80],
               layer_type=["attention", "mamba", "moe_router", "norm"], name=["a", "b", "c", "d"])
    g = overlap.gaps(con, run, top=1)
    assert g["top_gaps"].rows[0][3:] == (30, None, "moe_router", "norm", "c", "d")
    assert g["gap_sites"].record(before="mamba", after="moe_router")["idle_ns"] == 10
    s = g["gap_summary"].record(rank=0)
    assert s["p50_ns"] == pytest.approx(20.0) and s["p99_ns"] == pytest.approx(10 + 0.99 * 20)


def test_launch_bound_decode_not_prefill(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_steps(con, run, [300_000, 60_000], phase=["prefill", "decode"], start_ns=0)
    # prefill: 3 kernels of 100 us, 1 us apart; decode: 5 kernels of 2 us, 10 us apart
    add_events(con, run, [100_000] * 3, ts_ns=[0, 101_000, 202_000], step=0, phase="prefill",
               correlation=[1, 2, 3])
    dec_ts = [300_000 + 12_000 * i for i in range(5)]
    add_events(con, run, [2_000] * 5, ts_ns=dec_ts, step=1, phase="decode", correlation=[4, 5, 6, 7, 8])
    add_events(con, run, [1_000] * 5, ts_ns=[t - 1_500 for t in dec_ts], source="cuda_api", kind="runtime",
               name="cudaLaunchKernel", correlation=[4, 5, 6, 7, 8])
    t = overlap.launch_bound(con, run)
    d, p = t.record(phase="decode"), t.record(phase="prefill")
    assert d["median_kernel_ns"] == 2_000 and d["median_gap_ns"] == 10_000 and d["idle_ns"] == 40_000
    assert d["gap_ge_kernel_pct"] == pytest.approx(80.0)  # the first kernel has no gap before it
    assert d["gpu_kernels_per_ms"] == pytest.approx(5 / 0.010)
    assert d["cpu_launches_per_ms"] == pytest.approx(5 / 0.048)
    assert d["launch_bound"] == "yes"
    assert p["launch_bound"] == "no" and p["median_gap_ns"] == 1_000 and p["cpu_launches_per_ms"] is None


def test_warm_up_is_a_timeline_of_its_own(tmp_path):
    """With --warmup 1 the cut-off is step 1's start (100): a warm-up collective [10,160) that
    reaches past it covers nothing of the steady state; the duty cycle keeps it."""
    from hybridscope.analyze import dashboard, timeline

    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, window_ns=(0, 300))
    add_steps(con, run, [100, 100, 100])
    add_events(con, run, [150], ts_ns=[10], layer_type="moe_comm", stream=11, name="first_a2a", step=0)
    add_events(con, run, [30], ts_ns=[150], layer_type="moe_comm", stream=11, name="a2a", step=1)
    add_events(con, run, [20, 10], ts_ns=[120, 200], layer_type="mamba", name="scan", step=[1, 2])
    with timeline.materialized(con, run, warmup=1):
        ov = overlap.overlap(con, run)
        g = overlap.gaps(con, run)["gap_summary"].record(rank=0)
        duty = dashboard.duty_cycle(con, run).record(rank=0)
    r = ov.record(rank=0)
    # steady: compute [120,140) + [200,210), comm [150,180); window [100,300)
    assert (r["window_ns"], r["comm_ns"], r["compute_ns"], r["overlapped_ns"], r["exposed_ns"]) == (200, 30, 30, 0, 30)
    assert r["exposed_wall_pct"] == pytest.approx(15.0)
    note = "steady state: each rank from its warm-up cut-off on; 1 warm-up kernel (150 ns busy) left out"
    assert ov.meta["notes"] == [note + " (--warmup 0 keeps them)"]
    # gaps 140..150 and 180..200 (the warm-up collective's end at 160 would have hidden the first)
    assert (g["n_gaps"], g["idle_ns"], g["max_ns"]) == (2, 30, 20) and g["idle_pct"] == pytest.approx(15.0)
    assert (duty["window_ns"], duty["busy_ns"]) == (300, 180)  # [10,180) + [200,210), warm-up kept
    with timeline.materialized(con, run, warmup=0):
        ov0 = overlap.overlap(con, run)
    r0 = ov0.record(rank=0)
    # everything: comm [10,180), compute [120,140) + [200,210), both [120,140)
    assert (r0["window_ns"], r0["comm_ns"], r0["overlapped_ns"], r0["busy_ns"]) == (300, 170, 20, 180)
    assert ov0.meta["notes"] == []
