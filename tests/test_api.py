"""The Python API (docs/api.md): a store, any analysis by name with its options, tables out."""

from __future__ import annotations

import math

import pytest
import report_scenario

from hybridscope import api
from hybridscope.analyze import catalog
from hybridscope.analyze.decompose import decompose
from hybridscope.errors import NotFound, UsageError
from hybridscope.store import db, parquet
from hybridscope.table import Column, Table


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "run.duckdb"
    con, run = report_scenario.build(path)
    con.close()
    return path, run


def test_analysis_by_name_is_the_analysis(scenario):
    path, run = scenario
    con = db.open_readonly(path)
    try:
        want = decompose(con, run, by="layer", rank=1, top=3)
    finally:
        con.close()
    with api.open(path) as store:
        assert store.run_id() == run
        got = store.analyze("decompose", by="layer", rank=1, top=3)
    assert got.rows == want.rows and got.columns == want.columns and len(got) == 1 + 3  # `all` and the top 3
    assert api.analyze(path, "decompose", run=run, by="layer", rank=1, top=3).rows == want.rows


def test_every_named_analysis_runs_with_its_defaults(scenario):
    path, run = scenario
    with api.open(path) as store:
        for name in catalog.catalog():
            table = store.analyze(name, run=run)
            assert isinstance(table, Table), name


def test_every_table_of_the_report_can_be_asked_for_by_name(scenario):
    """The report's tables are analyses with the report's options (decompose: by layer type, layer, module)."""
    path, _ = scenario
    with api.open(path) as store:
        rep = store.report()
        names = set(catalog.catalog())
        missing = [t for t in rep.tables if t not in names and not t.startswith("decompose_")]
        assert not missing
        assert store.analyze("slow_steps").rows == rep["slow_steps"].rows
        assert store.analyze("advice").rows == rep["advice"].rows
        assert store.analyze("gap_sites").rows == rep["gap_sites"].rows


def test_options_change_the_result(scenario):
    path, _ = scenario
    with api.open(path) as store:
        strict = store.analyze("advice", cf_threshold=1e9)
        loose = store.analyze("advice")
    assert "capacity_factor" in loose.column("rule") and "capacity_factor" not in strict.column("rule")


def test_mistakes_are_one_line_errors(scenario, tmp_path):
    path, _ = scenario
    with api.open(path) as store:
        with pytest.raises(UsageError, match=r"no analysis named 'decompse'; analyses: .*decompose"):
            store.analyze("decompse")
        with pytest.raises(UsageError, match=r"no option 'bye' \(options: by, rank, top, warmup\)"):
            store.analyze("decompose", bye="layer")
        with pytest.raises(NotFound):
            store.analyze("steps", run=99)
    with pytest.raises(NotFound):
        api.open(tmp_path / "none.duckdb")


def test_sql_and_runs(scenario):
    path, run = scenario
    with api.open(path, locked=True) as store:
        assert store.runs().column("run_id") == [run]
        t = store.sql("SELECT count(DISTINCT rank) AS ranks FROM events")
    assert t.to_records() == [{"ranks": 2}]


def test_a_parquet_set_opens_like_a_store(scenario, tmp_path):
    path, run = scenario
    con = db.open_readonly(path)
    try:
        parquet.export_run(con, run, tmp_path / "set")
    finally:
        con.close()
    with api.open(path) as a, api.open(tmp_path / "set") as b:
        assert a.analyze("rank_waits").rows == b.analyze("rank_waits").rows


def test_analyses_lists_names_options_and_meanings():
    t = api.analyses()
    row = t.record(name="decompose")
    assert row["options"] == "by='layer_type', rank=None, top=None, warmup=None"
    assert row["defined_in"] == "decompose.decompose"
    assert all(t.column("doc"))


SMALL = Table("small", (Column("layer_type"), Column("n", "int"), Column("p99_ns", "ns")),
              [("mamba", 3, 1500.5), ("other", None, 20)], {"title": "Small", "run_id": 7})


def test_to_pandas():
    pd = pytest.importorskip("pandas", reason="pandas is optional: hybridscope[notebook]")
    df = SMALL.to_pandas()
    assert list(df.columns) == ["layer_type", "n", "p99_ns"]
    assert str(df["n"].dtype) == "Int64" and df["n"][0] == 3 and df["n"][1] is pd.NA
    assert df["p99_ns"].tolist() == [1500.5, 20.0]
    assert df.attrs["meta"] == {"title": "Small", "run_id": 7}


def test_to_arrow():
    pytest.importorskip("pyarrow", reason="pyarrow is optional: hybridscope[notebook]")
    import json

    at = SMALL.to_arrow()
    assert at.column_names == ["layer_type", "n", "p99_ns"]
    assert at.to_pylist() == [{"layer_type": "mamba", "n": 3, "p99_ns": 1500.5},
                              {"layer_type": "other", "n": None, "p99_ns": 20.0}]
    assert str(at.schema.field("n").type) == "int64"
    assert at.schema.field("p99_ns").metadata[b"kind"] == b"ns"
    assert json.loads(at.schema.metadata[b"hybridscope"])["meta"]["run_id"] == 7
    assert not math.isnan(at.column("p99_ns")[1].as_py())
