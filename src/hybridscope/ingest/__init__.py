"""Foreign trace formats -> normalized store rows, one module per format.

The registry: `detect(path)` names a file's format from its CONTENT (never its name), and
`import_files` imports files one transaction each. A format module exposes

    import_file(con, path, *, content_hash: str, ctx: ImportContext) -> ImportResult

which writes one rank of one run (`runs` row when it opens the run, its `run_ranks` row, its
`events`/`scopes`) using the helpers of `ingest._common`, and raises BadInput with one line for a
file it cannot read. `import_files` owns the transaction, the content-hash re-import check and
the attribution pass, so an importer does none of these.

To add a format: put its module name in FORMATS; a JSON format is sniffed in `_sniff_json`, an
SQLite one by the table names it must have (SQLITE_FORMATS, checked in order).
"""

from __future__ import annotations

import contextlib
import gzip
import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb

from hybridscope.errors import BadInput, NotFound
from hybridscope.ingest._common import (
    ImportContext,
    ImportResult,
    Progress,
    RetryFile,
    file_sha256,
    remove_stale_temp,
    settings,
)
from hybridscope.store.runs import find_duplicate

__all__ = ["FORMATS", "SQLITE_FORMATS", "ImportResult", "Progress", "detect", "expand_paths", "import_files",
           "iter_import"]

# format name -> module (under hybridscope.ingest) exposing import_file()
FORMATS: dict[str, str] = {
    "kineto": "hybridscope.ingest.kineto",
    "nsys": "hybridscope.ingest.nsys",
    "ingero": "hybridscope.ingest.ingero",
}

# (format name, tables an SQLite file must hold to be that format), first match wins
SQLITE_FORMATS: list[tuple[str, frozenset[str]]] = [
    ("ingero", frozenset({"events", "sources", "ops"})),  # ingest.ingero.REQUIRED
    ("nsys", frozenset({"StringIds"})),  # every nsys export has it; ingest.nsys checks the rest
]

GZIP_MAGIC = b"\x1f\x8b"
SQLITE_MAGIC = b"SQLite format 3\x00"
SNIFF_BYTES = 4096
IMPORT_MEMORY_LIMIT = "256MB"  # DuckDB's share of an import's memory: keeps peak RSS < 1 GiB
# A file of at least BULK_ROWS rows commits by a checkpoint instead of a WAL write. From one full
# row group on, DuckDB writes the rows to the store file before COMMIT; once attribution updates
# them it can no longer log them by their block pointers and writes all their data to the WAL
# (409 MB for the 5M-event synthetic trace: 0.5 s), checkpointed again at close (0.25 s), its
# checkpoint decision having counted the commit as small. A checkpoint at COMMIT writes them once
# (0.3 s). Smaller files keep the WAL: a checkpoint per file would leave a store of many small
# imports larger (15 small traces: 13.9 MB against 11.3) for nothing. docs/benchmarks.md, "Import".
BULK_ROWS = 122_880  # DuckDB's row group size
COMMIT_BY_CHECKPOINT = {"checkpoint_threshold": "0KB", "auto_checkpoint_skip_wal_threshold": 0}


def detect(path: str | Path) -> str:
    """The format of the file at `path`, from its first bytes (and, for SQLite, its tables).

    Raises NotFound for a missing file and BadInput for one no importer reads.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(SQLITE_MAGIC):
        return _sniff_sqlite(path)
    if head.startswith(GZIP_MAGIC):
        head = _gunzip_head(path)
    return _sniff_json(path, head)


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], dict[str, int]]:
    """The files to import: each file as given, and for each folder the trace files directly in it
    (sorted by name; which files are traces is decided by `detect`, from their content).

    Returns (files, {folder: files in it that are not traces}). Raises NotFound for a missing path
    and BadInput for a folder that holds no trace.
    """
    files: list[Path] = []
    left_out: dict[str, int] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            if not path.exists():
                raise NotFound(f"{path}: no such file or folder")
            files.append(path)
            continue
        found, other = [], 0
        for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                detect(child)
            except BadInput:
                other += 1
                continue
            found.append(child)
        if not found:
            raise BadInput(f"{path}: a folder with no trace files in it (Kineto JSON, nsys SQLite exports, "
                           "Ingero databases)")
        files += found
        if other:
            left_out[str(path)] = other
    return files, left_out


def _gunzip_head(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"{path}: not a readable gzip file ({e})") from None


def _sniff_json(path: Path, head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return "kineto"  # the only JSON format so far; the importer checks for traceEvents
    raise BadInput(f"{path}: not a trace hybridscope reads (expected Kineto JSON, plain or .gz, "
                   "or an nsys/Ingero SQLite file)")


def _sniff_sqlite(path: Path) -> str:
    from hybridscope.ingest._sqlite import connect_readonly

    try:
        con = connect_readonly(path)  # read-only and immutable: nothing is ever written beside a source
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError) as e:  # a damaged schema page can hold bad UTF-8
        raise BadInput(f"{path}: unreadable SQLite file ({e})") from None
    for name, needed in SQLITE_FORMATS:
        if needed <= tables:
            return name
    raise BadInput(f"{path}: an SQLite file, but neither an nsys export nor an Ingero database "
                   f"(tables: {', '.join(sorted(tables)[:8]) or 'none'})")


def iter_import(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[str | Path],
    *,
    rules_path: str | Path | None = None,
    rank: int | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    pattern=None,
) -> Iterator[ImportResult]:
    """Import each file in its own transaction, yielding its result as soon as it is committed.

    A file whose bytes are already stored yields a result with `duplicate_of` set and writes
    nothing. A bad file raises BadInput naming it; its transaction is rolled back, files before it
    stay imported. Files of one distributed job (same world size, distinct ranks) become one run.
    After a rank's rows are in, attribution runs in the same transaction. An importer that raises
    RetryFile gets one more go at the file in a fresh transaction with `ctx.careful` set. `progress`
    is the caller's reporter (`ingest._common.Progress`); None (or False) reports nothing.
    `pattern` (attribute.pattern.LayerPattern): the model's layers, for CUDA-graph replays.
    """
    ctx = ImportContext(rules_path=Path(rules_path) if rules_path else None, rank=rank, label=label,
                        progress=progress or None, pattern=pattern)
    if ctx.rules_path is not None:  # a bad rules file fails before any file is read
        from hybridscope.attribute.rules import load_rules

        load_rules(ctx.rules_path)
    remove_stale_temp()  # slice folders of imports that were killed
    with _import_settings(con):
        for path in paths:
            yield _import_one(con, Path(path), ctx)


@contextlib.contextmanager
def _import_settings(con: duckdb.DuckDBPyConnection):
    """DuckDB's memory capped at IMPORT_MEMORY_LIMIT (a large import spills its uncommitted rows
    to disk instead of growing the process); every setting an import changes is restored after,
    even when a step could not restore its own (an importer lowers `threads` while it loads,
    kineto.STORE_THREADS; a bulk file's commit sets COMMIT_BY_CHECKPOINT)."""
    with settings(con, {"memory_limit": IMPORT_MEMORY_LIMIT}, also=("threads", *COMMIT_BY_CHECKPOINT)):
        yield


def _import_one(con: duckdb.DuckDBPyConnection, path: Path, ctx: ImportContext) -> ImportResult:
    from importlib import import_module

    from hybridscope.attribute import attribute_run
    from hybridscope.store.db import transaction

    fmt = detect(path)
    importer = import_module(FORMATS[fmt])
    digest = file_sha256(path)
    ctx.careful = False
    while True:
        try:
            with contextlib.ExitStack() as after_commit, transaction(con):
                dup = find_duplicate(con, digest)
                if dup is not None:
                    result = ImportResult(str(path), fmt, dup[0], dup[1], 0, duplicate_of=dup)
                else:
                    ctx.pending = None
                    result = importer.import_file(con, path, content_hash=digest, ctx=ctx)
                    attribute_run(con, result.run_id, rank=result.rank, rules_path=ctx.rules_path,
                                  pattern=ctx.pattern)
                    if result.n_events >= BULK_ROWS:  # see BULK_ROWS
                        after_commit.enter_context(settings(con, COMMIT_BY_CHECKPOINT))
        except RetryFile as e:
            if ctx.careful:
                raise BadInput(f"{path}: {e}") from None
            ctx.careful = True
            continue
        ctx.committed()
        return result


def import_files(con_or_path, paths: Iterable[str | Path], **options) -> list[ImportResult]:
    """`iter_import` on a connection or a store path (opened, created if needed, and closed)."""
    if isinstance(con_or_path, duckdb.DuckDBPyConnection):
        return list(iter_import(con_or_path, paths, **options))
    from hybridscope.store.db import open_store

    con = open_store(con_or_path)
    try:
        return list(iter_import(con, paths, **options))
    finally:
        con.close()
