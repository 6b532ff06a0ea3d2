"""hybridscope from Python (notebooks): open a store, run any analysis by name, get tables.

    from hybridscope import api

    with api.open("run.duckdb") as store:            # read-only; a Parquet set's folder works too
        store.runs()                                  # the runs it holds (a Table)
        t = store.analyze("decompose", by="layer")    # the latest run, or run=ID; the analysis' options
        t.to_pandas()                                 # or t.to_arrow(): pip install 'hybridscope[notebook]'
        store.report().tables                         # every table of the report, by name
    api.analyses()                                    # the analyses' names, options and meanings

Every analysis returns a `hybridscope.table.Table` (named, typed columns; `rows`, `to_records()`,
`meta`). Mistakes raise the errors of `hybridscope.errors` with one-line messages. The CLI's verbs
`decompose`, `ranks`, `runs`, `query` and `report` run through this module. docs/api.md.
"""

from __future__ import annotations

from pathlib import Path

from hybridscope.analyze import catalog
from hybridscope.analyze.report import Report, build_report
from hybridscope.store import db as store_db
from hybridscope.table import Column, Table


class Store:
    """An open store (read-only). Use it as a context manager, or call `close()`."""

    def __init__(self, con, path: Path):
        self.con, self.path = con, path

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def run_id(self, run: int | None = None) -> int:
        """`run` if the store holds it, else NotFound; the latest run when None."""
        return store_db.resolve_run(self.con, run)

    def runs(self) -> Table:
        """The runs: id, label, source, ranks, device, window, events."""
        from hybridscope.store.query import list_runs

        return list_runs(self.con)

    def analyze(self, name: str, *, run: int | None = None, **options) -> Table:
        """Run the analysis `name` (see `analyses()`) on run `run` (latest when None)."""
        analysis = catalog.get(name)
        return analysis.run(self.con, self.run_id(run), **options)

    def report(self, run: int | None = None, *, warmup: int | None = None) -> Report:
        """Every table of the report (analyze/report.py SECTIONS) of run `run`, computed once;
        `warmup`: the warm-up left out of its tails (analyze/warmup.py: None the rule, N steps, 0 none)."""
        return build_report(self.con, self.run_id(run), warmup=warmup)

    def sql(self, query: str, *, max_rows: int | None = None) -> Table:
        """One read-only SQL statement (SELECT, WITH, DESCRIBE, ...) over the store (docs/schema.md)."""
        from hybridscope.store.query import run_query

        return run_query(self.con, query, max_rows=max_rows)


def open(path: str | Path, *, locked: bool = False, wait: float = store_db.LOCK_WAIT_S) -> Store:
    """Open the store at `path` read-only: a DuckDB file, or a folder holding a Parquet set
    (`hybridscope export --parquet`). `locked` (DuckDB files only) also locks the connection down
    for untrusted SQL (no file access, no extensions, no settings; store/query.py), as
    `hybridscope query` does."""
    path = Path(path)
    if locked:  # a DuckDB file only: a Parquet set's views need the file access the lock-down removes
        from hybridscope.store.query import open_query

        return Store(open_query(path, wait=wait), path)
    if path.is_dir():
        from hybridscope.store import parquet

        return Store(parquet.open_set(path), path)
    return Store(store_db.open_readonly(path, wait=wait), path)


def analyze(path: str | Path, name: str, *, run: int | None = None, **options) -> Table:
    """One analysis of one store, opened and closed: `api.analyze("run.duckdb", "steps")`."""
    with open(path) as store:
        return store.analyze(name, run=run, **options)


def analyses() -> Table:
    """The analyses by name: where each is defined, its options (with defaults) and what it computes."""
    rows = [(a.name, ", ".join(f"{k}={v!r}" for k, v in a.options.items()), a.where, a.doc)
            for a in catalog.catalog().values()]
    cols = (Column("name", "str", "the name to pass to analyze()"), Column("options", "str", "keyword options and defaults"),
            Column("defined_in", "str", "module.function under hybridscope.analyze"), Column("doc", "str", "what it computes"))
    return Table("analyses", cols, rows, {"title": "Analyses"})
