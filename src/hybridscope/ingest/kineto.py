"""Kineto (PyTorch profiler) Chrome-trace JSON -> one rank of a run: `events`, `runs`, `run_ranks`.

Contract (see ingest/__init__.py for the transaction around it):
- Plain or gzip, any size, bounded memory: the `traceEvents` array is read in slices of whole
  events (`_jsonchunks`), each parsed by DuckDB's JSON reader into a small staging table and
  mapped to `events` in SQL; a thread prepares the next slice while DuckDB parses this one.
- Time: Chrome-trace `ts`/`dur` are microseconds whatever `displayTimeUnit` says (that key only
  tells a viewer how to DISPLAY time; HTA reads `ts` as µs too). Kineto's "ns resolution" writes
  µs with three decimals. Values are read as text and converted exactly: ts_ns = round(µs * 1000),
  half away from zero (only sub-ns digits are rounded). `baseTimeNanoseconds` (epoch offset of the
  steady clock) is kept in run_ranks.base_time_ns; ts_ns stays on the trace's own clock.
- Events are the complete ('X') events of known categories (CATEGORIES); everything else
  (metadata 'M', flows 's'/'f', instants, counters, 'Trace' spans with string pids, CUPTI
  overhead, non-CUDA accelerators such as MTIA) is counted in runs.notes, never guessed.
- Rank and world size come from `distributedInfo` (else rank 0, world 1; `--rank` overrides).
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

import duckdb

from hybridscope.errors import BadInput
from hybridscope.ingest._common import (
    ImportContext,
    ImportResult,
    RetryFile,
    finish_rank,
    insert_run,
    insert_run_rank,
    to_json,
)
from hybridscope.ingest._jsonchunks import EventSlices

SOURCE = "kineto"

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

INSERT_SQL = f"""
INSERT INTO events (run_id, rank, event_id, source, kind, name, device, stream, pid, tid, ts_ns,
                    duration_ns, duration_us, correlation, external_id, graph_id, args)
SELECT $run, $rank, $base + row, source,
       CASE WHEN source = 'cuda_api' AND regexp_matches(name, '{SYNC_NAME}') THEN 'sync' ELSE kind END,
       coalesce(name, ''),
       CASE WHEN on_gpu THEN coalesce(args.device, TRY_CAST(pid AS BIGINT)) END,
       CASE WHEN on_gpu THEN coalesce(args.stream, TRY_CAST(regexp_extract(tid, '-?[0-9]+') AS BIGINT)) END,
       TRY_CAST(pid AS BIGINT), TRY_CAST(tid AS BIGINT), ts_ns, dur_ns, dur_ns / 1000.0,
       args.correlation, args."External id", args."graph id", {_KEPT_JSON}
FROM (
    SELECT *, rowid AS row, {_category_case(0)} AS source, {_category_case(1)} AS kind,
           source = 'cuda' OR lower(cat) = 'cuda_sync' AS on_gpu,
           CAST(round(CAST(ts_txt AS DECIMAL(38, 9)) * 1000) AS BIGINT) AS ts_ns,
           CAST(round(CAST(dur_txt AS DECIMAL(38, 9)) * 1000) AS BIGINT) AS dur_ns
    FROM _hs_stage WHERE skip IS NULL
)
"""


class _SliceRejected(Exception):
    """DuckDB refused a slice: a wrong fast cut (retried carefully) or a bad file (BadInput)."""


def import_file(con: duckdb.DuckDBPyConnection, path: Path, *, content_hash: str,
                ctx: ImportContext) -> ImportResult:
    """One Kineto file -> one rank (see the module docstring), inside the caller's transaction."""
    try:
        loaded = _load_events(con, path, ctx)
    except _SliceRejected as e:  # DuckDB aborted the transaction: retry in a fresh one, or give up
        if ctx.careful:
            raise BadInput(f"{path}: {e}") from None
        raise RetryFile(str(e)) from None
    return _write_rank(con, path, content_hash, ctx, *loaded)


def _load_events(con, path: Path, ctx: ImportContext):
    """Stream the events into `events`; return (meta, skipped, thread names, (run_id, rank) used).

    The (run_id, rank) the rows get is decided from the keys before traceEvents (where Kineto
    writes distributedInfo); `_write_rank` moves them if the keys after it say otherwise.
    """
    size = path.stat().st_size
    with _progress(path, size, ctx.progress and size >= (8 << 20)) as advance:
        slices = EventSlices(path, careful=ctx.careful, on_progress=advance)
        skipped: dict[str, int] = {}
        threads: dict[str, str] = {}
        base, where = 0, None
        with tempfile.TemporaryDirectory(prefix="hybridscope-") as tmp:
            for slice_path in _written_ahead(slices, Path(tmp)):
                if where is None:
                    where = _claim(con, path, slices.head_meta, ctx)
                try:
                    con.execute(STAGE_SQL, [str(slice_path)])
                    n = con.execute("SELECT count(*) FROM _hs_stage").fetchall()[0][0]
                    con.execute(INSERT_SQL, {"run": where[0], "rank": where[1], "base": base})
                except duckdb.Error as e:
                    raise _SliceRejected(_first_line(e)) from None
                finally:
                    slice_path.unlink(missing_ok=True)
                base += n
                _tally(con, skipped, threads)
        con.execute("DROP TABLE IF EXISTS _hs_stage")
    if where is None:  # no events at all
        where = _claim(con, path, slices.meta, ctx)
    return slices.meta, skipped, threads, where


def _claim(con, path: Path, meta: dict, ctx: ImportContext) -> tuple[int, int]:
    info = _run_info(path, meta, ctx)
    run_id, _ = ctx.run_for(con, info["job_key"], info["rank"])
    return run_id, info["rank"]


def _write_rank(con, path: Path, content_hash: str, ctx: ImportContext, meta: dict,
                skipped: dict[str, int], threads: dict[str, str], provisional: tuple[int, int]) -> ImportResult:
    """The run/run_ranks rows from the trace's top-level keys, once all its events are in."""
    info = _run_info(path, meta, ctx)
    rank = info["rank"]
    run_id, new = ctx.run_for(con, info["job_key"], rank)
    if (run_id, rank) != provisional:  # the rank was only known at the end: move the rows
        con.execute("UPDATE events SET run_id = ?, rank = ? WHERE run_id = ? AND rank = ?",
                    [run_id, rank, *provisional])
    n, n_gpu, t0, t1 = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE source = 'cuda'), min(ts_ns), max(ts_ns + duration_ns) "
        "FROM events WHERE run_id = ? AND rank = ?", [run_id, rank]).fetchall()[0]
    used = [r[0] for r in con.execute(
        "SELECT DISTINCT device FROM events WHERE run_id = ? AND rank = ? AND source = 'cuda' "
        "AND device IS NOT NULL ORDER BY 1", [run_id, rank]).fetchall()]
    device_name = _device_name(meta.get("deviceProperties"), used)
    if new:
        insert_run(con, run_id, source=SOURCE, label=ctx.label or _label(path), host=info["host"],
                   rank=rank, world_size=info["world_size"], device_name=device_name,
                   versions=info["versions"], distributed_info=info["dist"])
    insert_run_rank(con, run_id, rank, path=path.resolve(), content_hash=content_hash, host=info["host"],
                    device_name=device_name, versions=info["versions"], distributed_info=info["dist"],
                    base_time_ns=info["base_time_ns"], n_events=n, t_start_ns=t0, t_end_ns=t1)
    notes = {"file": path.name, "skipped": dict(sorted(skipped.items())),
             "display_time_unit": meta.get("displayTimeUnit"), "threads": threads}
    if not n_gpu:
        notes["no_gpu_events"] = "the trace has no CUDA/HIP GPU events (CPU-only or another accelerator)"
    finish_rank(con, run_id, rank, notes)
    return ImportResult(str(path), SOURCE, run_id, rank, n, skipped, world_size=info["world_size"])


def _run_info(path: Path, meta: dict, ctx: ImportContext) -> dict:
    """Rank, world size, host, versions from the top-level keys; BadInput on wrong types."""
    dist = meta.get("distributedInfo")
    if dist is not None and not isinstance(dist, dict):
        raise BadInput(f"{path}: distributedInfo is not an object")
    dist = dist or {}
    try:
        trace_rank = int(dist.get("rank", 0))
        world = int(dist.get("world_size", 1))
        base = meta.get("baseTimeNanoseconds")
        base = int(base) if base is not None else None
    except (TypeError, ValueError):
        raise BadInput(f"{path}: distributedInfo rank/world_size or baseTimeNanoseconds is not an integer") from None
    rank = ctx.rank if ctx.rank is not None else trace_rank
    world = max(world, rank + 1)
    job = None
    if world > 1 and ctx.rank is None and "rank" in dist:
        job = to_json({k: v for k, v in dist.items() if k != "rank"})
    versions = {name: meta[key] for name, key in (("cuda_runtime", "cuda_runtime_version"),
                ("cuda_driver", "cuda_driver_version"), ("cupti", "cupti_version"),
                ("kineto_schema", "schemaVersion")) if meta.get(key) is not None}
    if dist.get("nccl_version") is not None:
        versions["nccl"] = dist["nccl_version"]
    host = next((meta[k] for k in ("host_name", "hostname", "host") if isinstance(meta.get(k), str)), None)
    return {"rank": rank, "world_size": world, "job_key": job, "dist": dist or None, "host": host,
            "versions": versions or None, "base_time_ns": base}


def _device_name(props, used: list[int]) -> str | None:
    """Names of the devices the GPU events ran on, from deviceProperties ('A, B' when mixed)."""
    if not isinstance(props, list) or not used:
        return None
    names = {p.get("id"): p.get("name") for p in props if isinstance(p, dict)}
    found = sorted({names[d] for d in used if isinstance(names.get(d), str)})
    return ", ".join(found) or None


def _label(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".json", ".pt.trace"):
        name = name.removesuffix(suffix)
    return name


def _tally(con, skipped: dict[str, int], threads: dict[str, str]) -> None:
    for reason, n in con.execute(
        "SELECT skip, count(*) FROM _hs_stage WHERE skip IS NOT NULL GROUP BY skip"
    ).fetchall():
        skipped[reason] = skipped.get(reason, 0) + n
    for kind, pid, tid, label in con.execute(
        "SELECT name, pid, tid, args.name FROM _hs_stage "
        "WHERE ph = 'M' AND name IN ('process_name', 'thread_name') AND args.name IS NOT NULL LIMIT 10000"
    ).fetchall():
        key = f"{pid}" if kind == "process_name" else f"{pid}/{tid}"
        threads[key] = label


def _written_ahead(slices: Iterable[bytes | memoryview], folder: Path) -> Iterator[Path]:
    """Yield the slices written to files by a worker thread that stays up to two slices ahead,
    so that reading, decompressing and cutting overlap with DuckDB's parsing."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def work() -> None:
        try:
            for i, data in enumerate(slices):
                if stop.is_set():
                    return
                p = folder / f"slice{i}.json"
                with open(p, "wb") as f:  # the slice is the inside of the array
                    f.write(b"[")
                    f.write(data)
                    f.write(b"]")
                q.put(p)
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            q.put(e)

    worker = threading.Thread(target=work, name="hybridscope-kineto-reader", daemon=True)
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


def _progress(path: Path, total: int, enabled: bool):
    if not enabled:
        return nullcontext(None)
    from contextlib import contextmanager

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from hybridscope.commands._common import err

    @contextmanager
    def bar():
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TimeRemainingColumn(), console=err, transient=True) as progress:
            task = progress.add_task(f"importing {path.name}", total=total)
            yield lambda done: progress.update(task, completed=done)

    return bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
