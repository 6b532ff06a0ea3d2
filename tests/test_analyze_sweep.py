"""The report's interval analyses in SQL over the sweep's running maxima (analyze/sweep.py) equal
the numpy interval arithmetic (analyze/intervals.py) on every kernel, on real traces; and the
sweep's chunks carry their state: any chunk size gives the same report."""

from __future__ import annotations

import numpy as np
import pytest

from hybridscope.analyze import conflicts, dashboard, intervals, overlap, sweep, timeline
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
    yield con, db.resolve_run(con, None)
    con.close()


def _devices(con, run_id):
    k = timeline.kernels(con, run_id)
    for (rank, device), idx in timeline.groups(k, "rank", "device"):
        yield rank, device, k, idx


def test_busy_and_overlap_equal_interval_unions(store):
    con, run_id = store
    duty = {(r["rank"], r["device"]): r for r in dashboard.duty_cycle(con, run_id).to_records()}
    ov = {(r["rank"], r["device"]): r for r in overlap.overlap(con, run_id).to_records()}
    n = 0
    for rank, device, k, idx in _devices(con, run_id):
        key = (rank, None if device < 0 else device)
        s, e = k["ts_ns"][idx], k["end_ns"][idx]
        comm = np.isin(k["layer_type"][idx], timeline.COMM_TYPES)
        busy = intervals.union(s, e)
        assert duty[key]["busy_ns"] == intervals.length(busy)
        assert duty[key]["n_kernels"] == idx.size
        cu, pu = intervals.union(s[comm], e[comm]), intervals.union(s[~comm], e[~comm])
        assert ov[key]["comm_ns"] == intervals.length(cu)
        assert ov[key]["compute_ns"] == intervals.length(pu)
        assert ov[key]["overlapped_ns"] == intervals.intersection_length(cu, pu)
        n += 1
    assert n == len(duty) > 0


def test_gaps_equal_the_gaps_between_union_segments(store):
    con, run_id = store
    summary = {(r["rank"], r["device"]): r for r in overlap.gaps(con, run_id)["gap_summary"].to_records()}
    every = []
    for rank, device, k, idx in _devices(con, run_id):
        # gaps between kernels of positive length and zero-length ones alike (module doc): the
        # running maximum over every kernel, as in the sweep
        s, e = k["ts_ns"][idx], k["end_ns"][idx]
        run_max = np.maximum.accumulate(e)
        d = s[1:][s[1:] > run_max[:-1]] - run_max[:-1][s[1:] > run_max[:-1]]
        row = summary[(rank, None if device < 0 else device)]
        assert (row["n_gaps"], row["idle_ns"]) == (d.size, int(d.sum()))
        if d.size:
            assert row["max_ns"] == int(d.max())
            assert row["p50_ns"] == pytest.approx(quantile(d, 0.5), rel=1e-12)
        every.append(d)
    d = np.concatenate(every)
    hist = overlap.gaps(con, run_id)["gap_histogram"]
    assert sum(hist.column("n_gaps")) == d.size
    assert sum(hist.column("idle_ns")) == int(d.sum())


@pytest.mark.parametrize("chunk", [97, 4096])
def test_any_chunk_size_gives_the_same_report(store, monkeypatch, chunk):
    con, run_id = store
    whole = build_report(con, run_id)
    monkeypatch.setattr(sweep, "CHUNK_ROWS", chunk)
    chunked = build_report(con, run_id)
    for name in ("duty_cycle", "overlap", "gap_summary", "top_gaps", "gap_sites", "gap_histogram",
                 "launch_bound", "conflicts"):
        assert chunked[name].rows == whole[name].rows, name


def test_temp_tables_are_dropped_after_the_report(store):
    con, run_id = store
    build_report(con, run_id)
    conflicts.conflicts(con, run_id)
    left = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    assert left == []
