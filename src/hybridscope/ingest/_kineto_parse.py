"""Kineto slices -> event columns, in a worker thread with its own in-memory DuckDB.

Contract: `parsed_ahead(slices, folder)` yields one `ParsedSlice` per slice of `EventSlices`, in
order: a Parquet file of the `events` columns (all but run_id/rank) of the complete events of
known categories, what was skipped (counts by reason) and thread/process names. Two threads work
ahead of the caller, who inserts into the store meanwhile: one reads, decompresses, cuts and
writes slices to files; one parses them (DuckDB's JSON reader, the mapping SQL below).

Why a separate in-memory DuckDB: the staging table is replaced for every slice; in the store's
import transaction each replaced version would be kept until COMMIT (so a 5M-event trace ran out
of memory), while here every slice commits on its own and its memory is freed at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

PARSER_MEMORY_LIMIT = "256MB"  # one slice's staging (spills to the slice folder beyond it)


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
            "ts": "VARCHAR", "dur": "VARCHAR", "args": f"STRUCT({args})"}
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"


def _category_case(pick: int) -> str:
    whens = " ".join(f"WHEN '{c}' THEN '{sk[pick]}'" for c, sk in CATEGORIES.items())
    return f"CASE lower(cat) {whens} END"


_KNOWN = ", ".join(f"'{c}'" for c in CATEGORIES)
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
        WHEN ts_txt IS NULL OR dur_txt IS NULL THEN 'complete events without ts or dur'
    END AS skip
FROM (SELECT ph, cat, name, pid, tid, ts AS ts_txt, dur AS dur_txt, args
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

# the events' columns but run_id and rank, which the store connection adds
EVENTS_SQL = f"""
SELECT $base + row AS event_id, source,
       CASE WHEN source = 'cuda_api' AND regexp_matches(name, '{SYNC_NAME}') THEN 'sync' ELSE kind END AS kind,
       coalesce(name, '') AS name,
       CASE WHEN on_gpu THEN coalesce(args.device, TRY_CAST(pid AS BIGINT)) END AS device,
       CASE WHEN on_gpu THEN coalesce(args.stream, TRY_CAST(regexp_extract(tid, '-?[0-9]+') AS BIGINT)) END
           AS stream,
       TRY_CAST(pid AS BIGINT) AS pid, TRY_CAST(tid AS BIGINT) AS tid, ts_ns, dur_ns AS duration_ns,
       dur_ns / 1000.0 AS duration_us, args.correlation AS correlation, args."External id" AS external_id,
       args."graph id" AS graph_id, {_KEPT_JSON} AS args
FROM (
    SELECT *, rowid AS row, {_category_case(0)} AS source, {_category_case(1)} AS kind,
           source = 'cuda' OR lower(cat) = 'cuda_sync' AS on_gpu,
           CAST(round(CAST(ts_txt AS DECIMAL(38, 9)) * 1000) AS BIGINT) AS ts_ns,
           CAST(round(CAST(dur_txt AS DECIMAL(38, 9)) * 1000) AS BIGINT) AS dur_ns
    FROM _hs_stage WHERE skip IS NULL
)
"""


@dataclass
class ParsedSlice:
    """One slice's events as a Parquet file (all `events` columns but run_id and rank), and what
    was not an event. The file is the caller's to read and delete."""

    events: Path
    skipped: dict[str, int] = field(default_factory=dict)
    threads: dict[str, str] = field(default_factory=dict)


class SliceRejected(Exception):
    """DuckDB refused a slice: a wrong fast cut (the file is retried carefully) or a bad file."""


def parsed_ahead(slices: Iterable[bytes | memoryview], folder: Path) -> Iterator[ParsedSlice]:
    """Yield each slice parsed (see the module docstring). Two threads work ahead of the caller:
    one reads, decompresses and writes slices to files, one parses them; their exceptions are
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
    mem = duckdb.connect(config={"memory_limit": PARSER_MEMORY_LIMIT, "temp_directory": str(folder)})
    try:
        base = 0
        for i, path in enumerate(paths):
            try:
                parsed, n = _parse(mem, path, folder / f"events{i}.parquet", base)
            except duckdb.Error as e:
                raise SliceRejected(_first_line(e)) from None
            finally:
                path.unlink(missing_ok=True)
            base += n
            yield parsed
    finally:
        mem.close()


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


def _parse(mem: duckdb.DuckDBPyConnection, path: Path, events: Path, base: int) -> tuple[ParsedSlice, int]:
    mem.execute(STAGE_SQL, [str(path)])
    # Parquet, not Python objects, carries the rows to the store connection: rows handed over
    # as numpy object arrays stayed in the store's memory until COMMIT. (COPY takes no
    # parameters: `base` is our own integer.)
    mapped = EVENTS_SQL.replace("$base", str(int(base)))
    mem.execute(f"COPY ({mapped}) TO '{events}' (FORMAT parquet, COMPRESSION snappy)")
    out = ParsedSlice(events)
    n = 0
    for reason, count in mem.execute("SELECT skip, count(*) FROM _hs_stage GROUP BY skip").fetchall():
        n += count
        if reason is not None:
            out.skipped[reason] = count
    for kind, pid, tid, label in mem.execute(
        "SELECT name, pid, tid, args.name FROM _hs_stage "
        "WHERE ph = 'M' AND name IN ('process_name', 'thread_name') AND args.name IS NOT NULL LIMIT 10000"
    ).fetchall():
        out.threads[f"{pid}" if kind == "process_name" else f"{pid}/{tid}"] = label
    return out, n


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
