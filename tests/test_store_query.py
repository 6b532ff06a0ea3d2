"""`hybridscope query`: the seed query, read-only lockdown (each guard checked on its own), formats."""

from __future__ import annotations

import csv
import hashlib
import io

import duckdb
import numpy as np
import orjson
import pytest
from factories import add_events, store_with

from hybridscope.cli import main
from hybridscope.errors import BadInput
from hybridscope.store.query import check_sql, list_runs, open_query, run_query

SEED = ("SELECT name, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_us) AS p50, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_us) AS p99 FROM events WHERE source='cuda' "
        "GROUP BY name ORDER BY p99 DESC LIMIT 20")

FLASH = [10_000, 20_000, 30_000, 40_000]
NCCL = [5_000, 6_000, 900_000]


@pytest.fixture
def db_file(db_path):
    con, run = store_with(db_path, {"attention": FLASH, "moe_comm": NCCL}, name_prefix="")
    add_events(con, run, [1_000_000], source="cuda_api", kind="runtime", name="cudaDeviceSynchronize")
    con.close()
    return db_path


@pytest.fixture
def con(db_file):
    c = open_query(db_file)
    yield c
    c.close()


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_seed_query_verbatim(con):
    t = run_query(con, SEED)
    assert t.column_names == ("name", "count_star()", "p50", "p99")
    rows = t.to_records()
    assert [r["name"] for r in rows] == ["moe_comm", "attention"]  # by p99, descending
    for r, data in zip(rows, (NCCL, FLASH)):
        us = np.asarray(data) / 1000
        assert r["count_star()"] == len(data)
        assert r["p50"] == pytest.approx(np.percentile(us, 50))
        assert r["p99"] == pytest.approx(np.percentile(us, 99))


def test_seed_query_through_the_cli(db_file, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["query", "--db", str(db_file), SEED, "--format", "csv"])
    assert exc.value.code == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["name", "count_star()", "p50", "p99"]
    assert rows[1][:2] == ["moe_comm", "3"]
    assert float(rows[1][3]) == pytest.approx(np.percentile([5, 6, 900], 99))


@pytest.mark.parametrize("sql", [
    "SELECT 1 AS one",
    "WITH a AS (SELECT 2 AS x) SELECT x FROM a",
    "FROM runs",
    "VALUES (1, 'a')",
    "DESCRIBE events",
    "SHOW TABLES",
    "SUMMARIZE runs",
    "EXPLAIN SELECT count(*) FROM events",
    "EXPLAIN ANALYZE SELECT count(*) FROM events",
    "SELECT * FROM pragma_table_info('events')",
    "SELECT * FROM query('SELECT 1')",
])
def test_reads_are_allowed(con, sql):
    assert len(run_query(con, sql)) >= 1


REFUSED = [
    ("INSERT INTO runs (run_id, source) VALUES (99, 'x')", "INSERT"),
    ("UPDATE events SET duration_ns = 0", "UPDATE"),
    ("DELETE FROM events", "DELETE"),
    ("DROP TABLE events", "DROP"),
    ("CREATE TABLE t (x INT)", "CREATE"),
    ("CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
    ("ALTER TABLE runs ADD COLUMN x INT", "ALTER"),
    ("ATTACH 'other.duckdb' AS o", "ATTACH"),
    ("DETACH o", "DETACH"),
    ("COPY events TO 'events.csv'", "COPY"),
    ("COPY events FROM 'events.csv'", "COPY"),
    ("EXPORT DATABASE 'dump'", "EXPORT"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET threads = 1", "SET"),
    ("RESET lock_configuration", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL pragma_version()", "CALL"),
    ("CHECKPOINT", "CALL"),
    ("VACUUM", "VACUUM"),
    ("BEGIN TRANSACTION", "TRANSACTION"),
    ("EXPLAIN ANALYZE INSERT INTO runs (run_id, source) VALUES (99, 'x')", "INSERT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission"),
    ("SELECT * FROM '/etc/passwd.csv'", "Permission"),
    ("SELECT * FROM read_text('/etc/passwd')", "Permission"),
    ("SELECT * FROM glob('/*')", "Permission"),
    ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "Permission"),
    ("SELECT 1; DROP TABLE events", "one statement at a time"),
    ("   ", "no SQL statement"),
]


@pytest.mark.parametrize("sql, why", REFUSED)
def test_refused_with_one_line_and_store_unchanged(db_file, con, sql, why):
    before = _digest(db_file)
    with pytest.raises(BadInput) as exc:
        run_query(con, sql)
    assert why in exc.value.message
    assert "\n" not in exc.value.message
    con.close()
    assert _digest(db_file) == before


def test_each_lockdown_setting_blocks_on_its_own(con):
    """The statement filter aside: the connection itself refuses writes, files, config and extensions."""
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("INSERT INTO runs (run_id, source) VALUES (99, 'x')")
    with pytest.raises(duckdb.PermissionException):  # enable_external_access = false
        con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.PermissionException):
        con.execute("ATTACH '/tmp/hybridscope-other.duckdb' AS o")
    with pytest.raises(duckdb.PermissionException):
        con.execute("COPY (SELECT 1) TO '/tmp/hybridscope-out.csv'")
    with pytest.raises(duckdb.Error):  # no extension directory, no download
        con.execute("INSTALL httpfs")
    with pytest.raises(duckdb.Error, match="locked"):  # lock_configuration = true
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("PRAGMA threads = 1")
    secret = {"x": np.arange(3)}  # noqa: F841 - a Python variable user SQL must not see
    with pytest.raises(duckdb.CatalogException):  # python_enable_replacements = false
        con.execute("SELECT * FROM secret").fetchall()
    settings = dict(con.execute(
        "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
        "'autoload_known_extensions', 'autoinstall_known_extensions', 'lock_configuration')").fetchall())
    assert settings == {"enable_external_access": "false", "autoload_known_extensions": "false",
                        "autoinstall_known_extensions": "false", "lock_configuration": "true"}


def test_syntax_and_binder_errors_are_one_line(con):
    with pytest.raises(BadInput, match=r"^SQL error: Parser Error: syntax error at or near \"SELEC\"$"):
        check_sql(con, "SELEC 1")
    with pytest.raises(BadInput, match="nope") as exc:
        run_query(con, "SELECT nope FROM events")
    assert "\n" not in exc.value.message


@pytest.mark.parametrize("sql", ["SELEC 1", "DROP TABLE events", "SELECT * FROM read_csv('/etc/passwd')"])
def test_cli_refusals_exit_1_with_one_line(db_file, capsys, sql):
    with pytest.raises(SystemExit) as exc:
        main(["query", "--db", str(db_file), sql])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybridscope: error: ")


def test_types_names_and_truncation(con):
    t = run_query(con, "SELECT 1 AS a, 2 AS a, 1.5::DECIMAL(4,2) AS d, [1, 2] AS l, "
                       "TIMESTAMPTZ '2026-01-02 03:04:05+00' AS z, 'x' AS s")
    assert t.column_names == ("a", "a_1", "d", "l", "z", "s")
    assert [c.kind for c in t.columns] == ["int", "int", "float", "str", "str", "str"]
    assert t.rows[0][:4] == (1, 2, 1.5, [1, 2])
    assert t.rows[0][4].startswith("2026-01-02")
    cut = run_query(con, "SELECT * FROM range(10) t(i)", max_rows=3)
    assert cut.column("i") == [0, 1, 2] and cut.meta["truncated"]
    assert "first 3 rows" in cut.meta["notes"][0]
    whole = run_query(con, "SELECT * FROM range(3) t(i)", max_rows=3)
    assert not whole.meta["truncated"] and whole.meta["notes"] == []


def test_cli_json_and_stdin(db_file, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT name, duration_ns FROM events WHERE source = 'cuda_api'"))
    with pytest.raises(SystemExit) as exc:
        main(["query", "--db", str(db_file), "-", "-f", "json"])
    assert exc.value.code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["rows"] == [{"name": "cudaDeviceSynchronize", "duration_ns": 1_000_000}]
    assert [c["kind"] for c in doc["columns"]] == ["str", "int"]


def test_list_runs(db_file):
    con = open_query(db_file)
    t = list_runs(con)
    con.close()
    r = t.record(run_id=1)
    assert r["events"] == 8 and r["gpu_events"] == 7
    assert r["ranks"] == "0" and r["world_size"] == 1
    # back to back: 100 µs of attention, 911 µs of moe_comm, then the 1 ms sync
    assert r["window_ns"] == sum(FLASH) + sum(NCCL) + 1_000_000
