"""Collectives across ranks: waits, stragglers, traffic and clock offsets against hand-computed answers."""

from __future__ import annotations

import orjson
import pytest
from factories import add_events, add_run, add_scopes, new_store

from hybridscope.analyze import collectives as col

NCCL = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"


@pytest.fixture
def two_rank(tmp_path):
    """Two steps, two all-to-alls each. Step 0: rank 1 arrives 300 ns late both times.
    Step 1: rank 0 arrives 100 ns late in the first, rank 1 50 ns late in the second."""
    con = new_store(tmp_path / "c.duckdb")
    run = add_run(con, ranks=(0, 1))
    # arrivals (start) per rank; the k-th collective completes at the same time on both ranks
    starts = {0: [1000, 11000, 21100, 31000], 1: [1300, 11300, 21000, 31050]}
    steps = [0, 0, 1, 1]
    args = orjson.dumps({"Process Group Name": "0", "In split size": "[3, 5]", "In msg nelems": 8 * 4,
                         "Group size": 2, "dtype": "BFloat16", "Process Group Ranks": "[0, 1]"}).decode()
    for rank, ss in starts.items():
        ends = [1500, 11500, 21500, 31500]
        add_events(con, run, [e - s for s, e in zip(ss, ends)], rank=rank, name=NCCL, ts_ns=ss,
                   step=steps, layer_type="moe_comm", args=args)
        add_scopes(con, run, [(0, 20_000), (20_000, 40_000)],
                   rank=rank, kind="step", name="step", step=[0, 1])
    return con, run


def test_waits_and_straggler_flags(two_rank):
    con, run = two_rank
    t = col.collectives(con, run)
    waits = {(r["seq"], r["rank"]): r["wait_ns"] for r in t.to_records()}
    assert waits == {(0, 0): 300, (0, 1): 0, (1, 0): 300, (1, 1): 0, (2, 0): 0, (2, 1): 100, (3, 0): 50, (3, 1): 0}
    last = [(r["seq"], r["rank"]) for r in t.to_records() if r["straggler"] == "yes"]
    assert last == [(0, 1), (1, 1), (2, 0), (3, 1)]


def test_rank_waits(two_rank):
    con, run = two_rank
    t = col.rank_waits(con, run)
    r0, r1 = t.record(rank=0), t.record(rank=1)
    assert r0["wait_ns"] == 650 and r1["wait_ns"] == 100
    assert r0["straggler_n"] == 1 and r1["straggler_n"] == 3
    # time inside collectives: rank 0 = 500 + 500 + 400 + 500
    assert r0["comm_ns"] == 1900
    assert r0["wait_pct"] == pytest.approx(100 * 650 / 1900)


def test_stragglers_per_step(two_rank):
    con, run = two_rank
    t = col.stragglers(con, run)
    s0, s1 = t.record(step=0), t.record(step=1)
    assert s0["straggler"] == 1 and s0["last_n"] == 2 and s0["wait_ns"] == 600 and s0["caused_ns"] == 600
    # step 1: each rank last once; rank 1 waited 100 for rank 0, rank 0 waited 50 for rank 1
    assert s1["straggler"] == 0 and s1["caused_ns"] == 100 and s1["last_n"] == 1 and s1["wait_ns"] == 150
    assert s0["step_ns"] == 20_000
    assert s0["wait_share_pct"] == pytest.approx(100 * 600 / (2 * 20_000))


def test_straggler_is_who_was_waited_for_longest_not_last_most_often(tmp_path):
    """Per MoE layer, three collectives: rank 1 arrives 1 us late at the split exchange and the
    dispatch, rank 0 10 us late at the combine. Rank 1 arrives last more often; its peer waited
    2 us for it, but 10 us for rank 0."""
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, ranks=(0, 1))
    starts = {0: [0, 10_000, 30_000], 1: [1_000, 11_000, 20_000]}
    for rank, ss in starts.items():
        add_events(con, run, [40_000 - s for s in ss], rank=rank, name=NCCL, ts_ns=ss, step=[0, 0, 0],
                   layer_type="moe_comm")
        add_scopes(con, run, [(0, 50_000)], rank=rank, kind="step", name="step", step=[0])
    s0 = col.stragglers(con, run).record(step=0)
    assert (s0["straggler"], s0["caused_ns"], s0["last_n"], s0["wait_ns"]) == (0, 10_000, 1, 12_000)


def test_traffic_matrix_from_split_sizes(two_rank):
    con, run = two_rank
    t = col.traffic(con, run)
    # 4 collectives per rank, splits [3, 5] rows of 32 / 8 = 4 bf16 elements = 8 bytes per row
    cells = {(r["src_rank"], r["dst_rank"]): (r["rows"], r["bytes"]) for r in t.to_records()}
    assert cells == {(0, 0): (12, 96), (0, 1): (20, 160), (1, 0): (12, 96), (1, 1): (20, 160)}


def test_clock_offsets_from_completions(tmp_path):
    con = new_store(tmp_path / "o.duckdb")
    run = add_run(con, ranks=(0, 1))
    add_events(con, run, [100, 100, 100], rank=0, name=NCCL, ts_ns=[1000, 2000, 3000])
    # rank 1's clock runs 5_000 ns ahead, with 10 ns jitter on one completion
    add_events(con, run, [100, 110, 100], rank=1, name=NCCL, ts_ns=[6000, 7000, 8000])
    off = col.clock_offsets(con, run)
    assert off[0] == (0, 0.0)
    assert off[1][0] == -5000 and off[1][1] == 0.0


def test_cpu_run_uses_gloo_annotations(tmp_path):
    con = new_store(tmp_path / "g.duckdb")
    run = add_run(con, ranks=(0, 1))
    add_events(con, run, [900], rank=0, source="annotation", kind="user_annotation", name="gloo:all_to_all",
               ts_ns=[100], step=0)
    add_events(con, run, [100], rank=1, source="annotation", kind="user_annotation", name="gloo:all_to_all",
               ts_ns=[900], step=0)
    t = col.rank_waits(con, run)
    assert t.record(rank=0)["wait_ns"] == 800 and t.record(rank=1)["straggler_n"] == 1


def test_traffic_payload_only_leaves_out_split_size_exchanges(tmp_path):
    con = new_store(tmp_path / "p.duckdb")
    run = add_run(con, ranks=(0,))
    counts = orjson.dumps({"In split size": "[]", "In msg nelems": 2, "Group size": 2, "dtype": "Long",
                           "Process Group Ranks": "[0, 1]"}).decode()
    rows = orjson.dumps({"In split size": "[1, 3]", "In msg nelems": 4 * 16, "Group size": 2, "dtype": "Float",
                         "Process Group Ranks": "[0, 1]"}).decode()
    add_events(con, run, [10], name=NCCL, args=counts)
    add_events(con, run, [10], name=NCCL, args=rows)
    everything = {(r["src_rank"], r["dst_rank"]): r["rows"] for r in col.traffic(con, run).to_records()}
    payload = {(r["src_rank"], r["dst_rank"]): (r["rows"], r["bytes"])
               for r in col.traffic(con, run, payload_only=True).to_records()}
    assert everything == {(0, 0): 2, (0, 1): 4}
    assert payload == {(0, 0): (1, 64), (0, 1): (3, 192)}


def test_rank_expert_load_and_imbalance_vs_wait(tmp_path):
    import numpy as np
    from factories import add_routing

    con = new_store(tmp_path / "i.duckdb")
    run = add_run(con, ranks=(0, 1))
    # three steps, one collective each; rank 1 arrives late by 100, 400, 200 ns (rank 0 waits that)
    for rank, starts in ((0, [1000, 2000, 3000]), (1, [1100, 2400, 3200])):
        add_events(con, run, [4000 - s % 1000 - 2000 for s in starts], rank=rank, name=NCCL, ts_ns=starts,
                   step=[0, 1, 2])
    # pooled routing per step (one MoE layer, 2 experts): imbalance 1.25, 1.75, 1.5 (same order as waits)
    add_routing(con, run, np.array([[[5, 3]], [[7, 1]], [[6, 2]]]), rank=0, layers=[1])
    add_routing(con, run, np.array([[[5, 3]], [[7, 1]], [[6, 2]]]), rank=1, layers=[1])
    load = col.rank_expert_load(con, run)
    assert load.record(rank=0, expert=0)["tokens"] == 18
    assert load.record(rank=0, expert=0)["share_pct"] == pytest.approx(100 * 18 / 24)
    r = col.imbalance_vs_wait(con, run).to_records()[0]
    assert r["n"] == 3 and r["spearman"] == pytest.approx(1.0)
    assert r["pearson"] == pytest.approx(float(np.corrcoef([1.25, 1.75, 1.5], [100, 400, 200])[0, 1]))


def test_traffic_from_routing_when_no_split_sizes(tmp_path):
    import numpy as np
    from factories import add_routing

    con = new_store(tmp_path / "r.duckdb")
    run = add_run(con, ranks=(0, 1))
    # 4 experts on 2 ranks: experts 0-1 on rank 0, 2-3 on rank 1; two steps of one MoE layer
    add_routing(con, run, np.array([[[3, 1, 0, 2]], [[1, 1, 1, 1]]]), rank=0, layers=[5])
    add_routing(con, run, np.array([[[0, 0, 4, 4]], [[2, 0, 0, 2]]]), rank=1, layers=[5])
    t = col.traffic(con, run)
    assert t.meta["source"] == "routing"
    cells = {(r["src_rank"], r["dst_rank"]): (r["rows"], r["bytes"], r["collectives"]) for r in t.to_records()}
    assert cells == {(0, 0): (6, None, 2), (0, 1): (4, None, 2), (1, 0): (2, None, 2), (1, 1): (10, None, 2)}
