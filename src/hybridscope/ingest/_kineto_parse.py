"""Kineto slices -> event columns, on worker threads with their own in-memory DuckDBs.

Contract: `parsed_ahead(slices, folder)` yields one `ParsedSlice` per slice of `EventSlices`, in
order: an Arrow table of the `events` columns (all but run_id/rank; event_id counted from 0 in
the slice) of the complete events of known categories, the slice's row count, what was skipped
(counts by reason) and thread/process names. Threads work ahead of the caller, who inserts into
the store meanwhile: one reads, decompresses, cuts and writes slices to files; PARSERS parse them
(DuckDB's JSON reader, `ts`/`dur` read straight into DECIMAL(38, 3), the mapping SQL below).

Why separate in-memory DuckDBs: the staging table is replaced for every slice; in the store's
import transaction each replaced version would be kept until COMMIT (so a 5M-event trace ran out
of memory), while here every slice commits on its own and its memory is freed at once. The rows
travel as Arrow (a replacement scan in the store connection), not as Python objects.
"""

from __future__ import annotations

import collections
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from hybridscope.ingest._common import MAX_DURATION_NS, MAX_TS_NS

PARSER_MEMORY_LIMIT = "256MB"  # one slice's staging, per parser (spills to the slice folder beyond it)
PARSERS = 2  # slices parsed at once (DuckDB's JSON reader runs most of an import)
# DuckDB threads per parser: the parsers, the reader and the store's insert already keep the cores
# busy; more threads per parser only made them compete (5M-event synthetic trace on 2 cores: load
# 6.5-6.7 s at 1 thread, 7.3-7.4 s at DuckDB's default of one per core, and 40 MiB more).
PARSER_THREADS = 1


# Kineto category (lower case) -> (events.source, events.kind). Older traces spell some
# categories differently ("Kernel", "Memcpy", "Runtime", "Operator"): lower() and aliases.
CATEGORIES: dict[str, tuple[str, str]] = {
    "kernel": ("cuda", "kernel"),
    "gpu_memcpy": ("cuda", "memcpy"),
    "memcpy": ("cuda", "memcpy"),
    "gpu_memset": ("cuda", "memset"),
    "memset": ("cuda", "memset"),
    "gpu_user_annotation": ("cuda", "gpu_annotation"),
    "cuda_runtime": ("cuda_api", "runtime"),
    "runtime": ("cuda_api", "runtime"),
    "cuda_driver": ("cuda_api", "driver"),
    "driver": ("cuda_api", "driver"),
    "cuda_sync": ("cuda_api", "sync"),  # CUPTI synchronization records (stream/event/context)
    "cpu_op": ("cpu", "cpu_op"),
    "operator": ("cpu", "cpu_op"),
    "python_function": ("cpu", "python"),
    "user_annotation": ("annotation", "user_annotation"),
}
# runtime/driver calls that block the host: cudaStreamSynchronize, hipDeviceSynchronize, cuCtxSynchronize...
SYNC_NAME = r"(?i)^(cuda|hip|cu)[A-Za-z]*Synchronize$"

# The args we keep in events.args (JSON), beside the ones that get their own columns.
KEPT_ARGS: dict[str, str] = {
    "grid": "JSON", "block": "JSON",
    "Collective name": "VARCHAR", "In msg nelems": "BIGINT", "Out msg nelems": "BIGINT",
    "In split size": "JSON", "Out split size": "JSON", "Group size": "BIGINT", "dtype": "VARCHAR",
    "Process Group Name": "VARCHAR", "Process Group Ranks": "JSON",
    "Python id": "BIGINT", "Python parent id": "BIGINT",
    "cuda_sync_kind": "VARCHAR", "wait_on_stream": "BIGINT", "wait_on_cuda_event_record_corr_id": "BIGINT",
    "kind": "VARCHAR",  # ROCm: "Dispatch Kernel", copy kinds
}
COLUMN_ARGS = {"External id": "BIGINT", "correlation": "BIGINT", "device": "BIGINT", "stream": "BIGINT",
               "graph id": "BIGINT", "name": "VARCHAR"}  # name: of thread/process metadata events


def _read_columns() -> str:
    args = ", ".join(f'"{k}" {t}' for k, t in {**COLUMN_ARGS, **KEPT_ARGS}.items())
    cols = {"ph": "VARCHAR", "cat": "VARCHAR", "name": "VARCHAR", "pid": "VARCHAR", "tid": "VARCHAR",
            "ts": "DECIMAL(38, 3)", "dur": "DECIMAL(38, 3)", "args": f"STRUCT({args})"}
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"


def _category_case(pick: int) -> str:
    whens = " ".join(f"WHEN '{c}' THEN '{sk[pick]}'" for c, sk in CATEGORIES.items())
    return f"CASE lower(cat) {whens} END"


_KNOWN = ", ".join(f"'{c}'" for c in CATEGORIES)
_ON_GPU = ", ".join(f"'{c}'" for c, (source, _) in CATEGORIES.items() if source == "cuda") + ", 'cuda_sync'"
# the border of ingest._common, in µs: |ts| and dur beyond are skipped and counted
MAX_TS_US = MAX_TS_NS // 1000
MAX_DUR_US = MAX_DURATION_NS // 1000
STAGE_SQL = f"""
CREATE OR REPLACE TEMP TABLE _hs_stage AS
SELECT *,
    CASE
        WHEN ph IS NULL THEN 'events without ph'
        WHEN ph IN ('s', 't', 'f') THEN 'flow events (ph s/t/f)'
        WHEN ph = 'M' THEN 'metadata events (ph M)'
        WHEN ph IN ('i', 'I') THEN 'instant events (ph i)'
        WHEN ph = 'C' THEN 'counter events (ph C)'
        WHEN ph <> 'X' THEN 'events with ph ' || ph
        WHEN cat IS NULL THEN 'complete events without a category'
        WHEN lower(cat) NOT IN ({_KNOWN}) THEN 'category ' || cat
        WHEN TRY_CAST(pid AS BIGINT) IS NULL THEN 'complete events with a non-numeric pid'
        WHEN ts_us IS NULL OR dur_us IS NULL THEN 'complete events without ts or dur'
        WHEN dur_us < 0 THEN 'complete events with a negative dur'
        WHEN abs(ts_us) > {MAX_TS_US} OR dur_us > {MAX_DUR_US} THEN 'complete events with ts or dur out of range'
        WHEN lower(cat) IN ({_ON_GPU}) AND TRY_CAST(coalesce(args.device, TRY_CAST(pid AS BIGINT)) AS INTEGER) IS NULL
             AND coalesce(args.device, TRY_CAST(pid AS BIGINT)) IS NOT NULL
            THEN 'GPU events with a device id out of range'
    END AS skip
FROM (SELECT ph, cat, name, pid, tid, ts AS ts_us, dur AS dur_us, args
      FROM read_json(?, format = 'array', records = true, columns = {_read_columns()},
                     maximum_object_size = 33554432))
"""


def _json_object(keys: tuple[str, ...]) -> str:
    return "json_object(" + ", ".join(f"'{k}', args.\"{k}\"" for k in keys) + ")"


_COLLECTIVE = ("Collective name", "In msg nelems", "Out msg nelems", "In split size", "Out split size",
               "Group size", "dtype", "Process Group Name", "Process Group Ranks", "grid", "block")
# args JSON by what the event is; building it only where it says something keeps the import fast
_KEPT_JSON = f"""CASE
    WHEN args."Collective name" IS NOT NULL THEN {_json_object(_COLLECTIVE)}
    WHEN args.grid IS NOT NULL THEN {_json_object(("grid", "block"))}
    WHEN args."Python id" IS NOT NULL THEN {_json_object(("Python id", "Python parent id"))}
    WHEN args.cuda_sync_kind IS NOT NULL
        THEN {_json_object(("cuda_sync_kind", "wait_on_stream", "wait_on_cuda_event_record_corr_id"))}
    WHEN args.kind IS NOT NULL THEN {_json_object(("kind",))}
END"""

# the events' columns but run_id, rank and duration_us, which the store connection adds; ts_ns and
# duration_ns still as the µs DECIMAL(38, 3) read, which `_to_ns` turns into ns
EVENTS_SQL = f"""
SELECT row AS event_id, source,
       CASE WHEN source = 'cuda_api' AND regexp_matches(name, '{SYNC_NAME}') THEN 'sync' ELSE kind END AS kind,
       coalesce(name, '') AS name,
       CASE WHEN on_gpu THEN coalesce(args.device, TRY_CAST(pid AS BIGINT)) END AS device,
       CASE WHEN on_gpu THEN coalesce(args.stream, TRY_CAST(regexp_extract(tid, '-?[0-9]+') AS BIGINT)) END
           AS stream,
       TRY_CAST(pid AS BIGINT) AS pid, TRY_CAST(tid AS BIGINT) AS tid, ts_us AS ts_ns, dur_us AS duration_ns,
       args.correlation AS correlation, args."External id" AS external_id,
       args."graph id" AS graph_id, {_KEPT_JSON} AS args
FROM (
    SELECT *, rowid AS row, {_category_case(0)} AS source, {_category_case(1)} AS kind,
           source = 'cuda' OR lower(cat) = 'cuda_sync' AS on_gpu
    FROM _hs_stage WHERE skip IS NULL
)
"""


@dataclass
class ParsedSlice:
    """One slice's events as an Arrow table (all `events` columns but run_id and rank; event_id
    from 0 within the slice), its row count (events, then skipped records), and what was not an
    event."""

    events: object  # pyarrow.Table
    n_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    threads: dict[str, str] = field(default_factory=dict)


class SliceRejected(Exception):
    """DuckDB refused a slice: a wrong fast cut (the file is retried carefully) or a bad file."""


def parsed_ahead(slices: Iterable[bytes | memoryview], folder: Path) -> Iterator[ParsedSlice]:
    """Yield each slice parsed (see the module docstring). Threads work ahead of the caller: one
    reads, decompresses and writes slices to files, PARSERS parse them; their exceptions are
    re-raised here."""
    return _ahead(_parse_files(_ahead(_write_files(slices, folder)), folder))


def _write_files(slices: Iterable[bytes | memoryview], folder: Path) -> Iterator[Path]:
    for i, data in enumerate(slices):
        path = folder / f"slice{i}.json"
        with open(path, "wb") as f:  # a slice is the inside of the array
            f.write(b"[")
            f.write(data)
            f.write(b"]")
        yield path


def _parse_files(paths: Iterable[Path], folder: Path) -> Iterator[ParsedSlice]:
    """Parse slices PARSERS at a time, each on a connection of its own; yield them in order."""
    idle: queue.Queue = queue.Queue()
    for _ in range(PARSERS):
        idle.put(duckdb.connect(config={"memory_limit": PARSER_MEMORY_LIMIT, "threads": PARSER_THREADS,
                                        "temp_directory": str(folder)}))

    def parse(path: Path) -> ParsedSlice:
        mem = idle.get()
        try:
            return _parse(mem, path)
        except duckdb.Error as e:
            raise SliceRejected(_rejected(mem, path, e)) from None
        finally:
            idle.put(mem)
            path.unlink(missing_ok=True)

    pending: collections.deque = collections.deque()
    try:
        with ThreadPoolExecutor(PARSERS, thread_name_prefix="hybridscope-parse") as pool:
            try:
                for path in paths:
                    pending.append(pool.submit(parse, path))
                    if len(pending) >= PARSERS:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for job in pending:
                    job.cancel()
    finally:
        while not idle.empty():
            idle.get().close()


def _ahead(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate `items` in a worker thread that stays up to `depth` items ahead of the caller."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                q.put(item)
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            q.put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's own clean-up (its files, its worker) runs in this thread

    worker = threading.Thread(target=work, name="hybridscope-kineto", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def _parse(mem: duckdb.DuckDBPyConnection, path: Path) -> ParsedSlice:
    mem.execute(STAGE_SQL, [str(path)])
    out = ParsedSlice(events_table(mem))
    for reason, count in mem.execute("SELECT skip, count(*) FROM _hs_stage GROUP BY skip").fetchall():
        out.n_rows += count
        if reason is not None:
            out.skipped[reason] = count
    for kind, pid, tid, label in mem.execute(
        "SELECT name, pid, tid, args.name FROM _hs_stage "
        "WHERE ph = 'M' AND name IN ('process_name', 'thread_name') AND args.name IS NOT NULL LIMIT 10000"
    ).fetchall():
        out.threads[f"{pid}" if kind == "process_name" else f"{pid}/{tid}"] = label
    return out


def events_table(mem: duckdb.DuckDBPyConnection):
    """EVENTS_SQL on the staged slice, as Arrow, with ts_ns and duration_ns in ns (`_to_ns`)."""
    table = mem.sql(EVENTS_SQL).to_arrow_table()
    for name in ("ts_ns", "duration_ns"):
        table = table.set_column(table.schema.get_field_index(name), name, _to_ns(table.column(name)))
    return table


def _to_ns(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """µs read as DECIMAL(38, 3) -> ns: the decimal's unscaled integer, which is the value * 1000
    exactly (as `CAST(µs * 1000 AS BIGINT)` gave, at half the mapping's CPU: 128-bit arithmetic per
    value). Arrow holds a decimal128 as two little-endian 64-bit words, low first; STAGE_SQL kept
    only |ts| and dur below 2**62 ns, so the low word, read as signed, is the whole value."""
    return pa.chunked_array([_chunk_to_ns(chunk) for chunk in column.chunks], type=pa.int64())


def _chunk_to_ns(values: pa.Array) -> pa.Array:
    if values.null_count:
        raise ValueError("a kept event without ts or dur")  # STAGE_SQL skips those: a bug if seen
    n = len(values)
    words = np.frombuffer(values.buffers()[1], dtype="<i8", count=2 * (values.offset + n)) if n else np.empty(0, "<i8")
    low = np.ascontiguousarray(words[2 * values.offset::2])
    # from_buffers keeps numpy's memory (no copy); pa.array(ndarray) would import pandas (0.2 s, 40 MiB)
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(low)])


_IN_FILE = re.compile(r' in file "[^"]*"')


def _rejected(mem: duckdb.DuckDBPyConnection, path: Path, e: duckdb.Error) -> str:
    """Why DuckDB refused a slice, in one line: the event field of the wrong type when it is `ts`,
    `dur` or one of the typed args (DuckDB's message does not name it), without the slice's file."""
    why = _IN_FILE.sub("", _first_line(e))
    if "JSON transform error" not in why:
        return why
    typed = [("ts", "ts", "DECIMAL(38, 3)", "a number of µs"), ("dur", "dur", "DECIMAL(38, 3)", "a number of µs")]
    typed += [("args", f'$."{k}"', "BIGINT", "a 64-bit integer") for k, t in {**COLUMN_ARGS, **KEPT_ARGS}.items()
              if t == "BIGINT"]
    for column, key, kind, what in typed:
        value = f"json_extract_string({column}, ?)" if column == "args" else f"json_extract_string({column}, '$')"
        params = [key, str(path), key, key] if column == "args" else [str(path)]
        present = f"json_extract({column}, ?) IS NOT NULL" if column == "args" else f"{column} IS NOT NULL"
        try:
            bad = mem.execute(
                f"SELECT any_value({value}) FROM read_json(?, format = 'array', columns = {{'{column}': 'JSON'}}, "
                f"maximum_object_size = 33554432) WHERE {present} AND TRY_CAST({value} AS {kind}) IS NULL",
                params).fetchall()[0][0]
        except duckdb.Error:
            return why
        if bad is not None:
            name = f"args.{key[3:-1]}" if column == "args" else key
            return f"an event's {name} is not {what} ({' '.join(bad.split())[:40]})"
    return why


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
