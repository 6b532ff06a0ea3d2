"""MoE collectives in flight together or queued back to back, by hand."""

import pytest
from factories import add_events, add_run, new_store

from hybridscope.analyze import conflicts

PG0 = '{"Process Group Name": "0"}'
PG1 = '{"Process Group Name": "1"}'


@pytest.fixture
def store(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, window_ns=(0, 10_000))
    comm = {'layer_type': "moe_comm", 'name': "ncclDevKernel_SendRecv"}
    # overlap on one communicator: [0,10us) stream 11 and [5us,15us) stream 12, both group 0
    add_events(con, run, [10_000, 10_000], ts_ns=[0, 5_000], stream=[11, 12], args=[PG0, PG0],
               module="L1.dispatch", layer_index=1, **comm)
    # serialized on stream 11: [20us,30us) layer 1 then [30.1us,40us) layer 3, nothing between
    add_events(con, run, [10_000, 9_900], ts_ns=[20_000, 30_100], stream=11, module=["L1.combine", "L3.dispatch"],
               layer_index=[1, 3], **comm)
    # same module back to back: not a conflict; and a pair with compute in between: not one either
    add_events(con, run, [5_000, 5_000], ts_ns=[100_000, 105_100], stream=11, module="L5.dispatch",
               layer_index=5, **comm)
    add_events(con, run, [5_000], ts_ns=[200_000], stream=11, module="L7.dispatch", layer_index=7, **comm)
    add_events(con, run, [50], ts_ns=[205_000], stream=7, layer_type="moe_experts")
    add_events(con, run, [5_000], ts_ns=[205_100], stream=11, module="L9.dispatch", layer_index=9, **comm)
    # overlap across communicators: [300us,310us) group 0 stream 11 and [308us,320us) group 1 stream 13
    add_events(con, run, [10_000, 12_000], ts_ns=[300_000, 308_000], stream=[11, 13], args=[PG0, PG1],
               module="L11.dispatch", layer_index=11, **comm)
    return con, run


def test_conflicts(store):
    con, run = store
    t = conflicts.conflicts(con, run)
    got = [(r["kind"], r["scope"], r["stream_a"], r["stream_b"], r["at_ns"], r["ns"]) for r in t.to_records()]
    assert got == [
        ("overlap", "communicator", 11, 12, 5_000, 5_000),
        ("serialized", "stream", 11, 11, 30_100, 9_900),
        ("overlap", "device", 11, 13, 308_000, 2_000),
    ]
    assert t.meta["max_in_flight"] == 2


def test_back_to_back_threshold(store):
    con, run = store
    t = conflicts.conflicts(con, run, back_to_back_ns=50)
    assert [r["kind"] for r in t.to_records()] == ["overlap", "overlap"]


def test_conflict_pairs(store):
    con, run = store
    p = conflicts.conflict_pairs(conflicts.conflicts(con, run))
    assert p.column("total_ns") == [9_900, 5_000, 2_000]
    assert p.rows[0][:6] == ("serialized", "stream", 11, 11, "L1.combine", "L3.dispatch")


def test_no_collectives(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [10, 10], layer_type="mamba")
    t = conflicts.conflicts(con, run)
    assert len(t) == 0 and t.meta["max_in_flight"] == 0
