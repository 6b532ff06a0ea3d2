"""Expert load, imbalance and its correlations, by hand."""

import numpy as np
import pytest
from factories import add_events, add_routing, add_run, add_steps, new_store

from hybridscope.analyze import experts
from hybridscope.store import db


@pytest.fixture
def store(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, ranks=[0, 1])
    # step 0 balanced: [2,2,2,2] over both ranks; step 1: [8,0,2,2], total 12, mean 3, max 8
    add_routing(con, run, np.array([[[1, 1, 1, 1]], [[6, 0, 1, 1]]]), rank=0, layers=[3])
    add_routing(con, run, np.array([[[1, 1, 1, 1]], [[2, 0, 1, 1]]]), rank=1, layers=[3])
    return con, run


def test_imbalance_sums_ranks(store):
    con, run = store
    t = experts.imbalance(con, run)
    s0, s1 = t.record(step=0), t.record(step=1)
    assert s0["imbalance"] == pytest.approx(1.0) and s0["tokens"] == 8
    assert (s1["tokens"], s1["max_tokens"], s1["mean_tokens"], s1["hot_expert"]) == (12, 8, 3.0, 0)
    assert s1["imbalance"] == pytest.approx(8 / 3) and s1["layer_index"] == 3 and s1["n_experts"] == 4


def test_expert_load_and_capacity_factor(store):
    con, run = store
    t = experts.expert_load(con, run)
    e0 = t.record(expert=0)
    assert e0["tokens"] == 10 and e0["share_pct"] == pytest.approx(50.0)
    assert e0["mean_per_step"] == pytest.approx(5.0)
    # capacity factors of expert 0: 2/2 = 1 at step 0, 8/3 at step 1; continuous p99
    assert e0["capacity_factor_p99"] == pytest.approx(1 + 0.99 * (8 / 3 - 1))
    assert t.record(expert=1)["capacity_factor_p99"] == pytest.approx(0.99)  # 0 at step 1, 1 at step 0


def test_missing_expert_rows_count_as_zero(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    # step 0 routes to experts 0..3; step 1 records only experts 0 and 1
    db.insert_columns(con, "routing", {"run_id": [run] * 6, "rank": [0] * 6, "step": [0, 0, 0, 0, 1, 1],
                                       "layer_index": [1] * 6, "expert": [0, 1, 2, 3, 0, 1],
                                       "tokens": [1, 1, 1, 1, 3, 1]})
    s1 = experts.imbalance(con, run).record(step=1)
    assert s1["mean_tokens"] == pytest.approx(1.0) and s1["imbalance"] == pytest.approx(3.0)
    e3 = experts.expert_load(con, run).record(expert=3)
    assert e3["mean_per_step"] == pytest.approx(0.5)


def test_expert_steps_take_the_slowest_rank(store):
    con, run = store
    for rank, comm in ((0, [100, 300]), (1, [150, 200])):
        add_steps(con, run, [1000, 2000], rank=rank)
        add_events(con, run, comm, ts_ns=[0, 1000], rank=rank, layer_type="moe_comm", step=[0, 1])
    t = experts.expert_steps(con, run)
    assert t.column("moe_comm_ns") == [150, 300]
    assert t.column("latency_ns") == [1000, 2000]
    assert t.column("imbalance") == pytest.approx([1.0, 8 / 3])


def test_expert_steps_without_timeline(store):
    con, run = store
    assert experts.expert_steps(con, run).column("moe_comm_ns") == [None, None]


def test_rankdata_averages_ties():
    assert experts.rankdata(np.array([10, 20, 20, 30])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert experts.rankdata(np.array([3, 1, 2])).tolist() == [3.0, 1.0, 2.0]


def test_pearson_and_spearman():
    x, y = np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 40])
    # Pearson by hand: dx = [-1.5,-.5,.5,1.5]; dy = y - 11.5
    dx, dy = x - x.mean(), y - y.mean()
    assert experts.pearson(x, y) == pytest.approx((dx * dy).sum() / np.sqrt((dx**2).sum() * (dy**2).sum()))
    assert experts.spearman(x, y) == pytest.approx(1.0)
    assert experts.spearman(x, -y) == pytest.approx(-1.0)
    assert experts.pearson(np.ones(4), y) is None and experts.pearson(x[:2], y[:2]) is None


def test_no_routing_no_correlation_rows(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [10], layer_type="moe_comm")
    assert len(experts.expert_correlation(con, run)) == 0


def test_expert_tail_hand_computed(tmp_path):
    """Layer 1 (2 experts) takes 100 ns a step for 9 steps and 1000 ns at step 9, when expert 0 got
    all 4 tokens (capacity factor 2.0) instead of 3 of 4 (1.5). Tail steps: time >= the continuous
    p90 of [100 x 9, 1000] = 100 + 0.1 x 900 = 190, i.e. step 9; the layer's gain = 1000 - median 100."""
    from hybridscope.analyze import advice

    con = new_store(tmp_path / "t.duckdb")
    run = add_run(con, source="capture")
    add_steps(con, run, [10_000] * 10, phase="decode")
    times = [100] * 9 + [1000]
    add_events(con, run, times, source="layer", kind="layer", layer_type="moe_experts", layer_index=1,
               step=list(range(10)), ts_ns=[s * 10_000 for s in range(10)])
    tokens = np.array([[[3, 1]]] * 9 + [[[4, 0]]])  # [step, layer, expert]
    add_routing(con, run, tokens, layers=[1])
    t = experts.expert_tail(con, run)
    rec = t.record(layer_index=1, expert=0)
    assert rec["capacity_factor_p99"] == pytest.approx(1.5 + 0.91 * 0.5)  # h = 9 x 0.99 = 8.91
    assert rec["tail_load"] == pytest.approx(2.0) and rec["other_load"] == pytest.approx(1.5)
    assert rec["layer_gain_ns"] == 900 and rec["moves_tail"] == "yes"
    assert [r["expert"] for r in t.to_records()] == [0]  # expert 1 (cf p99 0.5) is never hot
    a = advice.capacity_factor(t, threshold=1.5)
    assert a.numbers["capacity_factors"] == {"1/0": 2.0} and a.at_stake_ns == 900
    con.close()


def test_warm_up_steps_and_graph_captures_are_left_out(tmp_path):
    """Steps 0-1 are the rule's warm-up (5 and 4 ms before 1 ms steps) and step 6 captured a CUDA
    graph: their routing (all tokens on expert 0) is no part of the load; --warmup 0 keeps it."""
    con = new_store(tmp_path / "w.duckdb")
    run = add_run(con)
    lat = [5_000_000, 4_000_000] + [1_000_000] * 10
    add_steps(con, run, lat, phase="decode")
    con.execute("UPDATE runs SET notes = ? WHERE run_id = ?",
                ['{"ranks": {"0": {"cuda_graphs": {"capture_steps": [6]}}}}', run])
    tokens = np.array([[[8, 0, 0, 0]] if s in (0, 1, 6) else [[2, 2, 2, 2]] for s in range(12)])
    add_routing(con, run, tokens, layers=[3])
    load = experts.expert_load(con, run)
    e0 = load.record(expert=0)
    assert e0["tokens"] == 2 * 9 and e0["capacity_factor_p99"] == pytest.approx(1.0)
    assert load.meta["notes"] == ["3 warm-up step(s) left out (--warmup 0 keeps them)"]
    assert sorted(experts.step_imbalance(con, run)) == [2, 3, 4, 5, 7, 8, 9, 10, 11]
    kept = experts.expert_load(con, run, warmup=0).record(expert=0)
    assert kept["tokens"] == 3 * 8 + 2 * 9 and kept["capacity_factor_p99"] == pytest.approx(4.0)  # 3 of 12 at 4
