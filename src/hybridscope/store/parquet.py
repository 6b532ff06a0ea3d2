"""Per-rank Parquet files beside the store, and a connection that reads a set of them as a store.

Layout (Hive partitioning, readable by DuckDB, Spark, Trino, Polars alike):

    DIR/<table>/run_id=<run>/rank=<rank>/data_0.parquet     for events, scopes, steps, routing, samples
    DIR/runs/..., DIR/run_ranks/..., DIR/requests/...        (partitioned by run_id)

`open_set(DIR)` returns an in-memory DuckDB connection whose views carry the store's table names
over `read_parquet(DIR/<table>/**/*.parquet)` (tables with no files exist, empty): every analysis runs on it unchanged, and DuckDB
streams the files, so hundreds of ranks are aggregated without loading them into memory.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from hybridscope.errors import BadInput, NotFound
from hybridscope.store.db import schema_sql, sql_path

RANK_TABLES = ("events", "scopes", "steps", "routing", "samples")
RUN_TABLES = ("runs", "run_ranks", "requests")
TABLES = RUN_TABLES + RANK_TABLES


def export_run(con, run_id: int, out_dir: Path) -> list[Path]:
    """Write one run's rows as Parquet under `out_dir` (module doc); returns the table folders written.

    Existing partitions of the same run are replaced; other runs' files are left alone.
    """
    out_dir = Path(out_dir)
    written = []
    for table in TABLES:
        n = con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchall()[0][0]
        if not n:
            continue
        target = out_dir / table
        parts = "run_id, rank" if table in RANK_TABLES else "run_id"
        _clear_run(target, run_id)
        target.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY (SELECT * FROM {table} WHERE run_id = {int(run_id)}) TO '{sql_path(target)}' "
                    f"(FORMAT parquet, PARTITION_BY ({parts}), OVERWRITE_OR_IGNORE true)")
        written.append(target)
    return written


def _clear_run(target: Path, run_id: int) -> None:
    part = target / f"run_id={run_id}"
    if part.exists():
        for f in sorted(part.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        part.rmdir()


def open_set(directory: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with one view per store table present under `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"no Parquet set at {directory}")
    con = duckdb.connect()
    con.execute(schema_sql())  # every table exists, empty, until a folder of files replaces it
    found = []
    for table in TABLES:
        files = list((directory / table).glob("**/*.parquet"))
        if not files:
            continue
        con.execute(f"DROP TABLE {table}")
        parts = "{'run_id': INTEGER, 'rank': INTEGER}" if table in RANK_TABLES else "{'run_id': INTEGER}"
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{sql_path(directory / table)}/**/*.parquet', "
                    f"hive_partitioning = true, hive_types = {parts}, union_by_name = true)")
        found.append(table)
    if "events" not in found or "runs" not in found:
        con.close()
        raise BadInput(f"{directory} holds no hybridscope Parquet set (no events/ or runs/ folder)")
    return con

