"""CUDA-graph replays on synthetic runs: the graph map from a capture phase, its mismatches, and
sequence attribution from a layer pattern (attribute/graphs.py), with hand-made answers."""

from __future__ import annotations

import itertools
import json

import pytest
from factories import add_events, add_run, new_store

from hybridscope.attribute import attribute_run
from hybridscope.attribute.pattern import parse_pattern
from hybridscope.store import db

_corr = itertools.count(5000)


@pytest.fixture
def con(tmp_path):
    c = new_store(tmp_path / "g.duckdb")
    yield c
    c.close()


def scope(con, run, name, t0, t1):
    add_events(con, run, [t1 - t0], name=name, source="annotation", kind="user_annotation", ts_ns=[t0],
               pid=1, tid=1)


def api(con, run, name, t, corr=None):
    add_events(con, run, [5], name=name, source="cuda_api", kind="runtime", ts_ns=[t], pid=1, tid=1,
               correlation=next(_corr) if corr is None else corr)


def replay(con, run, t_launch, nodes):
    """A cudaGraphLaunch at t_launch and its GPU events [(name, kind)] in execution order."""
    corr = next(_corr)
    api(con, run, "cudaGraphLaunch", t_launch, corr)
    for i, (name, kind) in enumerate(nodes):
        add_events(con, run, [100], name=name, kind=kind, ts_ns=[t_launch + 50 + 200 * i], pid=0, tid=7,
                   correlation=corr)
    return corr


def captured_engine(con, run):
    """The capture phase of one graph: layer 0 (Mamba) launches 2 kernels and a memset, layer 1
    (attention) one kernel inside `attention` and one in the block only."""
    scope(con, run, "step#0", 0, 10_000)
    api(con, run, "cudaStreamBeginCapture", 1_000)
    scope(con, run, "layers.0", 1_100, 2_000)
    scope(con, run, "mamba", 1_150, 1_900)
    for t in (1_200, 1_300):
        api(con, run, "cudaLaunchKernel", t)
    api(con, run, "cudaMemsetAsync", 1_400)
    scope(con, run, "layers.1", 2_100, 2_900)
    scope(con, run, "attention", 2_150, 2_500)
    api(con, run, "cuLaunchKernel", 2_200)
    api(con, run, "cudaLaunchKernelExC", 2_600)
    api(con, run, "cudaStreamEndCapture", 3_000)


NODES = [("nvjet_in_proj", "kernel"), ("_chunk_scan_fwd_kernel", "kernel"), ("Memset (Device)", "memset"),
         ("flash_fwd_kernel", "kernel"), ("nvjet_o_proj", "kernel")]


def attributed(con, run, **kw):
    with db.transaction(con):
        summary = attribute_run(con, run, **kw)
    rows = con.execute(
        "SELECT correlation, name, layer_type, attr_method, layer_index, step FROM events"
        " WHERE run_id = ? AND source = 'cuda' ORDER BY event_id", [run]).fetchall()
    return summary, rows


def test_replays_mapped_to_the_captured_launches(con):
    run = add_run(con)
    captured_engine(con, run)
    corrs = []
    for s in (1, 2, 3):
        scope(con, run, f"step#{s}", 10_000 * s, 10_000 * s + 9_000)
        nodes = NODES if s != 3 else [("other_gemm", "kernel")] + NODES[1:]  # names differ: not mapped
        corrs.append(replay(con, run, 10_000 * s + 100, nodes))
    scope(con, run, "step#4", 40_000, 49_000)
    short = replay(con, run, 40_100, NODES[:4])  # 4 nodes: no capture has that shape
    summary, rows = attributed(con, run)
    mapped = [r[1:] for r in rows if r[0] == corrs[1]]
    assert mapped == [("nvjet_in_proj", "mamba", "graph_map", 0, 2),
                      ("_chunk_scan_fwd_kernel", "mamba", "graph_map", 0, 2),
                      ("Memset (Device)", "mamba", "graph_map", 0, 2),
                      ("flash_fwd_kernel", "attention", "graph_map", 1, 2),
                      ("nvjet_o_proj", "other", "none", 1, 2)]
    odd = [r[2:] for r in rows if r[0] == corrs[2]]
    assert odd[0] == ("other", "graph", None, 3) and odd[1] == ("mamba", "graph", None, 3)
    assert [r[3] for r in rows if r[0] == short] == ["graph"] * 4
    g = summary.graphs
    assert (g.replays, g.captures, g.mapped, g.name_mismatch, g.no_capture_match, g.ambiguous) == (4, 1, 2, 1, 1, 0)
    notes = json.loads(con.execute("SELECT notes FROM runs WHERE run_id = ?", [run]).fetchall()[0][0])
    assert notes["graph_replays"]["all"]["mapped"] == 2


def test_two_captures_same_shape_different_maps_is_ambiguous(con):
    run = add_run(con)
    captured_engine(con, run)
    # a second capture of the same shape whose launches all run in layer 5 (attention)
    api(con, run, "cudaStreamBeginCapture", 5_000)
    scope(con, run, "layers.5", 5_050, 5_900)
    scope(con, run, "attention", 5_060, 5_890)
    for t, name in ((5_100, "cudaLaunchKernel"), (5_200, "cudaLaunchKernel"), (5_300, "cudaMemsetAsync"),
                    (5_400, "cudaLaunchKernel"), (5_500, "cudaLaunchKernel")):
        api(con, run, name, t)
    api(con, run, "cudaStreamEndCapture", 6_000)
    corr = replay(con, run, 10_100, NODES)
    summary, rows = attributed(con, run)
    assert [r[4] for r in rows if r[0] == corr] == [5] * 5  # the latest capture before the replay
    assert (summary.graphs.mapped, summary.graphs.ambiguous) == (1, 1)


def sequence_run(con, names):
    run = add_run(con)
    scope(con, run, "step#0", 0, 90_000)
    return run, replay(con, run, 100, [(n, "kernel") for n in names])


def test_sequence_attribution_from_a_pattern_is_kept_in_the_run(con):
    names = ["embedding_kernel", "rms_norm_kernel", "nvjet_a", "_chunk_scan_fwd_kernel", "nvjet_b",
             "rms_norm_kernel", "nvjet_c", "flash_fwd_kernel", "nvjet_d", "rms_norm_kernel", "nvjet_lm"]
    run, corr = sequence_run(con, names)
    summary, rows = attributed(con, run, pattern=parse_pattern("M*"))
    got = [r[2:5] for r in rows if r[0] == corr]
    assert got == [("embedding", "graph", None)] + [("mamba", "sequence", 0)] * 4 + \
        [("attention", "sequence", 1)] * 4 + [("norm", "graph", None), ("other", "graph", None)]
    assert (summary.graphs.segmented, summary.graphs.guessed_kernels) == (1, 0)
    _, again = attributed(con, run)  # no pattern given: the run's stored one
    assert again == rows


def test_sequence_attribution_counts_guesses_and_failures(con):
    run, _ = sequence_run(con, ["nvjet_a", "_chunk_scan_fwd_kernel", "nvjet_b", "flash_fwd_kernel", "nvjet_c"])
    summary, rows = attributed(con, run, pattern=parse_pattern("M*"))
    assert [r[3:5] for r in rows] == [("sequence_guess", 0), ("sequence", 0), ("sequence_guess", 1),
                                      ("sequence", 1), ("graph", None)]
    assert summary.graphs.guessed_kernels == 2
    summary, rows = attributed(con, run, pattern=parse_pattern("ME"))  # no MoE kernel: not segmented
    assert {r[3] for r in rows} == {"graph"}
    assert (summary.graphs.segmented, summary.graphs.unsegmented) == (0, 1)


def _cli(argv: list[str]) -> int:
    from hybridscope.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_attribution_cli_with_a_pattern_or_config(tmp_path, capsys):
    path = tmp_path / "cli.duckdb"
    con = new_store(path)
    names = ["rms_norm_kernel", "_chunk_scan_fwd_kernel", "rms_norm_kernel", "flash_fwd_kernel", "rms_norm_kernel"]
    sequence_run(con, names)
    con.close()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hybrid_override_pattern": "M*"}))
    assert _cli(["attribution", "--db", str(path), "--model-config", str(config), "-f", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in doc["coverage"]["rows"]}
    assert rows["sequence"]["n"] == 4 and rows["graph"]["n"] == 1
    assert _cli(["attribution", "--db", str(path)]) == 0
    assert "1 segmented, 0 not" in capsys.readouterr().out.replace("\n", " ")
    assert _cli(["attribution", "--db", str(path), "--pattern", "MX"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert _cli(["attribution", "--db", str(path), "--pattern", "M*", "--model-config", str(config)]) == 2


# -- end to end: Kineto traces with graph replays, through `hybridscope import` -------------------
def _kineto(tmp_path, name, capture: bool):
    from test_ingest_kineto import ev, kernel, launch, write_trace

    def ann(n, t0, t1):
        return ev("user_annotation", n, f"{t0}.000", f"{t1 - t0}.000", pid=100, tid=100)

    events = [ann("step#0", 1000, 1900)]
    if capture:  # torch.profiler around the capture, as vLLM's capture traces hold it
        events += [launch("1005.000", "1.000", 1, "cudaStreamBeginCapture"),
                   ann("layers.0", 1010, 1100), ann("mamba", 1011, 1099),
                   launch("1020.000", "1.000", 2), launch("1030.000", "1.000", 3),
                   ann("layers.1", 1110, 1200), ann("attention", 1111, 1199),
                   launch("1120.000", "1.000", 4, "cuLaunchKernel"),
                   launch("1210.000", "1.000", 5, "cudaStreamEndCapture")]
    names = ["rms_norm_kernel", "_chunk_scan_fwd_kernel", "flash_fwd_kernel"]
    events += [ann("step#1", 2000, 2900), launch("2001.000", "5.000", 9, "cudaGraphLaunch")]
    events += [kernel(f"{2010 + 10 * i}.000", "5.000", 9, name=n) for i, n in enumerate(names)]
    return write_trace(tmp_path / f"{name}.pt.trace.json", events)


def test_imported_trace_with_its_capture_phase_maps_replays(tmp_path, capsys):
    db = tmp_path / "k.duckdb"
    assert _cli(["import", str(_kineto(tmp_path, "cap", True)), "--db", str(db), "--no-progress"]) == 0
    con = db_connect(db)
    got = con.execute("SELECT name, layer_type, attr_method, layer_index, step FROM events "
                      "WHERE source = 'cuda' ORDER BY ts_ns").fetchall()
    assert got == [("rms_norm_kernel", "mamba", "graph_map", 0, 1),
                   ("_chunk_scan_fwd_kernel", "mamba", "graph_map", 0, 1),
                   ("flash_fwd_kernel", "attention", "graph_map", 1, 1)]


def test_imported_replays_without_capture_cut_by_the_pattern_given_at_import(tmp_path, capsys):
    db = tmp_path / "p.duckdb"
    trace = _kineto(tmp_path, "seq", False)
    assert _cli(["import", str(trace), "--db", str(db), "--no-progress", "--pattern", "M*"]) == 0
    con = db_connect(db)
    got = con.execute("SELECT name, layer_type, attr_method, layer_index FROM events "
                      "WHERE source = 'cuda' ORDER BY ts_ns").fetchall()
    # no norm kernel after the Mamba layer: the boundary falls between the two anchors, which is sure
    assert got == [("rms_norm_kernel", "mamba", "sequence", 0), ("_chunk_scan_fwd_kernel", "mamba", "sequence", 0),
                   ("flash_fwd_kernel", "attention", "sequence", 1)]
    assert _cli(["attribution", "--db", str(db)]) == 0
    assert "1 segmented, 0 not" in capsys.readouterr().out.replace("\n", " ")


def db_connect(path):
    import duckdb

    return duckdb.connect(str(path), read_only=True)
