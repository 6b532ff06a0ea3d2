"""The launch calls per (rank, phase) (analyze/launches.py), by hand: a launch's phase is its own,
else that of a kernel it launched, else that of its step window; the lookup array and the SQL join
give the same rows, on hand-made runs and on real traces; the warm-up is left out."""

import pytest
from factories import add_events, add_run, add_steps, new_store

from hybridscope.analyze import launches, timeline
from hybridscope.ingest import import_files
from hybridscope.store import db


def _launch(con, run, ts, corr, phase=None, name="cudaLaunchKernel", rank=0):
    add_events(con, run, [10] * len(ts), ts_ns=ts, source="cuda_api", kind="runtime", name=name, rank=rank,
               correlation=corr, phase=phase, device=None, stream=None)


@pytest.fixture
def run(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    # windows: step 0 [0, 1000) prefill, step 1 [2000, 3000) decode, step 2 [5000, 6000) without a phase
    add_steps(con, run, [1000, 1000, 1000], ts_ns=[0, 2000, 5000], phase=["prefill", "decode", None])
    # kernels: correlation 1 and 2 decode, 5 without a phase, 6 twice (a graph launch) decode
    add_events(con, run, [10, 10, 10, 10, 10], ts_ns=[150, 250, 2650, 2750, 2760], correlation=[1, 2, 5, 6, 6],
               phase=["decode", "decode", None, "decode", "decode"], step=[0, 0, 1, 1, 1])
    _launch(con, run, [100], [1])                  # its kernel's phase (decode), not its window's
    _launch(con, run, [200], [2], phase="mixed")   # its own phase wins over its kernel's
    _launch(con, run, [500], [3])                  # no kernel: its window's (prefill)
    _launch(con, run, [1500], [4])                 # no kernel, between windows: none
    _launch(con, run, [2500], [None])              # no correlation: its window's (decode)
    _launch(con, run, [2600], [5])                 # its kernel has no phase: its window's (decode)
    _launch(con, run, [2700], [6], name="cudaGraphLaunch")  # a graph launch of two kernels: decode
    _launch(con, run, [5500], [999])               # beyond the kernels' ids, a window without a phase
    _launch(con, run, [50], [7], name="cudaMemcpyAsync")    # not a launch
    return con, run


EXPECTED = [(0, "decode", 4, 2700 - 100), (0, "mixed", 1, 0), (0, "prefill", 1, 0), (0, None, 2, 5500 - 1500)]


def _rows(rows):
    return sorted(rows, key=lambda r: (r[0], r[1] or ""))


def test_phase_own_then_kernel_then_window(run):
    con, run_id = run
    with timeline.materialized(con, run_id, warmup=0):
        assert _rows(launches.launch_spans(con, run_id)) == _rows(EXPECTED)
        assert _rows(launches._joined(con, run_id)) == _rows(EXPECTED)


def test_sparse_ids_take_the_join(run, monkeypatch):
    con, run_id = run
    _launch(con, run_id, [2800], [10**12])  # an id a trillion past the others: no lookup array
    add_events(con, run_id, [10], ts_ns=[2900], correlation=[10**12], phase="prefill", step=1)

    def refuse(*_a, **_k):
        raise AssertionError("sparse ids must not get a lookup array")

    monkeypatch.setattr(launches, "_lookup", refuse)
    with timeline.materialized(con, run_id, warmup=0):
        got = _rows(launches.launch_spans(con, run_id))
    assert got == _rows([(0, "decode", 4, 2600), (0, "mixed", 1, 0), (0, "prefill", 2, 2800 - 500),
                         (0, None, 2, 4000)])


def test_warm_up_launches_are_left_out(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run_id = add_run(con, ranks=(0, 1))
    for rank in (0, 1):
        add_steps(con, run_id, [1000] * 3, rank=rank, phase="decode")
        add_events(con, run_id, [10] * 3, ts_ns=[100, 1100, 2100], rank=rank, correlation=[1, 2, 3], step=[0, 1, 2],
                   phase="decode")
        _launch(con, run_id, [50, 1050, 2050], [1, 2, 3], rank=rank)
    with timeline.materialized(con, run_id, warmup=1):  # step 0 is warm-up: the cut-off at 1000
        assert timeline.tables(con, run_id).cutoffs == {0: 1000, 1: 1000}
        want = [(0, "decode", 2, 1000), (1, "decode", 2, 1000)]
        assert _rows(launches.launch_spans(con, run_id)) == want
        assert _rows(launches._joined(con, run_id)) == want


@pytest.mark.parametrize("names", [["ep2_bal_rank0.pt.trace.json.gz", "ep2_bal_rank1.pt.trace.json.gz"],
                                   ["jamba.pt.trace.json.gz"]])
def test_lookup_equals_the_join_on_real_traces(tmp_path, names):
    from paths import TRACES

    paths = [TRACES / n for n in names]
    if not all(p.exists() for p in paths):
        pytest.skip(f"{TRACES} not present")
    import_files(tmp_path / "run.duckdb", paths, progress=False)
    con = db.open_readonly(tmp_path / "run.duckdb")
    run_id = db.resolve_run(con, None)
    with timeline.materialized(con, run_id):
        got = launches.launch_spans(con, run_id)
        assert got and _rows(got) == _rows(launches._joined(con, run_id))
        assert sum(n for _r, _p, n, _s in got) > 100
