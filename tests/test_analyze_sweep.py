"""The report's interval analyses in SQL over the sweep's running maxima (analyze/sweep.py) equal
the numpy interval arithmetic (analyze/intervals.py) on every kernel, on real traces: the duty
cycle over the whole run, overlap and gaps over each rank's steady state (its kernels from the
warm-up cut-off on), or over everything with --warmup 0; and the sweep's chunks carry their state:
any chunk size gives the same report."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hybridscope.analyze import conflicts, dashboard, intervals, overlap, sweep, timeline, warmup
from hybridscope.analyze.report import build_report
from hybridscope.analyze.stats import quantile
from hybridscope.ingest import import_files
from hybridscope.store import db

TRACES = {"ep2": ["ep2_bal_rank0.pt.trace.json.gz", "ep2_bal_rank1.pt.trace.json.gz"],
          "jamba": ["jamba.pt.trace.json.gz"], "granite": ["granitemoehybrid.pt.trace.json.gz"]}


@pytest.fixture(scope="module", params=sorted(TRACES))
def store(request, tmp_path_factory):
    from paths import TRACES as FOLDER

    paths = [FOLDER / name for name in TRACES[request.param]]
    if not all(p.exists() for p in paths):
        pytest.skip(f"{FOLDER} not present")
    path = tmp_path_factory.mktemp(request.param) / "run.duckdb"
    import_files(path, paths, progress=False)
    con = db.open_readonly(path)
    yield con, db.resolve_run(con, None), request.param
    con.close()


def _devices(con, run_id, setting=None):
    """(rank, device, kernels, their indices, the steady ones among them) per device."""
    cuts = warmup.detect(con, run_id, warmup=setting).cutoffs
    k = timeline.kernels(con, run_id)
    for (rank, device), idx in timeline.groups(k, "rank", "device"):
        yield rank, device, k, idx, idx[k["ts_ns"][idx] >= cuts.get(rank, -(2**62))]


@pytest.mark.parametrize("setting", [None, 0])
def test_busy_and_overlap_equal_interval_unions(store, setting):
    con, run_id, name = store
    with timeline.materialized(con, run_id, warmup=setting):
        duty = {(r["rank"], r["device"]): r for r in dashboard.duty_cycle(con, run_id).to_records()}
        ov = {(r["rank"], r["device"]): r for r in overlap.overlap(con, run_id).to_records()}
        windows = timeline.steady_rank_windows(con, run_id)
    n = left_out = 0
    for rank, device, k, idx, steady in _devices(con, run_id, setting):
        key = (rank, None if device < 0 else device)
        busy = intervals.union(k["ts_ns"][idx], k["end_ns"][idx])
        assert duty[key]["busy_ns"] == intervals.length(busy)  # the whole run, as a dashboard sees it
        assert duty[key]["n_kernels"] == idx.size
        s, e = k["ts_ns"][steady], k["end_ns"][steady]
        comm = np.isin(k["layer_type"][steady], timeline.COMM_TYPES)
        cu, pu = intervals.union(s[comm], e[comm]), intervals.union(s[~comm], e[~comm])
        assert ov[key]["comm_ns"] == intervals.length(cu)
        assert ov[key]["compute_ns"] == intervals.length(pu)
        assert ov[key]["overlapped_ns"] == intervals.intersection_length(cu, pu)
        assert ov[key]["window_ns"] == windows[rank][1] - windows[rank][0]
        left_out += idx.size - steady.size
        n += 1
    assert n == len(duty) > 0
    if setting == 0:
        assert left_out == 0
    if name == "ep2" and setting is None:  # the balanced EP run's NCCL warm-up is left out
        assert left_out > 0 and "warm-up kernels" in " ".join(overlap.overlap(con, run_id).meta["notes"])


@pytest.mark.parametrize("setting", [None, 0])
def test_gaps_equal_the_gaps_between_union_segments(store, setting):
    con, run_id, _name = store
    with timeline.materialized(con, run_id, warmup=setting):
        got = overlap.gaps(con, run_id)
    summary = {(r["rank"], r["device"]): r for r in got["gap_summary"].to_records()}
    every = []
    for rank, device, k, idx, steady in _devices(con, run_id, setting):
        # gaps between kernels of positive length and zero-length ones alike (module doc): the
        # running maximum over every kernel of the steady state, as in the sweep
        s, e = k["ts_ns"][steady], k["end_ns"][steady]
        if not s.size:
            continue
        run_max = np.maximum.accumulate(e)
        d = s[1:][s[1:] > run_max[:-1]] - run_max[:-1][s[1:] > run_max[:-1]]
        row = summary[(rank, None if device < 0 else device)]
        assert (row["n_gaps"], row["idle_ns"]) == (d.size, int(d.sum()))
        if d.size:
            assert row["max_ns"] == int(d.max())
            assert row["p50_ns"] == pytest.approx(quantile(d, 0.5), rel=1e-12)
        every.append(d)
    d = np.concatenate(every)
    hist = got["gap_histogram"]
    assert sum(hist.column("n_gaps")) == d.size
    assert sum(hist.column("idle_ns")) == int(d.sum())


@pytest.mark.parametrize("chunk", [97, 4096])
def test_any_chunk_size_gives_the_same_report(store, monkeypatch, chunk):
    con, run_id, _name = store
    whole = build_report(con, run_id)
    monkeypatch.setattr(sweep, "CHUNK_ROWS", chunk)
    chunked = build_report(con, run_id)
    for name in ("duty_cycle", "overlap", "gap_summary", "top_gaps", "gap_sites", "gap_histogram",
                 "launch_bound", "conflicts"):
        assert chunked[name].meta == whole[name].meta, name
        assert chunked[name].rows == whole[name].rows, name


def test_temp_tables_are_dropped_after_the_report(store):
    con, run_id, _name = store
    build_report(con, run_id)
    conflicts.conflicts(con, run_id)
    left = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    assert left == []


def test_chunks_put_equal_rows_in_end_and_ev_order_and_never_split_them(monkeypatch):
    """The query sorts on three keys (sweep.SORT_KEYS) and DuckDB's sort is not stable: rows equal on
    them may come in any (end_ns, ev) order. Chunks of 4 rows over batches of 3: a run of 3 equal
    rows holds row 4 (the chunk ends before it), and a run of 5 is longer than a chunk."""
    import pyarrow as pa

    monkeypatch.setattr(sweep, "CHUNK_ROWS", 4)
    rows = [(0, 0, 1, 2, 12), (0, 0, 2, 3, 13), (0, 0, 10, 20, 5), (0, 0, 10, 15, 3),
            (0, 0, 10, 20, 1), (0, 0, 11, 20, 2), (0, 0, 12, 30, 9), (0, 0, 12, 30, 8), (0, 0, 12, 31, 7),
            (0, 0, 12, 30, 6), (0, 0, 12, 29, 4), (0, 1, 0, 1, 0), (1, 0, 0, 1, 11), (1, 0, 0, 1, 10)]
    names = [*sweep.SORT_KEYS, "end_ns", "ev"]
    batches = [pa.RecordBatch.from_pylist([dict(zip(names, r)) for r in rows[i:i + 3]]) for i in range(0, len(rows), 3)]
    chunks = [c.to_pylist() for c in sweep._chunks(iter(batches))]
    got = [tuple(r[k] for k in names) for c in chunks for r in c]
    assert got == sorted(rows)
    assert [len(c) for c in chunks] == [2, 4, 5, 3]  # cut before the run of 3, the run of 5 whole
    for a, b in itertools.pairwise(chunks):
        assert [a[-1][k] for k in sweep.SORT_KEYS] != [b[0][k] for k in sweep.SORT_KEYS]
