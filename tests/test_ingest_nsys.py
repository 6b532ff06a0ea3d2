"""Nsight Systems SQLite import: schema vintages, names, clocks, ids, notes, bad files, dedup.

The exports are built by tests/nsys_fixtures.py after NVIDIA's documented export schema.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import duckdb
import nsys_fixtures as nf
import pytest
from damage import import_whole_or_nothing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridscope.errors import BadInput
from hybridscope.ingest import detect, import_files


def _import(db_path, *paths, **kw):
    return import_files(db_path, [str(p) for p in paths], progress=False, **kw)


def _rows(db_path, sql, params=()):
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def _notes(db_path, run_id=1):
    return json.loads(_rows(db_path, "SELECT notes FROM runs WHERE run_id = ?", [run_id])[0][0])["ranks"]["0"]


@pytest.mark.parametrize("vintage", ["2020", "2022", "2026"])
def test_vintages_import_kernels_with_names_launches_and_ranges(tmp_path, db_path, vintage):
    rep = nf.hybrid_model(steps=2)
    path = nf.write(tmp_path / f"r{vintage}.sqlite", rep, vintage)
    assert detect(path) == "nsys"
    (res,) = _import(db_path, path)
    assert res.format == "nsys" and res.n_events == len(rep.kernels) + len(rep.runtime) + len(rep.nvtx)

    kernels = _rows(db_path, "SELECT name, ts_ns, duration_ns, correlation, device, stream, pid, args "
                             "FROM events WHERE source = 'cuda' AND kind = 'kernel' ORDER BY ts_ns")
    assert [k[0] for k in kernels] == [k["name"] for k in rep.kernels]  # demangled names via StringIds
    assert [(k[1], k[2], k[3]) for k in kernels] == [(k["start"], k["end"] - k["start"], k["corr"]) for k in rep.kernels]
    assert {(k[4], k[5], k[6]) for k in kernels} == {(0, 7, nf.PID)}  # pid decoded despite the VM bits
    assert json.loads(kernels[0][7])["grid"] == [1, 1, 1] and json.loads(kernels[0][7])["block"] == [128, 1, 1]

    launches = _rows(db_path, "SELECT DISTINCT name, kind, pid, tid FROM events WHERE source = 'cuda_api'")
    assert launches == [("cudaLaunchKernel", "runtime", nf.PID, nf.TID)]  # '_v7000' suffix dropped
    ranges = _rows(db_path, "SELECT name, ts_ns, duration_ns, tid FROM events WHERE source = 'annotation' "
                            "AND kind = 'user_annotation' ORDER BY ts_ns")
    assert [(r[0], r[1], r[2], r[3]) for r in ranges] == [
        (n["text"], n["start"], n["end"] - n["start"], nf.TID) for n in sorted(rep.nvtx, key=lambda n: n["start"])]

    (base, t0, t1, host, dev) = _rows(db_path, "SELECT base_time_ns, t_start_ns, t_end_ns, host, device_name "
                                               "FROM run_ranks")[0]
    assert (t0, t1) == (rep.nvtx[0]["start"], max(k["end"] for k in rep.kernels))
    assert host == rep.host and dev == rep.gpu
    notes = _notes(db_path)
    if vintage == "2020":  # no TARGET_INFO_SESSION_START_TIME then: said, not guessed
        assert base is None and "TARGET_INFO_SESSION_START_TIME" in notes["clock"]
        assert notes["missing_columns"]["CUPTI_ACTIVITY_KIND_KERNEL"] == ["graphNodeId", "graphId"]
    else:
        assert base == rep.session_start_ns and "clock" not in notes
    assert "CUPTI_ACTIVITY_KIND_MEMCPY" in notes["missing_tables"]
    assert notes["events"]["CUPTI_ACTIVITY_KIND_KERNEL"] == len(rep.kernels)


def test_syncs_copies_sets_graphs_and_api_kinds(tmp_path, db_path):
    rep = nf.Report(
        kernels=[{"start": 100, "end": 200, "name": "k", "corr": 1, "pid": 9, "graph_node": 77, "graph": 5}],
        runtime=[{"start": 10, "end": 20, "name": "cudaStreamSynchronize_v3020", "corr": 2, "pid": 9, "tid": 1},
                 {"start": 30, "end": 40, "name": "cuLaunchKernel", "corr": 3, "pid": 9, "tid": 1},
                 {"start": 50, "end": 60, "name": "cudaMemcpyAsync_v3020", "corr": 4, "pid": 9, "tid": 1, "ret": 2}],
        syncs=[{"start": 300, "end": 350, "type": 3, "corr": 2, "pid": 9},
               {"start": 400, "end": 410, "type": 1, "corr": 6, "pid": 9}],
        memcpy=[{"start": 500, "end": 900, "copy": 1, "src": 1, "dst": 3, "bytes": 4096, "corr": 4, "pid": 9}],
        memset=[{"start": 950, "end": 960, "kind": 3, "bytes": 64, "corr": 5, "pid": 9}],
        graphs=[{"start": 1000, "end": 5000, "graph": 5, "corr": 8, "pid": 9}],
    )
    _import(db_path, nf.write(tmp_path / "r.sqlite", rep))
    got = _rows(db_path, "SELECT source, kind, name, duration_ns, graph_id, args FROM events ORDER BY ts_ns")
    assert [g[:4] for g in got] == [
        ("cuda_api", "sync", "cudaStreamSynchronize", 10),
        ("cuda_api", "driver", "cuLaunchKernel", 10),
        ("cuda_api", "runtime", "cudaMemcpyAsync", 10),
        ("cuda", "kernel", "k", 100),
        ("cuda_api", "sync", "Stream Sync", 50),
        ("cuda_api", "sync", "Event Sync", 10),
        ("cuda", "memcpy", "Memcpy HtoD (Pageable -> Device)", 400),
        ("cuda", "memset", "Memset (Device)", 10),
        ("cuda", "other", "CUDA graph 5", 4000),
    ]
    assert got[3][4] == 5 and json.loads(got[3][5])["graph_node"] == 77  # graph id, node id kept
    assert json.loads(got[2][5]) == {"return": 2} and json.loads(got[6][5]) == {"bytes": 4096}
    assert "cuda-graph-trace=node" in _notes(db_path)["cuda_graphs"]


def test_empty_kernel_table_and_cpu_only_report(tmp_path, db_path):
    empty = nf.write(tmp_path / "empty.sqlite", nf.Report(nvtx=[{"start": 0, "end": 10, "text": "step", "pid": 1,
                                                                 "tid": 1}]))
    cpu_only = nf.write(tmp_path / "cpu.sqlite", nf.Report(), omit=("CUPTI_ACTIVITY_KIND_KERNEL",))
    r1, r2 = _import(db_path, empty, cpu_only)
    assert (r1.n_events, r2.n_events) == (1, 0)
    assert _rows(db_path, "SELECT count(*) FROM events WHERE source = 'cuda'") == [(0,)]
    assert "no_kernels" not in _notes(db_path, 1)
    assert "CUPTI_ACTIVITY_KIND_KERNEL" in _notes(db_path, 2)["no_kernels"]
    assert _rows(db_path, "SELECT run_id, n_events, t_start_ns FROM run_ranks ORDER BY 1") == [(1, 1, 0), (2, 0, None)]


def test_nvtx_registered_strings_marks_and_open_ranges(tmp_path, db_path):
    rep = nf.Report(nvtx=[
        {"start": 0, "end": 100, "text": "model.layers.0.mixer", "pid": 3, "tid": 4, "registered": True},
        {"start": 10, "end": 50, "text": "inline", "pid": 3, "tid": 4, "type": 60, "domain": 2},
        {"start": 20, "end": None, "text": "a mark", "pid": 3, "tid": 4, "type": 34},
        {"start": 30, "end": None, "text": "never popped", "pid": 3, "tid": 4},
    ])
    (res,) = _import(db_path, nf.write(tmp_path / "n.sqlite", rep, "2022"))
    got = _rows(db_path, "SELECT name, duration_ns, args FROM events ORDER BY ts_ns")
    assert [(g[0], g[1]) for g in got] == [("model.layers.0.mixer", 100), ("inline", 40)]
    assert json.loads(got[1][2]) == {"nvtx_domain": 2}
    assert res.skipped == {"nvtx_marks": 1, "nvtx_unterminated_ranges": 1}


def test_processes_of_one_report_get_distinct_correlations(tmp_path, db_path):
    rep = nf.Report(
        kernels=[{"start": 100, "end": 200, "name": "k", "corr": 1, "pid": 10},
                 {"start": 150, "end": 250, "name": "k", "corr": 1, "pid": 11, "device": 1}],
        runtime=[{"start": 10, "end": 20, "name": "cudaLaunchKernel_v7000", "corr": 1, "pid": 10, "tid": 10},
                 {"start": 15, "end": 25, "name": "cudaLaunchKernel_v7000", "corr": 1, "pid": 11, "tid": 11}])
    _import(db_path, nf.write(tmp_path / "tp2.sqlite", rep))
    pairs = _rows(db_path, "SELECT pid, correlation FROM events GROUP BY ALL ORDER BY 1")
    assert pairs == [(10, (10 << 32) + 1), (11, (11 << 32) + 1)]
    assert "2 processes" in _notes(db_path)["correlation"]


def test_timestamps_stay_exact_integers(tmp_path, db_path):
    big = 2**53 + 1  # not representable as a double
    rep = nf.Report(kernels=[{"start": big, "end": big + 3, "name": "k", "corr": 1, "pid": 1}],
                    session_start_ns=1_763_800_000_123_456_789)
    _import(db_path, nf.write(tmp_path / "big.sqlite", rep))
    assert _rows(db_path, "SELECT ts_ns, duration_ns, duration_us FROM events") == [(big, 3, 0.003)]
    assert _rows(db_path, "SELECT base_time_ns FROM run_ranks") == [(1_763_800_000_123_456_789,)]


def test_reimport_is_detected_and_writes_nothing(tmp_path, db_path):
    path = nf.write(tmp_path / "r.sqlite", nf.hybrid_model(steps=1))
    (first,) = _import(db_path, path)
    (again,) = _import(db_path, path)
    assert again.duplicate_of == (first.run_id, first.rank) and again.n_events == 0
    assert _rows(db_path, "SELECT count(*), count(DISTINCT run_id) FROM events") == [(first.n_events, 1)]


def _snapshot(db_path):
    return _rows(db_path, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM run_ranks), "
                          "(SELECT count(*) FROM events), (SELECT count(*) FROM scopes)")


@pytest.mark.parametrize("damage", ["truncate", "zero_pages", "not_nsys", "no_header"])
def test_bad_files_raise_one_line_and_leave_the_store_unchanged(tmp_path, db_path, damage):
    _import(db_path, nf.write(tmp_path / "good.sqlite", nf.hybrid_model(steps=1)))
    before = _snapshot(db_path)
    bad = tmp_path / "bad.sqlite"
    rep = nf.hybrid_model(steps=40)  # a few pages, so damage lands inside tables
    nf.write(bad, rep)
    data = bad.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "zero_pages":
        bad.write_bytes(data[:4096] + b"\0" * (len(data) - 8192) + data[-4096:])
    elif damage == "not_nsys":
        bad.unlink()
        with sqlite3.connect(bad) as c:
            c.execute("CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT)")
    else:
        bad.write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    with pytest.raises(BadInput) as e:
        _import(db_path, bad)
    assert "\n" not in e.value.message and str(bad) in e.value.message
    assert _snapshot(db_path) == before


def test_read_only_copy_on_read_only_directory(tmp_path, db_path):
    src = nf.write(tmp_path / "r.sqlite", nf.hybrid_model(steps=1))
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(src, ro / "r.sqlite")
    (ro / "r.sqlite").chmod(0o444)
    ro.chmod(0o555)
    try:
        (res,) = _import(db_path, ro / "r.sqlite")
    finally:
        ro.chmod(0o755)
    assert res.n_events > 0


@pytest.mark.parametrize("pythooks", [False, True])
def test_nvtx_module_ranges_attribute_kernels_exactly_as_kineto_ranges(tmp_path, db_path, pythooks):
    """The same run, once as an nsys export with one NVTX range per module (plain paths, or the
    str(dict) texts of vLLM's/SGLang's layerwise hooks), once as a Kineto trace with one
    record_function range per module: every kernel gets the same layer type, index and module."""
    rep = nf.hybrid_model(steps=2, pythooks=pythooks)
    kineto = tmp_path / "same_run.json"
    kineto.write_text(json.dumps(nf.as_kineto(rep)))
    r_nsys, r_kineto = _import(db_path, nf.write(tmp_path / "r.sqlite", rep), kineto)
    sql = ("SELECT name, layer_type, layer_index, module, attr_method FROM events "
           "WHERE run_id = ? AND kind = 'kernel' ORDER BY ts_ns")
    from_nsys = _rows(db_path, sql, [r_nsys.run_id])
    assert from_nsys == _rows(db_path, sql, [r_kineto.run_id])
    assert [(k[2], k[3]) for k in from_nsys] == [(k["layer"], k["module"]) for k in rep.kernels]
    assert {k[1] for k in from_nsys if k[2] == 1} == {"attention"} and {k[1] for k in from_nsys if k[2] == 2} == {
        "moe_experts"}
    scopes = _rows(db_path, "SELECT DISTINCT name FROM scopes WHERE run_id = ? ORDER BY 1", [r_nsys.run_id])
    assert scopes == sorted({(n["module"],) for n in rep.nvtx})
    if pythooks:  # the hook's full text (shapes, parameters) stays with the range
        args = _rows(db_path, "SELECT args->>'nvtx' FROM events WHERE run_id = ? AND source = 'annotation' "
                              "ORDER BY ts_ns LIMIT 1", [r_nsys.run_id])
        assert args == [(rep.nvtx[0]["text"],)]


def test_cli_import_prints_what_the_export_lacks_and_decompose_reads_it(tmp_path, db_path, capsys):
    from hybridscope.cli import main

    path = nf.write(tmp_path / "old.sqlite", nf.hybrid_model(steps=1), "2020")
    with pytest.raises(SystemExit) as e:
        main(["import", str(path), "--db", str(db_path), "--no-progress"])
    assert e.value.code == 0
    cap = capsys.readouterr()
    assert f"{path}: run 1 rank 0: 13 events" in cap.out
    assert "note: no TARGET_INFO_SESSION_START_TIME" in cap.err and "has no graphNodeId, graphId" in cap.err
    with pytest.raises(SystemExit) as e:
        main(["decompose", "--db", str(db_path), "--by", "layer", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    by_layer = {r["layer_index"]: r["n"] for r in rows if r["layer_index"] is not None}
    assert by_layer == {0: 2, 1: 1, 2: 2}
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SystemExit) as e:
        main(["import", str(bad), "--db", str(db_path), "--no-progress"])
    assert e.value.code == 1 and "error:" in capsys.readouterr().err


# --- damaged exports: a clean BadInput and an untouched store, or a whole import ---------------

@pytest.fixture(scope="module")
def damaged_store(tmp_path_factory):
    from hybridscope.store.db import open_store

    tmp = tmp_path_factory.mktemp("damage")
    good = nf.write(tmp / "good.sqlite", nf.hybrid_model(steps=20))
    con = open_store(tmp / "s.duckdb")
    yield con, good.read_bytes(), tmp
    con.close()


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
def test_damaged_exports_never_half_import(damaged_store, cut, flips):
    con, data, tmp = damaged_store
    data = bytearray(data[: max(1, int(len(data) * (0.5 + cut / 2)))] if cut < 0.5 else data)
    for where, byte in flips:
        data[min(len(data) - 1, int(where * len(data)))] = byte
    path = tmp / "damaged.sqlite"
    path.write_bytes(bytes(data))
    import_whole_or_nothing(con, path)
