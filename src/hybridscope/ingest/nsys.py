"""Nsight Systems SQLite exports (`nsys export --type sqlite`) -> normalized event columns.

What is read, table by table (NVIDIA's export schema; tables are created lazily and columns come
and go across versions, so each is read only when present and what is missing goes to the notes):

    CUPTI_ACTIVITY_KIND_KERNEL           -> ('cuda', 'kernel'), name via StringIds
                                            (demangledName, else shortName, mangledName, name)
    CUPTI_ACTIVITY_KIND_MEMCPY / MEMSET  -> ('cuda', 'memcpy' / 'memset'), named as Kineto does
    CUPTI_ACTIVITY_KIND_GRAPH_TRACE      -> ('cuda', 'other'): a whole CUDA graph execution
                                            (--cuda-graph-trace=graph hides its kernels)
    CUPTI_ACTIVITY_KIND_RUNTIME          -> ('cuda_api', 'runtime' | 'driver' | 'sync')
    CUPTI_ACTIVITY_KIND_SYNCHRONIZATION  -> ('cuda_api', 'sync')
    NVTX_EVENTS push/pop + start/end     -> ('annotation', 'user_annotation'): the attribution
                                            engine turns them into scopes, as Kineto ranges

Time: nsys timestamps are ns since the session start; they are kept as they are in `ts_ns`
(one clock for the whole file) and `TARGET_INFO_SESSION_START_TIME.utcEpochNs` becomes the rank's
`base_time_ns` (epoch = base_time_ns + ts_ns). `globalTid` is NVIDIA's serialized id:
pid = globalTid / 0x1000000 % 0x1000000, tid = globalTid % 0x1000000 (documented recipe).
A report that holds several processes gets correlation ids made unique per process
(pid * 2**32 + correlationId), since CUPTI numbers them per process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridscope.errors import BadInput
from hybridscope.ingest._common import ImportContext, ImportResult, finish_rank, insert_run, insert_run_rank
from hybridscope.ingest._sqlite import SqliteFile, resolve, write_events

FORMAT = "nsys"
KERNEL = "CUPTI_ACTIVITY_KIND_KERNEL"
RUNTIME = "CUPTI_ACTIVITY_KIND_RUNTIME"
SYNC = "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"
MEMCPY = "CUPTI_ACTIVITY_KIND_MEMCPY"
MEMSET = "CUPTI_ACTIVITY_KIND_MEMSET"
GRAPH = "CUPTI_ACTIVITY_KIND_GRAPH_TRACE"
NVTX = "NVTX_EVENTS"
START_TIME = "TARGET_INFO_SESSION_START_TIME"
EVENT_TABLES = (KERNEL, MEMCPY, MEMSET, GRAPH, RUNTIME, SYNC, NVTX)
# Tables that only an nsys export has; detection wants StringIds plus one of them.
MARKER_TABLES = frozenset({START_TIME, "TARGET_INFO_GPU", "META_DATA_EXPORT", *EVENT_TABLES})

PID = "((({g}) >> 24) & 16777215)"  # == globalTid / 0x1000000 % 0x1000000 for ids >= 0
TID = "(({g}) & 16777215)"
NVTX_PUSH_POP, NVTX_START_END, NVTX_MARK = 59, 60, 34  # ENUM_NSYS_EVENT_TYPE ids
KERNEL_NAME_COLUMNS = ("demangledName", "shortName", "mangledName", "name")
# CUPTI enums (CUpti_ActivityMemcpyKind, CUpti_ActivityMemoryKind, sync types), Kineto's labels.
COPY_KINDS = ["Unknown", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH", "PtoP"]
MEM_KINDS = ["Unknown", "Pageable", "Pinned", "Device", "Array", "Managed", "Device Static",
             "Managed Static"]
SYNC_NAMES = ["Unknown Sync", "Event Sync", "Stream Wait Event", "Stream Sync", "Context Sync"]


def is_nsys(tables: set[str]) -> bool:
    """Whether an SQLite file's table names are those of an Nsight Systems export."""
    return "StringIds" in tables and bool(tables & MARKER_TABLES)


@dataclass
class NsysReport:
    """An open export and what reading it found: counts, skips, notes (for runs.notes)."""

    sq: SqliteFile
    base_time_ns: int | None = None
    host: str | None = None
    device_name: str | None = None
    versions: dict = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # events read, per table
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    multi_process: bool = False

    def total_rows(self) -> int:
        """Rows of the event tables present (for a progress bar)."""
        return sum(self.sq.count(t) for t in EVENT_TABLES)


def open_report(path: Path) -> NsysReport:
    """Open and check an export; BadInput when it is not one, or is damaged."""
    sq = SqliteFile(path, "an Nsight Systems export")
    if not is_nsys(sq.tables):
        sq.close()
        raise BadInput(
            f"{path} is an SQLite file but not an Nsight Systems export (no StringIds or CUPTI/NVTX "
            "tables); export one with `nsys export --type sqlite REPORT.nsys-rep`"
        )
    rep = NsysReport(sq)
    _read_target_info(rep)
    missing = [t for t in EVENT_TABLES if t not in sq.tables]
    if missing:
        rep.notes["missing_tables"] = missing
    if KERNEL not in sq.tables:
        rep.notes["no_kernels"] = (
            "the report has no CUPTI_ACTIVITY_KIND_KERNEL table: CUDA was not traced "
            "(nsys profile -t cuda) or no kernel ran"
        )
    return rep


def import_file(con, path: Path, *, content_hash: str, ctx: ImportContext) -> ImportResult:
    """Write one export as one rank of a new run (rank 0 unless `ctx.rank`), in the caller's
    transaction. What the file lacks or what was dropped is in runs.notes and the result."""
    path = Path(path)
    rep = open_report(path)
    try:
        rank = ctx.rank if ctx.rank is not None else 0
        run_id, new = ctx.run_for(con, None, rank)
        if new:
            insert_run(con, run_id, source=FORMAT, label=ctx.label or path.stem, host=rep.host, rank=rank,
                       world_size=1, device_name=rep.device_name, versions=rep.versions, distributed_info=None)
        n, t0, t1 = write_events(con, run_id, rank, iter_events(rep), total=rep.total_rows(),
                                 progress=ctx.progress, label=path.name)
        insert_run_rank(con, run_id, rank, path=path, content_hash=content_hash, host=rep.host,
                        device_name=rep.device_name, versions=rep.versions, distributed_info=None,
                        base_time_ns=rep.base_time_ns, n_events=n, t_start_ns=t0, t_end_ns=t1)
        finish_rank(con, run_id, rank, {"format": FORMAT, "events": rep.counts, "skipped": rep.skipped,
                                        **rep.notes})
    finally:
        rep.sq.close()
    return ImportResult(str(path), FORMAT, run_id, rank, n, skipped=dict(rep.skipped))


def iter_events(rep: NsysReport) -> Iterator[dict[str, np.ndarray]]:
    """Normalized event columns in chunks: source, kind, name, device, stream, pid, tid, ts_ns,
    duration_ns, correlation, graph_id, args (JSON text or None)."""
    pids = _processes(rep)
    rep.multi_process = len(pids) > 1
    if rep.multi_process:
        rep.notes["correlation"] = (
            f"{len(pids)} processes in one report: correlation = pid * 2**32 + CUPTI correlationId"
        )
    for reader in (_kernels, _memcpy, _memset, _graphs, _runtime, _syncs, _nvtx):
        yield from reader(rep)


# --- tables ----------------------------------------------------------------------------------


def _kernels(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(KERNEL)
    if not cols:
        return
    name_col = next((c for c in KERNEL_NAME_COLUMNS if c in cols), None)
    if name_col is None:
        raise BadInput(f"{rep.sq.path}: {KERNEL} has no kernel name column ({', '.join(KERNEL_NAME_COLUMNS)})")
    # graph_id: the CUDA graph a kernel was replayed from (Kineto's "graph id"); the node id
    # alone marks graph kernels in exports older than the graphId column.
    graph = "nullif(graphId, 0)" if "graphId" in cols else "nullif(graphNodeId, 0)" if "graphNodeId" in cols else "NULL"
    extra = [c for c in ("gridX", "blockX", "registersPerThread", "graphNodeId", "graphId") if c not in cols]
    if extra:
        rep.notes.setdefault("missing_columns", {})[KERNEL] = extra
    args = _json_object(cols, [
        ("grid", "json_array(gridX, gridY, gridZ)", ("gridX", "gridY", "gridZ")),
        ("block", "json_array(blockX, blockY, blockZ)", ("blockX", "blockY", "blockZ")),
        ("registers", "registersPerThread", ("registersPerThread",)),
        ("shared_mem", "staticSharedMemory + dynamicSharedMemory", ("staticSharedMemory", "dynamicSharedMemory")),
        ("graph_node", "graphNodeId", ("graphNodeId",)),
    ])
    keys, values = _strings(rep, KERNEL, name_col)
    sql = (f"{_gpu_head(rep, cols)}, coalesce({name_col}, -1) AS nid, {graph} AS graph, {args} AS args "
           f"FROM {KERNEL} WHERE {_valid_time()}")
    yield from _timed(rep, KERNEL, sql, lambda c: _base(c, "cuda", "kernel", resolve(keys, values, c["nid"], "<unknown kernel>")[0]))


def _memcpy(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(MEMCPY)
    if not cols:
        return
    src = "srcKind" if "srcKind" in cols else "0"
    dst = "dstKind" if "dstKind" in cols else "0"
    graph = "graphNodeId" if "graphNodeId" in cols else "NULL"
    code = f"(coalesce(copyKind, 0) * 65536 + coalesce({src}, 0) * 256 + coalesce({dst}, 0))"
    sql = (f"{_gpu_head(rep, cols)}, {code} AS code, {graph} AS graph, "
           f"{_json_object(cols, [('bytes', 'bytes', ('bytes',))])} AS args FROM {MEMCPY} WHERE {_valid_time()}")
    yield from _timed(rep, MEMCPY, sql, lambda c: _base(c, "cuda", "memcpy", _by_code(c["code"], _memcpy_name)))


def _memset(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(MEMSET)
    if not cols:
        return
    kind = "coalesce(memKind, 0)" if "memKind" in cols else "3"  # old exports: device memory
    graph = "graphNodeId" if "graphNodeId" in cols else "NULL"
    sql = (f"{_gpu_head(rep, cols)}, {kind} AS code, {graph} AS graph, "
           f"{_json_object(cols, [('bytes', 'bytes', ('bytes',))])} AS args FROM {MEMSET} WHERE {_valid_time()}")
    name = lambda k: f"Memset ({_label(MEM_KINDS, k)})"
    yield from _timed(rep, MEMSET, sql, lambda c: _base(c, "cuda", "memset", _by_code(c["code"], name)))


def _graphs(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(GRAPH)
    if not cols:
        return
    sql = (f"{_gpu_head(rep, cols)}, coalesce(graphId, -1) AS code, graphId AS graph, NULL AS args "
           f"FROM {GRAPH} WHERE {_valid_time()}")
    yield from _timed(rep, GRAPH, sql, lambda c: _base(c, "cuda", "other", _by_code(c["code"], lambda g: f"CUDA graph {g}")))
    if rep.counts.get(GRAPH):
        rep.notes["cuda_graphs"] = (
            f"{rep.counts[GRAPH]} CUDA graph executions were traced whole: their kernels are not in the "
            "report; profile with `nsys profile --cuda-graph-trace=node` to see them"
        )


def _runtime(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(RUNTIME)
    if not cols:
        return
    keys, values = _strings(rep, RUNTIME, "nameId")
    names = np.array([_api_name(v) for v in values], dtype=object)  # distinct names only
    kinds = np.array([_api_kind(v) for v in names], dtype=object)
    ret = "CASE WHEN returnValue != 0 THEN json_object('return', returnValue) END" if "returnValue" in cols else "NULL"
    sql = (f"SELECT start, \"end\" - start AS dur, NULL AS deviceId, NULL AS streamId, "
           f"{_corr(rep, cols, 'globalTid')}, {_pid(cols, 'globalTid')} AS pid, {_tid(cols)} AS tid, "
           f"coalesce(nameId, -1) AS nid, NULL AS graph, {ret} AS args FROM {RUNTIME} WHERE {_valid_time()}")

    def build(c):
        out = _base(c, "cuda_api", "runtime", resolve(keys, names, c["nid"], "<unknown API>")[0])
        out["kind"] = resolve(keys, kinds, c["nid"], "runtime")[0]
        out["tid"] = c["tid"]
        return out

    yield from _timed(rep, RUNTIME, sql, build)


def _syncs(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(SYNC)
    if not cols:
        return
    stype = "syncType" if "syncType" in cols else "deprecatedSyncType" if "deprecatedSyncType" in cols else "0"
    sql = (f"{_gpu_head(rep, cols)}, coalesce({stype}, 0) AS code, NULL AS graph, NULL AS args "
           f"FROM {SYNC} WHERE {_valid_time()}")
    yield from _timed(rep, SYNC, sql, lambda c: _base(c, "cuda_api", "sync", _by_code(c["code"], lambda k: _label(SYNC_NAMES, k))))


def _nvtx(rep: NsysReport) -> Iterator[dict]:
    cols = rep.sq.columns(NVTX)
    if not cols:
        return
    is_range = f"eventType IN ({NVTX_PUSH_POP}, {NVTX_START_END})" if "eventType" in cols else "1"
    text = "text" if "text" in cols else "NULL"
    tid_col = "textId" if "textId" in cols else "NULL"
    keys, values = _strings(rep, NVTX, "textId") if "textId" in cols else (np.empty(0, np.int64), np.empty(0, object))
    name, args = _nvtx_name_args(text, "domainId" in cols)
    sql = (f"SELECT start, \"end\" - start AS dur, NULL AS deviceId, NULL AS streamId, NULL AS corr, "
           f"{_pid(cols, 'globalTid')} AS pid, {_tid(cols)} AS tid, {name} AS text, coalesce({tid_col}, -1) AS nid, "
           f"NULL AS graph, {args} AS args FROM {NVTX} WHERE {is_range} AND {_valid_time()}")

    def build(c):
        names = c["text"].astype(object)
        unnamed = np.equal(names, None)
        if unnamed.any():
            names[unnamed] = resolve(keys, values, c["nid"][unnamed], "<unnamed NVTX range>")[0]
        out = _base(c, "annotation", "user_annotation", names)
        out["tid"] = c["tid"]
        return out

    yield from _timed(rep, NVTX, sql, build)
    if "eventType" in cols:
        marks = rep.sq.count(NVTX, f"WHERE eventType = {NVTX_MARK}")
        if marks:
            rep.skipped["nvtx_marks"] = marks
    open_ranges = rep.sq.count(NVTX, f"WHERE {is_range} AND NOT coalesce({_valid_time()}, 0)")
    if open_ranges:
        rep.skipped["nvtx_unterminated_ranges"] = open_ranges


def _nvtx_name_args(text: str, has_domain: bool) -> tuple[str, str]:
    """SQL for an NVTX range's name and args.

    vLLM's and SGLang's layerwise NVTX hooks (PytHooks) push str(dict) per module call:
    "{'Module': 'model.layers.3.mixer', 'TrainableParams': ..., 'Inputs': [...], ...}". The name
    becomes the module path (what a Kineto record_function range of the module would be called)
    and the whole text is kept in args.nvtx (shapes, parameters).
    """
    hook = f"{text} LIKE '{{''Module'': ''%'"
    start = len("{'Module': '") + 1
    quote = "''''"  # SQL literal of one single quote
    name = (f"CASE WHEN {hook} THEN substr({text}, {start}, instr(substr({text}, {start}), {quote}) - 1) "
            f"ELSE {text} END")
    if not has_domain:
        return name, f"CASE WHEN {hook} THEN json_object('nvtx', {text}) END"
    return name, (f"CASE WHEN {hook} AND domainId > 0 THEN json_object('nvtx', {text}, 'nvtx_domain', domainId) "
                  f"WHEN {hook} THEN json_object('nvtx', {text}) "
                  f"WHEN domainId > 0 THEN json_object('nvtx_domain', domainId) END")


# --- helpers ---------------------------------------------------------------------------------


def _timed(rep: NsysReport, table: str, sql: str, build) -> Iterator[dict]:
    """Run one table's query, count its rows and the rows dropped for lacking a valid time."""
    if not {"start", "end"} <= set(rep.sq.columns(table)):
        rep.notes.setdefault("unreadable_tables", {})[table] = "no start/end columns"
        return
    n = 0
    for chunk in rep.sq.chunks(sql):
        out = build(chunk)
        n += len(out["ts_ns"])
        yield out
    rep.counts[table] = n
    if table != NVTX:
        bad = rep.sq.count(table) - n
        if bad:
            rep.skipped[f"{table}: no valid start/end"] = bad


def _base(c: dict, source: str, kind: str, names: np.ndarray) -> dict:
    n = len(c["start"])
    return {
        "source": np.full(n, source, dtype=object), "kind": np.full(n, kind, dtype=object), "name": names,
        "device": c["deviceId"], "stream": c["streamId"], "pid": c["pid"],
        "tid": np.full(n, None, dtype=object), "ts_ns": c["start"], "duration_ns": c["dur"],
        "correlation": c["corr"], "graph_id": c["graph"], "args": c["args"],
    }


def _gpu_head(rep: NsysReport, cols: list[str]) -> str:
    """SELECT start, dur, deviceId, streamId, corr, pid: the leading columns of a GPU table."""
    dev, stream = _c(cols, "deviceId"), _c(cols, "streamId")
    return (f'SELECT start, "end" - start AS dur, {dev} AS deviceId, {stream} AS streamId, '
            f"{_corr(rep, cols, 'globalPid')}, {_pid(cols, 'globalPid')} AS pid")


def _c(cols: list[str], name: str) -> str:
    """The column when the table has it, else NULL (columns come and go across nsys versions)."""
    return name if name in cols else "NULL"


def _valid_time() -> str:
    return 'start IS NOT NULL AND "end" IS NOT NULL AND "end" >= start'


def _pid(cols: list[str], gcol: str) -> str:
    return PID.format(g=gcol) if gcol in cols else "NULL"


def _tid(cols: list[str]) -> str:
    return TID.format(g="globalTid") if "globalTid" in cols else "NULL"


def _corr(rep: NsysReport, cols: list[str], gcol: str) -> str:
    if "correlationId" not in cols:
        return "NULL AS corr"
    if rep.multi_process and gcol in cols:
        return f"({PID.format(g=gcol)} << 32) + correlationId AS corr"
    return "correlationId AS corr"


def _json_object(cols: list[str], fields: list[tuple[str, str, tuple[str, ...]]]) -> str:
    """SQLite json_object(...) over the fields whose source columns exist, else NULL."""
    parts = [f"'{key}', {expr}" for key, expr, need in fields if all(c in cols for c in need)]
    return f"json_object({', '.join(parts)})" if parts else "NULL"


def _strings(rep: NsysReport, table: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    """StringIds rows referenced by `table.col` (only those: StringIds can be large)."""
    return rep.sq.lookup(f"SELECT id, value FROM StringIds WHERE id IN (SELECT DISTINCT {col} FROM {table})")


def _by_code(codes: np.ndarray, name_of) -> np.ndarray:
    """name_of(code) per row, calling it once per distinct code."""
    uniq, inverse = np.unique(codes.astype(np.int64), return_inverse=True)
    names = np.empty(len(uniq), dtype=object)
    names[:] = [name_of(int(u)) for u in uniq]
    return names[inverse]


def _label(labels: list[str], k: int) -> str:
    return labels[k] if 0 <= k < len(labels) else f"kind {k}"


def _memcpy_name(code: int) -> str:
    copy, src, dst = code >> 16, (code >> 8) & 255, code & 255
    name = f"Memcpy {_label(COPY_KINDS, copy)}"
    return f"{name} ({_label(MEM_KINDS, src)} -> {_label(MEM_KINDS, dst)})" if src or dst else name


def _api_name(raw: str) -> str:
    """'cudaLaunchKernel_v7000' -> 'cudaLaunchKernel' (the name Kineto gives the same call)."""
    base, sep, ver = raw.rpartition("_v")
    return base if sep and ver.isdigit() else raw


def _api_kind(name: str) -> str:
    if "Synchronize" in name:
        return "sync"
    return "driver" if name.startswith("cu") and not name.startswith("cuda") else "runtime"


def _processes(rep: NsysReport) -> set[int]:
    parts = [f"SELECT DISTINCT {PID.format(g=g)} FROM {t}" for t, g in
             ((KERNEL, "globalPid"), (MEMCPY, "globalPid"), (MEMSET, "globalPid"), (RUNTIME, "globalTid"))
             if g in rep.sq.columns(t)]
    if not parts:
        return set()
    return {r[0] for r in rep.sq.query_rows(" UNION ".join(parts)) if r[0] is not None}


def _read_target_info(rep: NsysReport) -> None:
    sq = rep.sq
    if "utcEpochNs" in sq.columns(START_TIME):
        rows = sq.query_rows(f"SELECT utcEpochNs FROM {START_TIME} LIMIT 1")
        rep.base_time_ns = rows[0][0] if rows else None
    if rep.base_time_ns is None:
        rep.notes["clock"] = f"no {START_TIME}.utcEpochNs: times are session-relative, epoch unknown"
    env = sq.columns("TARGET_INFO_SYSTEM_ENV")
    if "name" in env and "value" in env:
        rows = sq.query_rows("SELECT value FROM TARGET_INFO_SYSTEM_ENV WHERE name = 'Hostname' LIMIT 1")
        rep.host = rows[0][0] if rows else None
    if "name" in sq.columns("TARGET_INFO_GPU"):
        names = sorted({r[0] for r in sq.query_rows("SELECT name FROM TARGET_INFO_GPU") if r[0]})
        rep.device_name = ", ".join(names) or None
    meta = sq.columns("META_DATA_EXPORT")
    if "name" in meta and "value" in meta:
        rows = sq.query_rows("SELECT value FROM META_DATA_EXPORT WHERE name = 'EXPORT_SCHEMA_VERSION'")
        if rows:
            rep.versions["nsys_export_schema"] = rows[0][0]
