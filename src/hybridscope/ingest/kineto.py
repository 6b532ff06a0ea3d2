"""Kineto (PyTorch profiler) Chrome-trace JSON -> one rank of a run: `events`, `runs`, `run_ranks`.

Contract (see ingest/__init__.py for the transaction around it):
- Plain or gzip, any size, bounded memory: the `traceEvents` array is read in slices of whole
  events (`_jsonchunks`), each parsed by DuckDB's JSON reader and mapped to `events` columns in
  SQL by a worker thread with its own in-memory DuckDB (`_kineto_parse`), while this thread
  inserts the previous slice's columns into the store.
- Time: Chrome-trace `ts`/`dur` are microseconds whatever `displayTimeUnit` says (that key only
  tells a viewer how to DISPLAY time; HTA reads `ts` as µs too). Kineto's "ns resolution" writes
  µs with three decimals. The JSON reader parses the number text straight into DECIMAL(38, 3)
  (never a double) and ts_ns = that * 1000: exact, and only sub-ns digits are rounded (half away
  from zero). `baseTimeNanoseconds` (epoch offset of the
  steady clock) is kept in run_ranks.base_time_ns; ts_ns stays on the trace's own clock.
- Events are the complete ('X') events of known categories (_kineto_parse.CATEGORIES); the rest
  (metadata 'M', flows 's'/'f', instants, counters, 'Trace' spans with string pids, CUPTI
  overhead, non-CUDA accelerators such as MTIA) is counted in runs.notes, never guessed.
- Rank and world size come from `distributedInfo` (else rank 0, world 1; `--rank` overrides).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from hybridscope.errors import BadInput
from hybridscope.ingest._common import (
    MAX_RANK,
    ImportContext,
    ImportResult,
    RetryFile,
    checked_int,
    settings,
    temp_folder,
)
from hybridscope.ingest._jsonchunks import EventSlices
from hybridscope.ingest._kineto_parse import SliceRejected, parsed_ahead
from hybridscope.store.runs import finish_rank, insert_run, insert_run_rank, to_json

SOURCE = "kineto"
PROGRESS_MIN_BYTES = 8 << 20  # below this an import is too quick for a bar to help
# DuckDB threads of the store connection while it inserts the parsed slices: the parser threads
# keep the cores busy meanwhile (5M synthetic on 2 cores: load 6.1-6.6 s at 1, 6.5-7.0 s at 2 and
# ~10 MiB more). Attribution, after, runs with the connection's own count.
STORE_THREADS = 1


def import_file(con: duckdb.DuckDBPyConnection, path: Path, *, content_hash: str,
                ctx: ImportContext) -> ImportResult:
    """One Kineto file -> one rank (see the module docstring), inside the caller's transaction."""
    try:
        loaded = _load_events(con, path, ctx)
    except SliceRejected as e:  # DuckDB aborted the transaction: retry in a fresh one, or give up
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
    with ctx.reporting(path.name, size, "bytes", worth_it=size >= PROGRESS_MIN_BYTES) as advance:
        slices = EventSlices(path, careful=ctx.careful, on_progress=advance)
        skipped: dict[str, int] = {}
        threads: dict[str, str] = {}
        where = None
        base = 0  # event ids count the trace's records, skipped ones included
        with temp_folder() as tmp, settings(con, {"threads": STORE_THREADS}):
            for part in parsed_ahead(slices, Path(tmp)):
                if where is None:
                    where = _claim(con, path, slices.head_meta, ctx)
                _insert(con, part.events, where, base)
                base += part.n_rows
                for reason, n in part.skipped.items():
                    skipped[reason] = skipped.get(reason, 0) + n
                threads.update(part.threads)
    if where is None:  # no events at all
        where = _claim(con, path, slices.meta, ctx)
    return slices.meta, skipped, threads, where


def _insert(con, slice_events, where: tuple[int, int], base: int) -> None:
    """Append one parsed slice (an Arrow table, read by DuckDB's replacement scan of this frame's
    `slice_events`: registering it inside the transaction would keep every slice until COMMIT)."""
    con.execute("INSERT INTO events BY NAME SELECT $run AS run_id, $rank AS rank,"
                " * REPLACE ($base + event_id AS event_id), duration_ns / 1000.0 AS duration_us FROM slice_events",
                {"run": where[0], "rank": where[1], "base": base})


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
    trace_rank = checked_int(path, "distributedInfo.rank", dist.get("rank", 0), 0, MAX_RANK)
    world = checked_int(path, "distributedInfo.world_size", dist.get("world_size", 1), 1, MAX_RANK + 1)
    base = meta.get("baseTimeNanoseconds")
    base = checked_int(path, "baseTimeNanoseconds", base, 0, 2**63 - 1) if base is not None else None
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
