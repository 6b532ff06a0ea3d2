"""Ingero database import, on the two real databases of ../shared/traces/external (Ingero
`investigations/`, ingero-io/ingero v0.17.0, Apache-2.0) and on small hand-made ones."""

from __future__ import annotations

import json
import shutil
import sqlite3

import duckdb
import pytest
from damage import import_whole_or_nothing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import EXTERNAL

from hybridscope.errors import BadInput
from hybridscope.ingest import detect, import_files

REAL = ["ingero_sample-cluster.db", "ingero_vllm-37343-logprobs-amplification.db"]


def _real(name):
    path = EXTERNAL / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def _rows(db_path, sql, params=()):
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def _source(path, sql):
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as con:
        return con.execute(sql).fetchall()


@pytest.mark.parametrize("name", REAL)
def test_real_database_every_row_stored_as_host_api_by_operation(db_path, name):
    path = _real(name)
    assert detect(path) == "ingero"
    (res,) = import_files(db_path, [path], progress=False)
    (rows,) = _source(path, "SELECT count(*) FROM events")[0]
    assert res.n_events == rows and res.skipped == {}
    # per operation: count, exact ns sums and extremes equal the source's own (joined by hand)
    want = _source(path, "SELECT o.name, count(*), sum(e.duration), min(e.timestamp), max(e.duration) "
                         "FROM events e JOIN ops o ON o.source_id = e.source AND o.op_id = e.op GROUP BY 1 ORDER BY 1")
    got = _rows(db_path, "SELECT name, count(*), sum(duration_ns), min(ts_ns + base_time_ns), max(duration_ns) "
                         "FROM events JOIN run_ranks USING (run_id, rank) GROUP BY 1 ORDER BY 1")
    assert got == [tuple(w) for w in want]
    assert _rows(db_path, "SELECT DISTINCT source FROM events") == [("host_api",)]
    # nothing of it reaches kernel statistics (the seed query's filter)
    assert _rows(db_path, "SELECT count(*) FROM events WHERE source = 'cuda'") == [(0,)]
    (base, n_ranks, n) = _rows(db_path, "SELECT base_time_ns, count(*) OVER (), n_events FROM run_ranks")[0]
    assert (base, n_ranks, n) == (_source(path, "SELECT min(timestamp) FROM events")[0][0], 1, rows)
    assert _rows(db_path, "SELECT min(ts_ns) FROM events") == [(0,)]  # ns since the first event
    notes = json.loads(_rows(db_path, "SELECT notes FROM runs")[0][0])["ranks"]["0"]
    assert notes["events_table_rows"] == notes["events_stored"] == rows
    assert "not GPU kernel executions" in notes["timing"]


def test_vllm_database_kinds_devices_samples_and_metadata(db_path):
    path = _real(REAL[1])
    import_files(db_path, [path], progress=False)
    kinds = dict(_rows(db_path, "SELECT name, any_value(kind) FROM events GROUP BY 1"))
    assert kinds["cudaLaunchKernel"] == kinds["cudaMemcpyAsync"] == "runtime"
    assert kinds["cuLaunchKernel"] == "driver"
    assert kinds["cudaStreamSync"] == kinds["cudaDeviceSync"] == kinds["cuCtxSynchronize"] == "sync"
    assert kinds["sched_switch"] == kinds["net_recv"] == kinds["process_fork"] == "other"
    # GPU index only on CUDA API events
    assert _rows(db_path, "SELECT kind = 'other', count(device) > 0 FROM events GROUP BY 1 ORDER BY 1") == [
        (False, True), (True, False)]
    # system_snapshots: 52 snapshots x 5 metrics
    (snaps,) = _source(path, "SELECT count(*) FROM system_snapshots")[0]
    assert _rows(db_path, "SELECT count(*), count(DISTINCT metric) FROM samples") == [(snaps * 5, 5)]
    run = _rows(db_path, "SELECT device_name, versions, world_size FROM runs")[0]
    assert run[0] == "NVIDIA GeForce RTX 4090" and run[2] == 1
    assert json.loads(run[1])["ingero_schema"] == "0.8"
    args = json.loads(_rows(db_path, "SELECT args FROM events WHERE name = 'cudaMemcpyAsync' ORDER BY event_id "
                                     "LIMIT 1")[0][0])
    first = _source(path, "SELECT arg0, arg1, ret_code, id FROM events WHERE op = 7 AND source = 1 ORDER BY rowid LIMIT 1")
    assert (args["source"], args["arg0"], args["arg1"], args["ret"], args["id"]) == ("CUDA", *first[0])


def test_ingero_own_sync_p99_is_reproduced_from_stored_durations(db_path):
    """Ingero's causal chains state p99 of the sync calls (over the whole capture, nearest rank);
    the stored ns durations give the same numbers."""
    path = _real(REAL[1])
    import_files(db_path, [path], progress=False)
    got = dict(_rows(db_path, "SELECT name, quantile_disc(duration_ns, 0.99) FROM events "
                              "WHERE kind = 'sync' GROUP BY 1"))
    assert got == {"cudaDeviceSync": 4_720_968, "cuCtxSynchronize": 4_711_397, "cudaStreamSync": 16_880}
    chains = " ".join(r[0] for r in _source(path, "SELECT summary FROM causal_chains"))
    assert "cudaDeviceSync p99=4.720968ms" in chains and "cuCtxSynchronize p99=4.711397ms" in chains


def test_cluster_database_keeps_nodes(db_path):
    path = _real(REAL[0])
    import_files(db_path, [path], progress=False)
    nodes = _rows(db_path, "SELECT args->>'node', count(*) FROM events GROUP BY 1 ORDER BY 1")
    assert nodes == [("gpu-node-01", 200), ("gpu-node-02", 200), ("gpu-node-03", 200)]
    notes = json.loads(_rows(db_path, "SELECT notes FROM runs")[0][0])["ranks"]["0"]
    assert "3 nodes" in notes["nodes"] and len(notes["ingero_sessions"]) == 3


def _small_db(path, *, rows, with_optional=True):
    """An Ingero-shaped database (the tables and columns of schema 0.8, optionally without the
    columns later versions added) holding `rows` = [(ts, pid, tid, source, op, duration)]."""
    extra = ", stack_hash INTEGER NOT NULL DEFAULT 0, stack_ips TEXT NOT NULL DEFAULT ''" if with_optional else ""
    with sqlite3.connect(path) as con:
        con.executescript(f"""
            CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL,
                pid INTEGER NOT NULL, tid INTEGER NOT NULL, source INTEGER NOT NULL, op INTEGER NOT NULL,
                duration INTEGER NOT NULL, gpu_id INTEGER NOT NULL DEFAULT 0, arg0 INTEGER NOT NULL DEFAULT 0,
                arg1 INTEGER NOT NULL DEFAULT 0, ret_code INTEGER NOT NULL DEFAULT 0{extra});
            CREATE TABLE sources (id INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL);
            CREATE TABLE ops (source_id INTEGER NOT NULL, op_id INTEGER NOT NULL, name TEXT NOT NULL,
                description TEXT NOT NULL, PRIMARY KEY (source_id, op_id));
            INSERT INTO sources VALUES (1, 'CUDA', ''), (3, 'HOST', ''), (4, 'DRIVER', '');
            INSERT INTO ops VALUES (1, 3, 'cudaLaunchKernel', ''), (1, 5, 'cudaStreamSync', ''),
                (4, 1, 'cuLaunchKernel', ''), (3, 1, 'sched_switch', '');
        """)
        con.executemany("INSERT INTO events (timestamp, pid, tid, source, op, duration) VALUES (?, ?, ?, ?, ?, ?)",
                        rows)
    return path


def test_unknown_ops_and_older_columns(tmp_path, db_path):
    t = 1_774_099_485_937_549_222
    path = _small_db(tmp_path / "old.db", with_optional=False, rows=[
        (t, 1, 2, 1, 3, 5_000), (t + 10, 1, 2, 1, 99, 7), (t + 20, 1, 3, 3, 1, 1_000_000)])
    (res,) = import_files(db_path, [path], progress=False)
    assert res.n_events == 3
    got = _rows(db_path, "SELECT name, kind, ts_ns, duration_ns, duration_us FROM events ORDER BY event_id")
    assert got == [("cudaLaunchKernel", "runtime", 0, 5_000, 5.0),
                   ("ingero source 1 op 99", "runtime", 10, 7, 0.007),
                   ("sched_switch", "other", 20, 1_000_000, 1000.0)]
    assert _rows(db_path, "SELECT base_time_ns FROM run_ranks") == [(t,)]
    notes = json.loads(_rows(db_path, "SELECT notes FROM runs")[0][0])["ranks"]["0"]
    assert notes["unknown_ops"].startswith("1 events")
    assert "stack" not in json.loads(_rows(db_path, "SELECT args FROM events LIMIT 1")[0][0])


def _snapshot(db_path):
    return _rows(db_path, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM events), "
                          "(SELECT count(*) FROM samples), (SELECT count(*) FROM run_ranks)")


def test_reimport_is_a_duplicate(db_path):
    path = _real(REAL[0])
    (first,) = import_files(db_path, [path], progress=False)
    before = _snapshot(db_path)
    (again,) = import_files(db_path, [path], progress=False)
    assert again.duplicate_of == (first.run_id, first.rank)
    assert _snapshot(db_path) == before


@pytest.mark.parametrize("damage", ["truncate", "no_ops_table", "events_without_duration"])
def test_damaged_databases_leave_the_store_unchanged(tmp_path, db_path, damage):
    import_files(db_path, [_small_db(tmp_path / "ok.db", rows=[(1, 1, 1, 1, 3, 10)])], progress=False)
    before = _snapshot(db_path)
    bad = tmp_path / "bad.db"
    if damage == "truncate":
        shutil.copy(_real(REAL[1]), bad)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "no_ops_table":
        _small_db(bad, rows=[(1, 1, 1, 1, 3, 10)])
        with sqlite3.connect(bad) as con:
            con.execute("DROP TABLE ops")
    else:
        with sqlite3.connect(bad) as con:
            con.executescript("CREATE TABLE events (id INTEGER, timestamp INTEGER, pid INTEGER, tid INTEGER, "
                              "source INTEGER, op INTEGER); CREATE TABLE sources (id INTEGER, name TEXT); "
                              "CREATE TABLE ops (source_id INTEGER, op_id INTEGER, name TEXT);")
    with pytest.raises(BadInput) as e:
        import_files(db_path, [bad], progress=False)
    assert "\n" not in e.value.message and str(bad) in e.value.message
    assert _snapshot(db_path) == before


@pytest.fixture(scope="module")
def damage_store(tmp_path_factory):
    from hybridscope.store.db import open_store

    tmp = tmp_path_factory.mktemp("dmg")
    con = open_store(tmp / "s.duckdb")
    import_files(con, [_small_db(tmp / "ok.db", rows=[(1, 1, 1, 1, 3, 10)])], progress=False)
    yield con, tmp
    con.close()


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
def test_damaged_real_database_never_half_imports(damage_store, cut, flips):
    """Cuts and overwritten bytes of a real Ingero database: BadInput and an untouched store, or a
    whole import (a flipped byte inside a value is invisible to SQLite)."""
    con, tmp = damage_store
    data = bytearray(_real(REAL[0]).read_bytes())
    if cut < 0.5:
        data = data[: max(1, int(len(data) * (0.5 + cut)))]
    for where, byte in flips:
        data[min(len(data) - 1, int(where * len(data)))] = byte
    path = tmp / "damaged.db"
    path.write_bytes(bytes(data))
    import_whole_or_nothing(con, path)
