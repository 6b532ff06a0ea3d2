"""Dashboard view and the contrast header, against hand-computed answers."""

import pytest
from factories import add_events, add_run, add_samples, add_steps, new_store

from hybridscope.analyze import dashboard
from hybridscope.store import db


@pytest.fixture
def store(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, window_ns=(0, 1000))
    # device 0: [0,100) and [50,150) overlap, [300,400): busy 150 + 100 = 250 of 1000
    add_events(con, run, [100, 100, 100], ts_ns=[0, 50, 300], layer_type="mamba", stream=7)
    add_events(con, run, [10, 10, 10, 1000 - 0], ts_ns=[500, 520, 540, 0], layer_type="moe_comm",
               device=1, stream=11)
    add_samples(con, run, "gpu_util_pct", [0, 100], [90.0, 100.0])
    add_steps(con, run, [100, 200, 300, 400])
    db.insert_columns(con, "requests", {
        "run_id": [run] * 3, "request_id": [0, 1, 2], "arrival_ns": [0, 0, 0],
        "first_token_ns": [10, 20, 30], "finish_ns": [100, 60, 40], "output_tokens": [10, 5, 1]})
    return con, run


def test_duty_cycle_is_union_over_window(store):
    con, run = store
    t = dashboard.duty_cycle(con, run)
    d0 = t.record(rank=0, device=0)
    assert d0["busy_ns"] == 250 and d0["window_ns"] == 1000 and d0["duty_cycle_pct"] == pytest.approx(25.0)
    d1 = t.record(rank=0, device=1)
    assert d1["busy_ns"] == 1000 and d1["duty_cycle_pct"] == pytest.approx(100.0)


def test_dashboard_metrics(store):
    con, run = store
    t = dashboard.dashboard(con, run)
    get = {(r["metric"], r["device"]): r["value"] for r in t.to_records()}
    assert get[("nvml_util_pct", 0)] == pytest.approx(95.0)
    assert get[("step_p50_ns", None)] == pytest.approx(250.0)
    assert get[("step_p99_ns", None)] == pytest.approx(300 + 0.97 * 100)
    assert get[("ttft_p50_ns", None)] == pytest.approx(20.0)
    assert get[("ttft_p99_ns", None)] == pytest.approx(20 + 0.98 * 10)
    # ITL: (100-10)/9 = 10 and (60-20)/4 = 10; the 1-token request has none
    assert get[("itl_p50_ns", None)] == pytest.approx(10.0)
    assert t.record(metric="itl_p50_ns")["n"] == 2
    h = t.meta["headline"]
    assert h["nvml_util_pct"] == pytest.approx(95.0)
    assert h["duty_cycle_pct"] == pytest.approx((25.0 + 100.0) / 2)
    assert h["n_steps"] == 4


def test_no_samples_no_requests_gives_no_such_rows(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [100], layer_type="mamba")
    t = dashboard.dashboard(con, run)
    assert {r["metric"] for r in t.to_records()} == {"duty_cycle_pct"}
    assert t.meta["headline"]["nvml_util_pct"] is None


def test_contrast_picks_the_longest_tail_among_big_groups(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [100] * 8, layer_type="mamba")  # 800 ns: 31.2 % of 2561, tail 1
    add_events(con, run, [10, 10, 10, 10, 10, 10, 10, 690], layer_type="moe_comm")  # 760: 29.7 %, tail 64
    add_events(con, run, [1, 1000], layer_type="norm")  # 1001: 39.1 %, tail 990/500.5 = 1.98
    assert dashboard.contrast(con, run, min_gpu_pct=20.0).meta["tail_layer_type"] == "moe_comm"
    assert dashboard.contrast(con, run, min_gpu_pct=30.0).meta["tail_layer_type"] == "norm"
    # no group holds 50 %: every group is a candidate again
    assert dashboard.contrast(con, run, min_gpu_pct=50.0).meta["tail_layer_type"] == "moe_comm"


def test_contrast_numbers(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, window_ns=(0, 10_000))
    add_events(con, run, [100] * 8, layer_type="mamba")
    add_events(con, run, [10, 10, 10, 10, 10, 10, 10, 690], layer_type="moe_comm")
    c = dashboard.contrast(con, run)
    assert c.meta["tail_layer_type"] == "moe_comm"
    got = {r["item"]: r["value"] for r in c.to_records() if r["side"] == "decomposition"}
    p99 = 10 + 0.93 * 680  # continuous p99 of seven 10s and one 690: h = 6.93
    assert got["p50_ns"] == pytest.approx(10.0)
    assert got["p99_ns"] == pytest.approx(p99)
    assert got["tail_ratio"] == pytest.approx(p99 / 10)
    assert got["calls_pct"] == pytest.approx(50.0)
    assert got["wall_pct"] == pytest.approx(100 * 760 / 10_000)
    dash = {r["item"] for r in c.to_records() if r["side"] == "dashboard"}
    assert "duty_cycle_pct" in dash


def test_contrast_prefers_attributed_layer_types(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [10] * 7 + [10_000], layer_type="other")  # the longest tail, but unattributed
    add_events(con, run, [10] * 7 + [100], layer_type="moe_comm")
    assert dashboard.contrast(con, run).meta["tail_layer_type"] == "moe_comm"
    con2 = new_store(tmp_path / "t.duckdb")
    run2 = add_run(con2)
    add_events(con2, run2, [10] * 7 + [10_000], layer_type="other")  # nothing attributed: say so
    assert dashboard.contrast(con2, run2).meta["tail_layer_type"] == "other"
