"""Per-group statistics in numpy (stats.by_group) and the report's pool of them (decompose._pool):
equal to DuckDB's aggregates to the bit, by hand and against DuckDB itself, and the report's
tables the same whether numpy or the SQL queries compute them."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from factories import add_events, add_run, add_steps, new_store

from hybridscope.analyze import decompose as dec
from hybridscope.analyze import report, stats, timeline

needs_rounding = pytest.mark.skipif(stats.duckdb_rounding() is None,
                                    reason="this DuckDB's quantile interpolation is not reproduced (SQL answers)")


@needs_rounding
def test_by_group_by_hand():
    # group 0: 10, 20, 30; group 2: 7 (group 1 has no values and no row)
    g = stats.by_group(np.array([0, 2, 0, 0]), 3, np.array([30, 7, 10, 20]), (0.0, 0.25, 0.5, 1.0))
    assert g.codes.tolist() == [0, 2]
    assert g.n.tolist() == [3, 1]
    assert g.max.tolist() == [30, 7]
    assert g.sum.tolist() == [60, 7]
    # h = 2q: q = 0.25 -> between 10 and 20 at 0.5: 15
    assert g.quantiles[0].tolist() == [[10.0, 15.0, 20.0, 30.0], [7.0, 7.0, 7.0, 7.0]]


def _duckdb_groups(codes, values, levels):
    with duckdb.connect() as con:
        return con.execute("SELECT c, count(*), quantile_cont(v, $q), max(v), sum(v)::BIGINT FROM "
                           "(SELECT unnest($c) AS c, unnest($v) AS v) GROUP BY c ORDER BY c",
                           {"q": list(levels), "c": codes.tolist(), "v": values.tolist()}).fetchall()


@needs_rounding
# the last: more codes than are bisected (groups found from the sorted keys instead)
@pytest.mark.parametrize(("spread", "n_codes"), [(10**3, 40), (10**12, 40), (10**9, 2**30)])
def test_by_group_equals_duckdb_to_the_bit(spread, n_codes):
    rng = np.random.default_rng(spread % 1000 + n_codes % 1000)
    n = 20_000
    codes = rng.choice(rng.integers(0, n_codes, 40), n)
    codes[:50] = codes[0]  # a group's duplicates
    values = rng.integers(-spread // 4, spread, n)
    values[:50] = 5
    levels = dec.CDF_LEVELS
    g = stats.by_group(codes, n_codes, values, levels)
    want = _duckdb_groups(codes, values, levels)
    got = [(int(c), int(k), q.tolist(), int(m), int(s))
           for c, k, q, m, s in zip(g.codes, g.n, g.quantiles[0], g.max, g.sum)]
    assert got == [(c, k, list(q), m, s) for c, k, q, m, s in want]


def test_codes_and_values_that_do_not_pack_are_refused():
    assert stats.packing(2**20, 2**40) == 41 and stats.packing(2**21, 2**42 - 1) == 42
    assert stats.packing(2**21, 2**42) is None
    with pytest.raises(ValueError, match="do not pack"):
        stats.by_group(np.array([0, 2**40]), 2**40 + 1, np.array([0, 2**30]), (0.5,))


def test_by_group_of_nothing():
    g = stats.by_group(np.array([], np.int64), 1, np.array([], np.int64), (0.5,))
    assert g.codes.size == 0 and g.quantiles[0].shape == (0, 1)


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """Two ranks with steps (warm-up with --warmup 1), memcpy beside kernels, NULL layer type
    beside a stored 'unattributed', NULL layer index and module, repeated durations."""
    con = new_store(tmp_path_factory.mktemp("pool") / "s.duckdb")
    run = add_run(con, ranks=(0, 1))
    rng = np.random.default_rng(7)
    for rank in (0, 1):
        add_steps(con, run, [400_000] * 4, rank=rank)
        for step in range(4):
            t = step * 400_000
            add_events(con, run, rng.integers(1_000, 9_000, 30), rank=rank, layer_type="mamba", layer_index=0,
                       module="backbone.layers.0.mixer", step=step, start_ns=t)
            add_events(con, run, rng.integers(2_000, 40_000, 10), rank=rank, layer_type="moe_comm", layer_index=1,
                       module="backbone.layers.1.moe", step=step, start_ns=t + 300_000)
            add_events(con, run, [3_000] * 5, rank=rank, layer_type=None, step=step, start_ns=t + 200_000)
            add_events(con, run, [4_000, 5_000], rank=rank, layer_type="unattributed", module="x", step=step,
                       start_ns=t + 250_000)
            add_events(con, run, [2_500], rank=rank, kind="memcpy", layer_type="attention", layer_index=2,
                       step=step, start_ns=t + 260_000)
    return con, run


@pytest.fixture(autouse=True)
def small_runs_pool(monkeypatch):
    """The pool also for the tests' runs of a few hundred kernels."""
    monkeypatch.setattr(dec, "POOL_MIN_KERNELS", 1)


def _tables(con, run, warmup):
    with timeline.materialized(con, run, warmup=warmup):
        out = [dec.decompose(con, run, by=by, warmup=warmup) for by in ("layer_type", "layer", "module")]
        out.append(report.per_rank(con, run, warmup=warmup))
        out.append(report.latency_cdf(con, run, warmup=warmup))
    return [(t.name, t.rows, t.meta) for t in out]


@needs_rounding
@pytest.mark.parametrize("warmup", [None, 1, 0])
def test_report_pool_equals_the_sql_queries(rich, monkeypatch, warmup):
    con, run = rich
    with timeline.materialized(con, run, warmup=warmup):
        assert dec._pool(con, run, dec.MEASURES["kernels"], dec.warmup_mod.detect(con, run, warmup=warmup))
    got = _tables(con, run, warmup)
    monkeypatch.setattr(stats, "duckdb_rounding", lambda: None)  # the SQL queries answer
    with timeline.materialized(con, run, warmup=warmup):
        assert dec._pool(con, run, dec.MEASURES["kernels"], dec.warmup_mod.detect(con, run, warmup=warmup)) is None
    assert got == _tables(con, run, warmup)
    cdf = {(lt, level): v for lt, _, level, v in got[-1][1]}
    assert cdf[("unattributed", 0.5)] > 0 and ("mamba", 0.99) in cdf


@needs_rounding
def test_report_pool_equals_the_sql_queries_on_a_real_trace(tmp_path, monkeypatch):
    from paths import TRACES

    from hybridscope.cli import main
    from hybridscope.store import db

    path = TRACES / "jamba.pt.trace.json.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    store = tmp_path / "s.duckdb"
    with pytest.raises(SystemExit) as e:
        main(["import", str(path), "--db", str(store), "--no-progress"])
    assert e.value.code == 0
    con = db.open_readonly(store)
    run = db.resolve_run(con, None)
    got = _tables(con, run, None)
    monkeypatch.setattr(stats, "duckdb_rounding", lambda: None)
    assert got == _tables(con, run, None)


@needs_rounding
def test_the_report_finds_its_pool_before_the_kernel_timeline_and_the_same_tables(rich, monkeypatch):
    con, run = rich
    seen = []
    create = timeline._create

    def spy(con_, run_, tables):
        seen.append([k[0] for k in tables.memo if isinstance(k, tuple) and k and k[0] == "decompose.pool"])
        create(con_, run_, tables)

    monkeypatch.setattr(timeline, "_create", spy)
    pooled = report.build_report(con, run)
    assert seen == [["decompose.pool"]]
    monkeypatch.setattr(stats, "duckdb_rounding", lambda: None)
    queried = report.build_report(con, run)
    assert seen[-1] == []
    assert {k: (t.rows, t.meta) for k, t in pooled.tables.items()} == \
        {k: (t.rows, t.meta) for k, t in queried.tables.items()}


@needs_rounding
def test_a_run_whose_keys_do_not_pack_is_answered_by_the_queries(rich, monkeypatch):
    con, run = rich
    pooled = _tables(con, run, None)
    monkeypatch.setattr(stats, "packing", lambda n_codes, span: None)
    with timeline.materialized(con, run):
        assert dec._pool(con, run, dec.MEASURES["kernels"], dec.warmup_mod.detect(con, run)) is None
    assert _tables(con, run, None) == pooled


def test_the_rounding_probe_tells_the_two_forms_apart():
    """The probe's values are ones where the plain and the fused interpolation round apart, and
    a DuckDB answering either way (or neither) is recognized."""
    from fractions import Fraction

    lo, d, hi = stats._probe()
    plain = lo * (1.0 - d) + hi * d
    fused = np.array([float(Fraction(a) * Fraction(1.0 - b) + Fraction(c * b)) for a, b, c in zip(lo, d, hi)])
    assert (plain != fused).sum() >= 20
    assert stats._rounding(plain, lo, d, hi) == "plain"
    assert stats._rounding(fused, lo, d, hi) == "fused"
    off = fused.copy()
    off[0] *= 2  # neither form
    assert stats._rounding(off, lo, d, hi) is None
