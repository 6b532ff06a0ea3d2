"""The Perfetto export: valid trace-event JSON, one track per layer type and stream, nested slices."""

import gzip
import json

import numpy as np
import pytest
import report_scenario

from hybridscope.cli import main
from hybridscope.present import perfetto


def export(db, out, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--db", str(db), "--perfetto", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    raw = out.read_bytes()
    return json.loads(gzip.decompress(raw) if out.name.endswith(".gz") else raw)


def check_trace(doc):
    """Trace-event invariants Perfetto relies on; returns the complete events."""
    events = doc["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    assert xs and all(isinstance(e["ts"], float) and e["dur"] >= 0 for e in xs)
    procs = {e["pid"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name"}
    assert {e["pid"] for e in xs} <= procs
    assert {(e["pid"], e["tid"]) for e in xs} <= threads
    # slices of one track nest: none starts inside another and ends after it
    tracks = {}
    for e in xs:
        tracks.setdefault((e["pid"], e["tid"]), []).append((round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000)))
    for spans in tracks.values():
        s = np.array(sorted(spans))
        prev_end = np.maximum.accumulate(s[:, 1])[:-1]
        assert not np.any((s[1:, 0] < prev_end) & (s[1:, 1] > prev_end))
    return xs


def test_export_scenario(tmp_path, capsys):
    con, _run = report_scenario.build(tmp_path / "run.duckdb")
    first = con.execute("SELECT min(ts_ns) FROM events").fetchall()[0][0]
    con.close()
    doc = export(tmp_path / "run.duckdb", tmp_path / "t.json", capsys)
    xs = check_trace(doc)
    kernels = [e for e in xs if e["cat"] != "step"]
    assert len(kernels) == 900 and sum(e["cat"] == "step" for e in xs) == 60
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"moe_comm · stream 11", "mamba · stream 7", "steps"} <= names
    k = next(e for e in kernels if e["cat"] == "moe_comm")
    assert k["name"] == "ncclDevKernel_SendRecv" and k["args"]["module"].endswith("moe.dispatch")
    assert k["args"]["layer_index"] == 1 and k["args"]["stream"] == 11
    assert doc["otherData"]["t0_ns"] == first
    assert min(e["ts"] for e in kernels) == 0.0


def test_export_gz(tmp_path, capsys):
    report_scenario.build(tmp_path / "run.duckdb", n_steps=5)[0].close()
    doc = export(tmp_path / "run.duckdb", tmp_path / "t.json.gz", capsys)
    check_trace(doc)


def test_ns_precision_in_microseconds():
    k = {"ts_ns": np.array([1_000_001_234, 1_000_002_000]), "end_ns": np.array([1_000_001_235, 1_000_002_500]),
         "duration_ns": np.array([1, 500]), "rank": np.array([0, 0]), "stream": np.array([7, 7]),
         "layer_type": np.array(["mamba", "mamba"], dtype=object), "name": np.array(["a", "b"], dtype=object),
         "layer_index": np.array([0, 0]), "module": np.array([None, None], dtype=object),
         "step": np.array([-1, -1]), "phase": np.array([None, None], dtype=object)}
    doc = perfetto.trace_events(k, [], 1_000_000_000, {"run_id": 1})
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert [e["ts"] for e in xs] == [1.234, 2.0] and [e["dur"] for e in xs] == [0.001, 0.5]
    assert b'"ts":1.234' in perfetto.to_json(doc)


def test_partial_overlap_goes_to_the_twin_track():
    rank = np.zeros(4, dtype=np.int64)
    tid = np.array([10, 10, 10, 20])
    start = np.array([0, 5, 20, 5])
    end = np.array([10, 8, 30, 15])  # [5,8) nests in [0,10); on track 20 nothing overlaps
    assert perfetto._partial_overlaps(rank, tid, start, end).tolist() == [0, 0, 0, 0]
    end2 = np.array([10, 12, 30, 15])  # [5,12) starts inside [0,10) and ends after it
    assert perfetto._partial_overlaps(rank, tid, start, end2).tolist() == [0, 1, 0, 0]


def test_export_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--db", str(tmp_path / "none.duckdb"), "--perfetto", str(tmp_path / "t.json")])
    assert e.value.code == 1 and "no database" in capsys.readouterr().err


def test_overlapping_steps_alternate_tracks():
    steps = [{"rank": 0, "ts_ns": 0, "end_ns": 120}, {"rank": 0, "ts_ns": 100, "end_ns": 200},
             {"rank": 0, "ts_ns": 200, "end_ns": 300}, {"rank": 1, "ts_ns": 0, "end_ns": 100},
             {"rank": 1, "ts_ns": 100, "end_ns": 200}]
    assert perfetto._step_lanes(steps) == [0, 1, 0, 0, 0]


def test_capture_layer_timings_are_tracks_per_rank_and_layer_type(tmp_path, capsys):
    """A layers-mode capture has no kernels: its layer timings are the trace, one track per (rank,
    layer type), a call from its start over its inclusive span; a block enclosing other timed calls
    on its own track, so the moe_experts track is not covered by the router's and all-to-all's time."""
    from factories import add_events, add_run, new_store

    con = new_store(tmp_path / "cap.duckdb")
    run = add_run(con, ranks=[0, 1], source="capture")
    for rank in (0, 1):
        t = 1_000_000 + rank * 100
        add_events(con, run, [5_000], rank=rank, source="layer", kind="layer", name="Mamba2Mixer",
                   layer_type="mamba", layer_index=0, module="layers.0", ts_ns=[t], args='{"inclusive_ns": 5000}')
        # layers.1: a block (1 µs of its own over 20 µs) around a router (2 µs) and experts (9 µs)
        add_events(con, run, [1_000], rank=rank, source="layer", kind="layer", name="HybridBlock",
                   layer_type="moe_experts", layer_index=1, module="layers.1", ts_ns=[t + 6_000],
                   args='{"inclusive_ns": 20000}')
        add_events(con, run, [2_000, 9_000], rank=rank, source="layer", kind="layer", name=["Router", "Experts"],
                   layer_type=["moe_router", "moe_experts"], layer_index=1,
                   module=["layers.1.moe.router", "layers.1.moe.experts"], ts_ns=[t + 7_000, t + 10_000],
                   args=['{"inclusive_ns": 2000}', '{"inclusive_ns": 9000}'])
    con.close()
    doc = export(tmp_path / "cap.duckdb", tmp_path / "cap.json", capsys)
    xs = check_trace(doc)
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    by_track = {}
    for e in xs:
        by_track.setdefault((e["pid"], names[(e["pid"], e["tid"])]), []).append(e)
    for rank in (0, 1):
        assert [e["name"] for e in by_track[(rank, "layers · mamba")]] == ["Mamba2Mixer"]
        assert [e["name"] for e in by_track[(rank, "layers · moe_router")]] == ["Router"]
        experts = by_track[(rank, "layers · moe_experts")]
        assert [(e["name"], e["dur"]) for e in experts] == [("Experts", 9.0)]
        block = by_track[(rank, "layers · enclosing calls")]
        assert [(e["name"], e["dur"], e["args"]["exclusive_ns"]) for e in block] == [("HybridBlock", 20.0, 1_000)]
    router = by_track[(1, "layers · moe_router")][0]
    assert router["ts"] == pytest.approx(7.1) and router["args"]["layer_index"] == 1  # µs from the run's start
