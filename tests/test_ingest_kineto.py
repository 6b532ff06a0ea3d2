"""Kineto Chrome-trace import: exact ns, categories, columns, ranks/runs, dedup, bad files, CLI.

Hand-made traces are written in Kineto's own layout (one event per 2-space-indented block,
`"ts": <µs with 3 decimals>`) by `write_trace`; expected values are computed by hand in each test.
Real traces come from ../shared/traces (skipped when absent).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pytest
from paths import EXTERNAL, TRACES

from hybridscope.cli import main
from hybridscope.errors import BadInput
from hybridscope.ingest import _jsonchunks as jc
from hybridscope.ingest import detect, import_files

TABLES = ("runs", "run_ranks", "events", "scopes")


# -- factories ---------------------------------------------------------------------------------
def ev(cat: str, name: str, ts: str, dur: str | None = "1.000", *, ph: str = "X", pid=1, tid=1,
       args: dict | None = None) -> str:
    """One event as Kineto writes it; `ts`/`dur` are the exact number texts to write."""
    head = f'"ph": "{ph}", "cat": "{cat}", "name": {json.dumps(name)}, "pid": {json.dumps(pid)}, "tid": {json.dumps(tid)}'
    times = f'"ts": {ts}' + (f', "dur": {dur}' if dur is not None else "")
    body = f"    {head},\n    {times}"
    if args is not None:
        inner = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in args.items())
        body += f',\n    "args": {{\n      {inner}\n    }}'
    return "  {\n" + body + "\n  }"


def write_trace(path: Path, events: list[str], *, before: dict | None = None, after: dict | None = None,
                gz: bool = False) -> Path:
    """A Kineto-layout document: `before` keys, traceEvents, then `after` keys (like Kineto's
    trailing displayTimeUnit/baseTimeNanoseconds)."""
    before = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3"}],
              **(before or {})}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in before.items()]
    lines.append('  "traceEvents": [')
    lines.append(",\n".join(events))
    tail = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in (after or {"traceName": "t.json"}).items()]
    lines.append("  ],\n" + ",\n".join(tail) + "\n}")
    text = "\n".join(lines).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def kernel(ts: str, dur: str, corr: int, *, stream: int = 7, device: int = 0, name: str = "k") -> str:
    return ev("kernel", name, ts, dur, pid=device, tid=stream,
              args={"External id": corr + 1000, "device": device, "stream": stream, "correlation": corr,
                    "grid": [4, 1, 1], "block": [128, 1, 1], "registers per thread": 32})


def launch(ts: str, dur: str, corr: int, name: str = "cudaLaunchKernel") -> str:
    return ev("cuda_runtime", name, ts, dur, pid=100, tid=100,
              args={"External id": corr + 1000, "cbid": 211, "correlation": corr})


def rows(db: Path, sql: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    return {t: rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def run_import(db: Path, *paths, **kw):
    return import_files(db, [str(p) for p in paths], progress=False, **kw)


def notes(db: Path, run_id: int = 1, rank: int = 0) -> dict:
    return json.loads(rows(db, "SELECT notes FROM runs WHERE run_id = ?", [run_id])[0][0])["ranks"][str(rank)]


# -- time: exact integer ns from the number text ----------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_ts_and_dur_become_exact_ns(tmp_path, db_path, gz):
    path = write_trace(tmp_path / "t.json", [
        kernel("4517204483228.470", "2.336", 1),
        kernel("1712195495519689.047", "63.813", 2),  # epoch µs: a double is 0.25 µs coarse here
        kernel("1707417525509335", "5", 3),  # integer µs (older Kineto)
        kernel("10.5", "0.0005", 4),  # one decimal; 0.5 ns rounds half away from zero
        kernel("1.0004", "1e-3", 5),  # sub-ns digit rounds down; exponent form
        kernel("-0.5004", "0.5", 6),  # negative (a clock before the trace's zero)
        kernel("-4611686018427387.000", "0.001", 7),  # the lowest ts kept: -(2^62 // 1000) µs
    ], gz=gz)
    run_import(db_path, path)
    got = rows(db_path, "SELECT correlation, ts_ns, duration_ns, duration_us FROM events ORDER BY correlation")
    assert got == [
        (1, 4517204483228470, 2336, 2.336),
        (2, 1712195495519689047, 63813, 63.813),
        (3, 1707417525509335000, 5000, 5.0),
        (4, 10500, 1, 0.001),
        (5, 1000, 1, 0.001),
        (6, -500, 500, 0.5),
        (7, -4611686018427387000, 1, 0.001),
    ]


def test_compact_json_gives_the_same_ns(tmp_path, db_path):
    doc = {"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7,
                            "ts": 0, "dur": 0, "args": {"correlation": 9}}]}
    text = json.dumps(doc, separators=(",", ":")).replace('"ts":0,"dur":0', '"ts":1712195495519689.047,"dur":2.5')
    path = tmp_path / "compact.json"
    path.write_text(text)
    run_import(db_path, path)
    assert rows(db_path, "SELECT ts_ns, duration_ns FROM events") == [(1712195495519689047, 2500)]


def test_display_time_unit_ns_at_the_end_does_not_rescale(tmp_path, db_path):
    # Chrome-trace ts is µs whatever displayTimeUnit says (a viewer setting); Kineto writes it last
    path = write_trace(tmp_path / "t.json", [kernel("1712195495519689.047", "63.813", 1)],
                       after={"displayTimeUnit": "ns", "baseTimeNanoseconds": 1711964646000000000})
    run_import(db_path, path)
    assert rows(db_path, "SELECT ts_ns, duration_ns FROM events") == [(1712195495519689047, 63813)]
    assert rows(db_path, "SELECT base_time_ns FROM run_ranks") == [(1711964646000000000,)]
    assert notes(db_path)["display_time_unit"] == "ns"


# -- categories, columns, what is skipped ------------------------------------------------------
def test_categories_map_to_source_and_kind_and_the_rest_is_counted(tmp_path, db_path):
    events = [
        kernel("100.000", "5.000", 1, name="gemm"),
        ev("gpu_memcpy", "Memcpy HtoD", "110.000", "2.000", pid=0, tid=7, args={"device": 0, "stream": 7}),
        ev("gpu_memset", "Memset", "113.000", "1.000", pid=0, tid=7, args={"device": 0, "stream": 7}),
        ev("gpu_user_annotation", "moe.dispatch", "100.000", "20.000", pid=0, tid=7, args={"External id": 5}),
        launch("90.000", "4.000", 1),
        launch("95.000", "30.000", 2, name="cudaStreamSynchronize"),
        ev("cuda_driver", "cuLaunchKernel", "96.000", "1.000", pid=100, tid=100, args={"correlation": 3}),
        ev("cuda_driver", "cuCtxSynchronize", "97.000", "1.000", pid=100, tid=100),
        ev("cuda_sync", "Stream Sync", "120.000", "3.000", pid=0, tid=7,
           args={"cuda_sync_kind": "Stream Sync", "stream": 7, "device": 0, "correlation": 4}),
        ev("cpu_op", "aten::mm", "80.000", "20.000", pid=100, tid=100, args={"External id": 1001}),
        ev("python_function", "nn.Module: Linear_0", "79.000", "22.000", pid=100, tid=100,
           args={"Python id": 12, "Python parent id": 3, "Python thread": 0}),
        ev("user_annotation", "moe.dispatch", "78.000", "30.000", pid=100, tid=100, args={"External id": 5}),
        ev("overhead", "CUPTI overhead", "1.000", "1.000"),
        ev("mtia_runtime", "runFunction", "1.000", "1.000"),
        ev("Trace", "PyTorch Profiler (0)", "1.000", "500.000", pid="Spans", tid="PyTorch Profiler"),
        ev("ac2g", "ac2g", "90.000", None, ph="s", pid=100, tid=100),
        ev("ac2g", "ac2g", "100.000", None, ph="f", pid=0, tid=7),
        ('  {\n    "name": "thread_name", "ph": "M", "ts": 1.000, "pid": 0, "tid": 7,\n'
         '    "args": {\n      "name": "stream 7 "\n    }\n  }'),
        '  {\n    "name": "Record Window End", "ph": "i", "s": "g",\n    "pid": "", "tid": "", "ts": 200.000\n  }',
    ]
    path = write_trace(tmp_path / "t.json", events)
    (res,) = run_import(db_path, path)
    got = {(n, s): k for n, s, k in rows(db_path, "SELECT name, source, kind FROM events")}
    assert got == {
        ("gemm", "cuda"): "kernel", ("Memcpy HtoD", "cuda"): "memcpy", ("Memset", "cuda"): "memset",
        ("moe.dispatch", "cuda"): "gpu_annotation", ("cudaLaunchKernel", "cuda_api"): "runtime",
        ("cudaStreamSynchronize", "cuda_api"): "sync", ("cuLaunchKernel", "cuda_api"): "driver",
        ("cuCtxSynchronize", "cuda_api"): "sync", ("Stream Sync", "cuda_api"): "sync",
        ("aten::mm", "cpu"): "cpu_op", ("nn.Module: Linear_0", "cpu"): "python",
        ("moe.dispatch", "annotation"): "user_annotation",
    }
    assert res.n_events == 12
    skipped = dict(res.skipped)
    assert skipped == {"category overhead": 1, "category mtia_runtime": 1, "category Trace": 1,
                       "flow events (ph s/t/f)": 2, "metadata events (ph M)": 1, "instant events (ph i)": 1}
    n = notes(db_path)
    assert n["skipped"] == skipped
    assert n["threads"] == {"0/7": "stream 7 "}
    assert "no_gpu_events" not in n


def test_columns_ids_device_stream_and_kept_args(tmp_path, db_path):
    coll = {"External id": 42, "correlation": 77, "device": 1, "stream": 21, "grid": [2, 1, 1],
            "block": [512, 1, 1], "Collective name": "all_to_allv", "In msg nelems": 8388608,
            "Out msg nelems": 8806400, "In split size": "[4300, 3892]", "Out split size": "[4300, 4300]",
            "Group size": 2, "dtype": "BFloat16", "Process Group Name": "0", "Process Group Ranks": "[0, 1]",
            "queued": 0, "shared memory": 0}
    events = [
        ev("kernel", "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "5.000", "3.000",
           pid=1, tid=21, args=coll),
        kernel("1.000", "1.000", 5, stream=7, device=0),
        ev("kernel", "old_style", "9.000", "1.000", pid=0, tid="stream 3", args={"correlation": 6}),
        ev("cpu_op", "aten::add", "0.500", "1.000", pid=100, tid=101, args={"External id": 7, "Ev Idx": 3}),
        ev("kernel", "graphed", "11.000", "1.000", pid=0, tid=7, args={"correlation": 8, "graph id": 4}),
    ]
    run_import(db_path, write_trace(tmp_path / "t.json", events,
                                    before={"deviceProperties": [{"id": 0, "name": "NVIDIA H200"},
                                                                 {"id": 1, "name": "NVIDIA H200"}]}))
    got = {r[0]: r[1:] for r in rows(db_path, "SELECT name, device, stream, pid, tid, correlation, external_id, "
                                              "graph_id, args FROM events")}
    nccl = got["ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"]
    assert nccl[:7] == (1, 21, 1, 21, 77, 42, None)
    assert json.loads(nccl[7]) == {k: coll[k] for k in (
        "grid", "block", "Collective name", "In msg nelems", "Out msg nelems", "In split size",
        "Out split size", "Group size", "dtype", "Process Group Name", "Process Group Ranks")}
    assert got["k"][:6] == (0, 7, 0, 7, 5, 1005) and json.loads(got["k"][7]) == {"grid": [4, 1, 1], "block": [128, 1, 1]}
    assert got["old_style"][:4] == (0, 3, 0, None)  # a string tid: the stream from its number, no tid
    assert got["aten::add"] == (None, None, 100, 101, None, 7, None, None)
    assert got["graphed"][6] == 4
    ids = rows(db_path, "SELECT count(DISTINCT event_id), count(*) FROM events")[0]
    assert ids[0] == ids[1] == 5


def test_cpu_only_trace_imports_what_it_has_and_says_so(tmp_path, db_path):
    path = write_trace(tmp_path / "cpu.json", [
        ev("cpu_op", "aten::mm", "1.000", "2.000"), ev("user_annotation", "step#0", "0.500", "5.000")],
        before={"deviceProperties": []})
    (res,) = run_import(db_path, path)
    assert res.n_events == 2
    assert "no_gpu_events" in notes(db_path)
    assert rows(db_path, "SELECT device_name, t_start_ns, t_end_ns FROM runs") == [(None, 500, 5500)]


def test_empty_trace_events_is_a_run_with_no_events(tmp_path, db_path):
    (res,) = run_import(db_path, write_trace(tmp_path / "e.json", []))
    assert res.n_events == 0
    assert rows(db_path, "SELECT n_events, t_start_ns FROM run_ranks") == [(0, None)]


# -- runs and ranks -----------------------------------------------------------------------------
def dist(rank: int, world: int = 2) -> dict:
    return {"distributedInfo": {"backend": "nccl", "rank": rank, "world_size": world, "pg_count": 1,
                                "pg_config": [{"pg_name": "0", "pg_size": world, "ranks": list(range(world))}],
                                "nccl_version": "2.28.9"}}


def test_files_of_one_job_become_one_run_with_a_row_per_rank(tmp_path, db_path):
    r0 = write_trace(tmp_path / "r0.json", [kernel("100.000", "5.000", 1)], before=dist(0))
    r1 = write_trace(tmp_path / "r1.json", [kernel("90.000", "1.000", 1), kernel("200.000", "2.000", 2)],
                     before=dist(1))
    other = write_trace(tmp_path / "solo.json", [kernel("1.000", "1.000", 1)])
    res = run_import(db_path, r0, r1, other)
    assert [(r.run_id, r.rank, r.n_events) for r in res] == [(1, 0, 1), (1, 1, 2), (2, 0, 1)]
    assert rows(db_path, "SELECT run_id, rank, world_size, t_start_ns, t_end_ns, label FROM runs ORDER BY 1") == [
        (1, None, 2, 90_000, 202_000, "r0"), (2, 0, 1, 1_000, 2_000, "solo")]
    assert rows(db_path, "SELECT run_id, rank, n_events, t_start_ns, t_end_ns FROM run_ranks ORDER BY 1, 2") == [
        (1, 0, 1, 100_000, 105_000), (1, 1, 2, 90_000, 202_000), (2, 0, 1, 1_000, 2_000)]
    assert set(notes(db_path, 1)) == set(notes(db_path, 1, rank=1))
    versions = json.loads(rows(db_path, "SELECT versions FROM runs WHERE run_id = 1")[0][0])
    assert versions["nccl"] == "2.28.9"


def test_rank_in_the_trailer_and_rank_option(tmp_path, db_path):
    late = write_trace(tmp_path / "late.json", [kernel("1.000", "1.000", 1)],
                       after={"distributedInfo": {"rank": 3, "world_size": 4}})
    plain = write_trace(tmp_path / "plain.json", [kernel("2.000", "1.000", 1)])
    run_import(db_path, late)
    run_import(db_path, plain, rank=5)
    assert rows(db_path, "SELECT run_id, rank FROM events ORDER BY 1") == [(1, 3), (2, 5)]
    assert rows(db_path, "SELECT run_id, rank, world_size FROM runs ORDER BY 1") == [(1, 3, 4), (2, 5, 6)]


def test_ep2_ranks_become_one_run(shared_trace, db_path):
    res = run_import(db_path, shared_trace("ep2_bal_rank0.pt.trace.json.gz"),
                     shared_trace("ep2_bal_rank1.pt.trace.json.gz"))
    assert [(r.run_id, r.rank) for r in res] == [(1, 0), (1, 1)]
    assert rows(db_path, "SELECT world_size, device_name, rank FROM runs") == [(2, "NVIDIA H200", None)]
    per_rank = rows(db_path, "SELECT rank, count(*) FROM events WHERE source = 'cuda' AND kind = 'kernel' "
                             "GROUP BY rank ORDER BY rank")
    assert per_rank == [(0, 1580), (1, 1580)]


# -- re-import -----------------------------------------------------------------------------------
def test_reimport_is_detected_and_writes_nothing(tmp_path, db_path):
    path = write_trace(tmp_path / "t.json", [kernel("1.000", "1.000", 1)])
    run_import(db_path, path)
    before = counts(db_path)
    copy = tmp_path / "copy.json"
    copy.write_bytes(path.read_bytes())
    (res,) = run_import(db_path, copy)
    assert res.duplicate_of == (1, 0) and res.n_events == 0
    assert counts(db_path) == before


def test_same_file_twice_in_one_call_is_imported_once(tmp_path, db_path):
    path = write_trace(tmp_path / "t.json", [kernel("1.000", "1.000", 1)])
    res = run_import(db_path, path, path)
    assert res[1].duplicate_of == (1, 0)
    assert counts(db_path)["events"] == 1


# -- bad files: one clear BadInput, the store unchanged ---------------------------------------
GOOD = [kernel("1.000", "1.000", 1), kernel("2.000", "1.000", 2)]


def _bad_files(tmp: Path) -> dict[str, Path]:
    good = write_trace(tmp / "good.json", GOOD).read_bytes()
    gz = gzip.compress(good)
    cases = {
        "truncated_gzip": gz[: len(gz) // 2],
        "truncated_json": good[: len(good) // 2],
        "not_json": b"{ this is not json at all",
        "no_trace_events": json.dumps({"schemaVersion": 1, "events": []}).encode(),
        "ts_not_a_number": good.replace(b'"ts": 2.000', b'"ts": "soon"'),
        "args_not_an_object": good.replace(b'"args": {', b'"args": "x", "y": {', 1),
        "event_not_an_object": good.replace(b'"traceEvents": [', b'"traceEvents": [\n  5,', 1),
        "distributed_info_not_an_object": good.replace(b'"schemaVersion": 1', b'"distributedInfo": 5', 1),
        "garbage_after": good + b"\n{}",
        "csv": b"name,ts\nk,1\n",
    }
    out = {}
    for name, data in cases.items():
        p = tmp / (name + (".json.gz" if name == "truncated_gzip" else ".json"))
        p.write_bytes(data)
        out[name] = p
    return out


def test_values_beyond_the_border_are_skipped_and_counted(tmp_path, db_path):
    """A negative dur, a ts beyond 2^62 ns, a dur beyond 2^53 ns and a
    device id beyond INTEGER are skipped with their reason in the notes; the good kernel stays."""
    path = write_trace(tmp_path / "t.json", [
        kernel("1.000", "1.000", 1), kernel("3.000", "-5", 3),
        kernel("4611686018427387.904", "1.000", 4), kernel("5.000", "9007199254740.993", 5),
        kernel("6.000", "1.000", 6, device=2**32)])
    (res,) = run_import(db_path, path)
    assert res.n_events == 1
    assert res.skipped == {"complete events with a negative dur": 1,
                           "complete events with ts or dur out of range": 2,
                           "GPU events with a device id out of range": 1}
    assert notes(db_path)["skipped"] == res.skipped
    assert rows(db_path, "SELECT min(duration_ns) FROM events")[0][0] == 1000


def test_each_bad_file_is_one_bad_input_and_leaves_the_store_as_it_was(tmp_path, db_path):
    run_import(db_path, write_trace(tmp_path / "first.json", [kernel("5.000", "1.000", 1)]))
    before = counts(db_path)
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(BadInput) as info:
            run_import(db_path, path)
        assert "\n" not in info.value.message, name
        assert counts(db_path) == before, name


def test_bad_file_after_good_ones_keeps_the_good_ones(tmp_path, db_path):
    good = write_trace(tmp_path / "g.json", [kernel("1.000", "1.000", 1)])
    bad = tmp_path / "bad.json"
    bad.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(BadInput, match="bad.json"):
        run_import(db_path, good, bad)
    assert counts(db_path)["run_ranks"] == 1


# -- slicing: many slices, and a wrong fast cut caught and redone ------------------------------
def test_small_slices_give_the_same_events(tmp_path, monkeypatch):
    events = [kernel(f"{i}.{i % 1000:03d}", "1.500", i) for i in range(1, 400)]
    path = write_trace(tmp_path / "t.json.gz", events, gz=True)
    run_import(tmp_path / "a.duckdb", path)
    monkeypatch.setattr(jc, "CHUNK_BYTES", 2048)
    run_import(tmp_path / "b.duckdb", path)
    q = "SELECT correlation, ts_ns, duration_ns, args FROM events ORDER BY correlation"
    assert rows(tmp_path / "a.duckdb", q) == rows(tmp_path / "b.duckdb", q)
    assert len(rows(tmp_path / "b.duckdb", q)) == 399


def test_a_boundary_lookalike_inside_an_event_is_recovered(tmp_path, db_path, monkeypatch):
    # args holding a list of objects laid out at the events' own indent: the fast cut's pattern
    # matches inside the event; the slice fails to parse and the careful scan takes over
    nested = ('  {\n    "ph": "X", "cat": "cpu_op", "name": "tricky", "pid": 1, "tid": 1,\n'
              '    "ts": 3.000, "dur": 1.000,\n    "args": {"list": [\n  {"a": 1\n  },\n  {"b": 2}]}\n  }')
    events = [kernel(f"{i}.000", "1.000", i) for i in range(1, 40)] + [nested] + [kernel("50.000", "1.000", 99)]
    path = write_trace(tmp_path / "t.json", events)
    monkeypatch.setattr(jc, "CHUNK_BYTES", 1024)
    (res,) = run_import(db_path, path)
    assert res.n_events == 41
    assert rows(db_path, "SELECT ts_ns FROM events WHERE name = 'tricky'") == [(3000,)]


def test_an_import_gives_the_connection_its_settings_back(tmp_path, monkeypatch):
    # the load runs the store connection on kineto.STORE_THREADS, attribution on the caller's count,
    # also for a file retried carefully after a wrong fast cut (the lookalike above)
    from hybridscope import attribute
    from hybridscope.ingest import kineto
    from hybridscope.store.db import open_store

    nested = ('  {\n    "ph": "X", "cat": "cpu_op", "name": "tricky", "pid": 1, "tid": 1,\n'
              '    "ts": 3.000, "dur": 1.000,\n    "args": {"list": [\n  {"a": 1\n  },\n  {"b": 2}]}\n  }')
    tricky = write_trace(tmp_path / "t.json", [kernel(f"{i}.000", "1.000", i) for i in range(1, 40)] + [nested])
    good = write_trace(tmp_path / "g.json", [kernel("1.000", "1.000", 1)])
    monkeypatch.setattr(jc, "CHUNK_BYTES", 1024)
    seen: dict[str, list] = {"load": [], "attribution": []}

    def setting(con, name):
        return con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0]

    real_insert, real_attribute = kineto._insert, attribute.attribute_run
    monkeypatch.setattr(kineto, "_insert", lambda con, *a: (seen["load"].append(setting(con, "threads")),
                                                           real_insert(con, *a))[1])
    monkeypatch.setattr(attribute, "attribute_run", lambda con, *a, **k: (
        seen["attribution"].append(setting(con, "threads")), real_attribute(con, *a, **k))[1])
    con = open_store(tmp_path / "s.duckdb")
    try:
        con.execute("SET threads = 3")
        con.execute("SET memory_limit = '1GiB'")  # DuckDB shows 1GB as 953.6 MiB: not exact back
        con.execute("SET checkpoint_threshold = '32MiB'")
        before = {n: setting(con, n) for n in ("threads", "memory_limit", "checkpoint_threshold")}
        results = import_files(con, [tricky, good], progress=False)
        after = {n: setting(con, n) for n in before}
    finally:
        con.close()
    assert [r.n_events for r in results] == [40, 1]
    assert set(seen["load"]) == {kineto.STORE_THREADS}
    assert seen["attribution"] == [3, 3]
    assert after == before


def test_a_bulk_file_commits_by_a_checkpoint_a_small_one_by_the_wal(tmp_path, monkeypatch):
    from hybridscope import ingest
    from hybridscope.store.db import open_store

    path = write_trace(tmp_path / "t.json", [kernel(f"{i}.000", "1.000", i) for i in range(1, 4)])
    wal_bytes = {}
    for bulk_rows in (3, 4):  # the file holds 3 events: bulk at 3, small at 4
        monkeypatch.setattr(ingest, "BULK_ROWS", bulk_rows)
        db = tmp_path / f"{bulk_rows}.duckdb"
        con = open_store(db)
        try:
            import_files(con, [path], progress=False)
            wal = db.with_name(db.name + ".wal")
            wal_bytes[bulk_rows] = wal.stat().st_size if wal.exists() else 0
            assert con.execute("SELECT current_setting('checkpoint_threshold')").fetchall()[0][0] == "16.0 MiB"
        finally:
            con.close()
    assert wal_bytes[3] == 0 < wal_bytes[4]


# -- real traces ----------------------------------------------------------------------------------
def _external_kineto() -> list[Path]:
    if not EXTERNAL.exists():
        return []
    return sorted(p for p in EXTERNAL.iterdir() if p.name.endswith(".json.gz"))


@pytest.mark.parametrize("path", _external_kineto(), ids=lambda p: p.name[:40])
def test_every_external_kineto_trace_imports(path, db_path):
    assert detect(path) == "kineto"
    (res,) = run_import(db_path, path)
    raw = json.loads(gzip.decompress(path.read_bytes()))
    complete = sum(1 for e in raw["traceEvents"] if e.get("ph") == "X")
    assert res.n_events + sum(res.skipped.values()) == len(raw["traceEvents"])
    assert 0 < res.n_events <= complete
    assert rows(db_path, "SELECT count(*) FROM events WHERE ts_ns IS NULL OR duration_ns < 0") == [(0,)]


def test_ns_resolution_trace_keeps_every_ns(db_path):
    path = EXTERNAL / "hta_ns_resolution_trace_rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    run_import(db_path, path)
    text = gzip.decompress(path.read_bytes()).decode()
    # the first kernel's text, converted by hand: "ts": 1712195495505582.988, "dur": 4.928
    assert '"ts": 1712195495505582.988, "dur": 4.928' in text
    got = rows(db_path, "SELECT duration_ns FROM events WHERE ts_ns = 1712195495505582988 AND kind = 'kernel'")
    assert got == [(4928,)]


def test_amd_trace_kernels_are_gpu_events(db_path):
    path = EXTERNAL / "hta_amd_trace_mi250_minitoy_train_ROCm6_2_kineto.json.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    run_import(db_path, path)
    assert rows(db_path, "SELECT count(*), min(device), max(device) FROM events WHERE kind = 'kernel'") == [(14, 2, 2)]
    assert rows(db_path, "SELECT device_name FROM runs") == [("AMD Radeon Graphics",)]


def test_mtia_and_cpu_only_traces_say_what_they_skipped(db_path):
    mtia = EXTERNAL / "hta_mtia_inference_trace_mtia_inference_rank_0.json.gz"
    cpu = EXTERNAL / "hta_cpu_only_rank-34.Jul_15_10_52_41.1074.pt.trace.json.gz"
    if not (mtia.exists() and cpu.exists()):
        pytest.skip("external traces not present")
    m, c = run_import(db_path, mtia, cpu)
    assert m.skipped["category mtia_ccp_events"] == 1313 and m.skipped["category mtia_runtime"] == 823
    assert "no_gpu_events" in notes(db_path, m.run_id)
    assert (c.rank, c.world_size) == (34, 300)
    assert rows(db_path, "SELECT host FROM runs WHERE run_id = ?", [m.run_id]) == [
        ("twshared38393.01.cco6.facebook.com",)]


# -- CLI --------------------------------------------------------------------------------------------
def cli(*argv) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code


def test_cli_import_summary_duplicate_and_bad_file(tmp_path, db_path, capsys):
    path = write_trace(tmp_path / "t.json", [kernel("1.000", "1.000", 1), ev("overhead", "o", "1.000", "1.000")])
    assert cli("import", str(path), "--db", str(db_path), "--no-progress") == 0
    io = capsys.readouterr()
    assert f"{path}: run 1 rank 0: 1 events" in io.out
    assert "1 category overhead" in io.err and f"Wrote {db_path}" in io.err
    assert cli("import", str(path), "--db", str(db_path)) == 0
    assert "already imported as run 1 rank 0" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{]")
    assert cli("import", str(bad), "--db", str(db_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("hybridscope: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert cli("import", str(tmp_path / "missing.json"), "--db", str(db_path)) == 1
    assert cli("import", str(path), str(path), "--rank", "1", "--db", str(db_path)) == 2
    assert counts(db_path)["events"] == 1


def test_cli_on_real_trace(db_path, capsys):
    path = TRACES / "ep2_bal_rank0.pt.trace.json.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert cli("import", str(path), "--db", str(db_path), "--label", "ep2") == 0
    assert "run 1 rank 0: 12,822 events" in capsys.readouterr().out
    assert rows(db_path, "SELECT label, world_size FROM runs") == [("ep2", 2)]


def test_bad_rules_file_fails_before_anything_is_read(tmp_path, db_path):
    path = write_trace(tmp_path / "t.json", [kernel("1.000", "1.000", 1)])
    with pytest.raises(BadInput, match="rules"):
        run_import(db_path, path, rules_path=tmp_path / "missing.toml")
    assert counts(db_path).get("events", 0) == 0
