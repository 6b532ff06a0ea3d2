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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridscope.errors import BadInput
from hybridscope.ingest._common import MAX_DURATION_NS, MAX_TS_NS, ImportContext, ImportResult
from hybridscope.ingest._sqlite import EventWriter, SqliteFile, lookup_table, nn
from hybridscope.store.runs import finish_rank, insert_run, insert_run_rank

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
        out = EventWriter(con, run_id, rank, path)
        with out.progress(ctx, rep.total_rows(), path.name):
            write_events(rep, out)
        insert_run_rank(con, run_id, rank, path=path, content_hash=content_hash, host=rep.host,
                        device_name=rep.device_name, versions=rep.versions, distributed_info=None,
                        base_time_ns=rep.base_time_ns, n_events=out.n, t_start_ns=out.t_start, t_end_ns=out.t_end)
        finish_rank(con, run_id, rank, {"format": FORMAT, "events": rep.counts, "skipped": rep.skipped,
                                        **rep.notes})
    finally:
        rep.sq.close()
    return ImportResult(str(path), FORMAT, run_id, rank, out.n, skipped=dict(rep.skipped),
                        notes=_summary_notes(rep.notes))


def _summary_notes(notes: dict) -> tuple[str, ...]:
    """The notes as lines for the import summary (runs.notes keeps them structured)."""
    lines = [notes[k] for k in ("no_kernels", "clock", "cuda_graphs", "correlation") if k in notes]
    if "missing_tables" in notes:
        lines.append("not in the export (nothing of that kind recorded): " + ", ".join(notes["missing_tables"]))
    for table, cols in notes.get("missing_columns", {}).items():
        lines.append(f"older export: {table} has no {', '.join(cols)}")
    for table, why in notes.get("unreadable_tables", {}).items():
        lines.append(f"{table} not read: {why}")
    return tuple(lines)


def write_events(rep: NsysReport, out: EventWriter) -> None:
    """Every table the export has, through `out`; counts, skips and notes land in `rep`."""
    pids = _processes(rep)
    # Per-process correlation ids need the process of every row that carries one.
    ids_known = all(g in rep.sq.columns(t) for t, g in _CORRELATED if "correlationId" in rep.sq.columns(t))
    rep.multi_process = len(pids) > 1 and ids_known
    if rep.multi_process:
        rep.notes["correlation"] = (
            f"{len(pids)} processes in one report: correlation = pid * 2**32 + CUPTI correlationId"
        )
    elif len(pids) > 1:
        rep.notes["correlation"] = (
            f"{len(pids)} processes in one report, but a table lacks globalPid/globalTid: CUPTI correlation "
            "ids kept as recorded, so two processes' launches may share one"
        )
    for reader in (_kernels, _memcpy, _memset, _graphs, _runtime, _syncs, _nvtx):
        reader(rep, out)


# --- tables: integer columns come from SQLite in chunks, DuckDB maps them to events ------------


def _kernels(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(KERNEL)
    if not cols:
        return
    name_col = next((c for c in KERNEL_NAME_COLUMNS if c in cols), None)
    if name_col is None:
        raise BadInput(f"{rep.sq.path}: {KERNEL} has no kernel name column ({', '.join(KERNEL_NAME_COLUMNS)})")
    missing = [c for c in ("gridX", "blockX", "registersPerThread", "graphNodeId", "graphId") if c not in cols]
    if missing:
        rep.notes.setdefault("missing_columns", {})[KERNEL] = missing
    ints = _gpu_ints(rep, cols) | {"nid": name_col}
    ints |= {c: c for c in ("gridX", "gridY", "gridZ", "blockX", "blockY", "blockZ", "registersPerThread",
                            "staticSharedMemory", "dynamicSharedMemory", "graphNodeId", "graphId") if c in cols}
    args = _json_args([
        ("grid", "[c.gridX, c.gridY, c.gridZ]", ("gridX", "gridY", "gridZ")),
        ("block", "[c.blockX, c.blockY, c.blockZ]", ("blockX", "blockY", "blockZ")),
        ("registers", "c.registersPerThread", ("registersPerThread",)),
        ("shared_mem", "c.staticSharedMemory::HUGEINT + c.dynamicSharedMemory", ("staticSharedMemory", "dynamicSharedMemory")),
        ("graph_node", nn("graphNodeId"), ("graphNodeId",)),
    ], ints)
    # graph_id: the CUDA graph a kernel was replayed from (Kineto's "graph id"); the node id
    # alone marks graph kernels in exports older than the graphId column.
    graph = next((f"nullif({nn(c)}, 0)" for c in ("graphId", "graphNodeId") if c in ints), "NULL")
    keys, values = _strings(rep, KERNEL, name_col)
    with lookup_table(out.con, keys, name=values):
        _read(rep, out, KERNEL, ints, {
            **_gpu_select("cuda", "kernel"), "name": "coalesce(l.name, '<unknown kernel>')",
            "graph_id": graph, "args": args}, "LEFT JOIN _hs_lookup l ON l.id = c.nid")


def _memcpy(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(MEMCPY)
    if cols:
        src, dst = _c(cols, "srcKind"), _c(cols, "dstKind")
        code = f"(coalesce(copyKind, 0) * 65536 + coalesce({src}, 0) * 256 + coalesce({dst}, 0))"
        _coded(rep, out, MEMCPY, cols, code, "memcpy", _memcpy_name)


def _memset(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(MEMSET)
    if cols:
        kind = "coalesce(memKind, 0)" if "memKind" in cols else "3"  # old exports: device memory
        _coded(rep, out, MEMSET, cols, kind, "memset", lambda k: f"Memset ({_label(MEM_KINDS, k)})")


def _syncs(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(SYNC)
    if cols:
        stype = next((c for c in ("syncType", "deprecatedSyncType") if c in cols), "0")
        _coded(rep, out, SYNC, cols, f"coalesce({stype}, 0)", "sync", lambda k: _label(SYNC_NAMES, k), "cuda_api")


def _coded(rep: NsysReport, out: EventWriter, table: str, cols: list[str], code: str, kind: str, name_of,
           source: str = "cuda") -> None:
    """A GPU table whose events are named after a small integer code (copy kind, sync type)."""
    codes = sorted(r[0] for r in rep.sq.query_rows(f"SELECT DISTINCT {code} FROM {table}"))
    names = np.array([name_of(int(k)) for k in codes], dtype=object)
    ints = _gpu_ints(rep, cols) | {"code": code} | {c: c for c in ("bytes",) if c in cols}
    select = {**_gpu_select(source, kind), "name": "l.name",
              "args": _json_args([("bytes", "c.bytes", ("bytes",))], ints)}
    with lookup_table(out.con, np.array(codes, dtype=np.int64), name=names):
        _read(rep, out, table, ints, select, "LEFT JOIN _hs_lookup l ON l.id = c.code")


def _graphs(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(GRAPH)
    if not cols:
        return
    ints = _gpu_ints(rep, cols) | {"graph": _c(cols, "graphId")}
    name = f"'CUDA graph ' || coalesce({nn('graph')}::VARCHAR, '?')"
    _read(rep, out, GRAPH, ints, {**_gpu_select("cuda", "other"), "name": name, "graph_id": nn("graph")})
    if rep.counts.get(GRAPH):
        rep.notes["cuda_graphs"] = (
            f"{rep.counts[GRAPH]} CUDA graph executions were traced whole: their kernels are not in the "
            "report; profile with `nsys profile --cuda-graph-trace=node` to see them"
        )


def _runtime(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(RUNTIME)
    if not cols:
        return
    if "nameId" not in cols:
        rep.notes.setdefault("unreadable_tables", {})[RUNTIME] = "no nameId column"
        return
    keys, raw = _strings(rep, RUNTIME, "nameId")
    names = np.array([_api_name(v) for v in raw], dtype=object)  # once per distinct name
    kinds = np.array([_api_kind(v) for v in names], dtype=object)
    ints = {"ts": "start", "dur": '"end" - start', "corr": _corr(rep, cols, "globalTid"),
            "pid": _pid(cols, "globalTid"), "tid": _tid(cols), "nid": "nameId", "ret": _c(cols, "returnValue")}
    select = {"source": "'cuda_api'", "kind": "coalesce(l.kind, 'runtime')",
              "name": "coalesce(l.name, '<unknown API>')", "pid": nn("pid"), "tid": nn("tid"),
              "correlation": nn("corr"), "args": f"CASE WHEN {nn('ret')} != 0 THEN json_object('return', c.ret) END"}
    with lookup_table(out.con, keys, name=names, kind=kinds):
        _read(rep, out, RUNTIME, ints, select, "LEFT JOIN _hs_lookup l ON l.id = c.nid")


def _nvtx(rep: NsysReport, out: EventWriter) -> None:
    cols = rep.sq.columns(NVTX)
    if not cols:
        return
    is_range = f"eventType IN ({NVTX_PUSH_POP}, {NVTX_START_END})" if "eventType" in cols else "1"
    ints = {"ts": "start", "dur": '"end" - start', "pid": _pid(cols, "globalTid"), "tid": _tid(cols),
            "textId": _c(cols, "textId"), "domainId": _c(cols, "domainId")}
    keys, values = _strings(rep, NVTX, "textId") if "textId" in cols else (np.empty(0, np.int64), np.empty(0, object))
    texts = {"text": _c(cols, "text")}
    name, args = _nvtx_name_args("c.text", "domainId" in cols)
    with lookup_table(out.con, keys, name=values):
        _read(rep, out, NVTX, ints, {"source": "'annotation'", "kind": "'user_annotation'", "name": name,
                                     "pid": nn("pid"), "tid": nn("tid"), "args": args},
              "LEFT JOIN _hs_lookup l ON l.id = c.textId", texts, is_range)
    if "eventType" in cols:
        marks = rep.sq.count(NVTX, f"WHERE eventType = {NVTX_MARK}")
        if marks:
            rep.skipped["nvtx_marks"] = marks
    open_ranges = rep.sq.count(NVTX, f"WHERE {is_range} AND NOT coalesce({_valid_time()}, 0)")
    if open_ranges:
        rep.skipped["nvtx_unterminated_ranges"] = open_ranges


def _nvtx_name_args(text: str, has_domain: bool) -> tuple[str, str]:
    """DuckDB expressions for an NVTX range's name and args.

    vLLM's and SGLang's layerwise NVTX hooks (PytHooks) push str(dict) per module call:
    "{'Module': 'model.layers.3.mixer', 'TrainableParams': ..., 'Inputs': [...], ...}". The name
    becomes the module path (what a Kineto record_function range of the module would be called)
    and the whole text is kept in args.nvtx (shapes, parameters). Registered strings (textId)
    come from StringIds through the lookup `l`.
    """
    hook = f"starts_with({text}, '{{''Module'': ''')"
    name = (f"CASE WHEN {hook} THEN regexp_extract({text}, '^\\{{''Module'': ''([^'']*)''', 1) "
            f"ELSE coalesce({text}, l.name, '<unnamed NVTX range>') END")
    domain = "c.domainId > 0" if has_domain else "FALSE"
    args = (f"CASE WHEN {hook} AND {domain} THEN json_object('nvtx', {text}, 'nvtx_domain', c.domainId) "
            f"WHEN {hook} THEN json_object('nvtx', {text}) "
            f"WHEN {domain} THEN json_object('nvtx_domain', c.domainId) END")
    return name, args


# --- helpers ---------------------------------------------------------------------------------


def _read(rep: NsysReport, out: EventWriter, table: str, ints: dict[str, str], select: dict[str, str],
          joins: str = "", texts: dict[str, str] | None = None, where: str = "1") -> None:
    """Stream `table`'s rows that have a valid time through `out`; count them and those dropped."""
    if not {"start", "end"} <= set(rep.sq.columns(table)):
        rep.notes.setdefault("unreadable_tables", {})[table] = "no start/end columns"
        return
    n = 0
    for frame in rep.sq.column_chunks(table, ints, texts, f"({where}) AND {_valid_time()}"):
        n += out.write(frame, select, joins)
    rep.counts[table] = n
    if table != NVTX:  # NVTX rows that are not ranges are counted by _nvtx
        bad = rep.sq.count(table) - n
        if bad:
            rep.skipped[f"{table}: start/end missing, not integers, reversed or out of range"] = bad


def _gpu_ints(rep: NsysReport, cols: list[str]) -> dict[str, str]:
    """The SQLite columns every GPU activity table shares (NULL where a vintage lacks one)."""
    return {"ts": "start", "dur": '"end" - start', "corr": _corr(rep, cols, "globalPid"),
            "pid": _pid(cols, "globalPid"), "device": _c(cols, "deviceId"), "stream": _c(cols, "streamId")}


def _gpu_select(source: str, kind: str) -> dict[str, str]:
    return {"source": f"'{source}'", "kind": f"'{kind}'", "device": nn("device"), "stream": nn("stream"),
            "pid": nn("pid"), "correlation": nn("corr")}


def _json_args(fields: list[tuple[str, str, tuple[str, ...]]], ints: dict[str, str]) -> str:
    """DuckDB json_object(...) over the fields whose chunk columns were read, else NULL."""
    parts = [f"'{key}', {expr}" for key, expr, need in fields if all(c in ints for c in need)]
    return f"json_object({', '.join(parts)})" if parts else "NULL"


def _c(cols: list[str], name: str) -> str:
    """The column when the table has it, else NULL (columns come and go across nsys versions)."""
    return name if name in cols else "NULL"


def _valid_time() -> str:
    """Rows with integer start/end, end >= start, within the limits of ingest._common."""
    return (f"typeof(start) = 'integer' AND typeof(\"end\") = 'integer' AND start BETWEEN {-MAX_TS_NS} AND "
            f"{MAX_TS_NS} AND \"end\" BETWEEN start AND start + {MAX_DURATION_NS}")


def _pid(cols: list[str], gcol: str) -> str:
    return PID.format(g=gcol) if gcol in cols else "NULL"


def _tid(cols: list[str]) -> str:
    return TID.format(g="globalTid") if "globalTid" in cols else "NULL"


def _corr(rep: NsysReport, cols: list[str], gcol: str) -> str:
    if "correlationId" not in cols:
        return "NULL"
    if rep.multi_process and gcol in cols:
        return f"({PID.format(g=gcol)} << 32) + correlationId"
    return "correlationId"


def _strings(rep: NsysReport, table: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    """StringIds rows referenced by `table.col` (only those: StringIds can be large)."""
    return rep.sq.lookup(f"SELECT id, value FROM StringIds WHERE id IN (SELECT DISTINCT {col} FROM {table})")


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


_CORRELATED = ((KERNEL, "globalPid"), (MEMCPY, "globalPid"), (MEMSET, "globalPid"), (GRAPH, "globalPid"),
               (SYNC, "globalPid"), (RUNTIME, "globalTid"))


def _processes(rep: NsysReport) -> set[int]:
    parts = [f"SELECT DISTINCT {PID.format(g=g)} FROM {t}" for t, g in _CORRELATED if g in rep.sq.columns(t)]
    if not parts:
        return set()
    return {r[0] for r in rep.sq.query_rows(" UNION ".join(parts)) if r[0] is not None}


def _text(value) -> str | None:
    """A non-empty text cell, else None (a damaged export can hold a BLOB or a number anywhere)."""
    return value if isinstance(value, str) and value else None


def _read_target_info(rep: NsysReport) -> None:
    sq = rep.sq
    if "utcEpochNs" in sq.columns(START_TIME):
        rows = sq.query_rows(f"SELECT utcEpochNs FROM {START_TIME} LIMIT 1")
        epoch = rows[0][0] if rows else None
        rep.base_time_ns = epoch if isinstance(epoch, int) and 0 <= epoch < 2**63 else None
    if rep.base_time_ns is None:
        rep.notes["clock"] = f"no {START_TIME}.utcEpochNs: times are session-relative, epoch unknown"
    env = sq.columns("TARGET_INFO_SYSTEM_ENV")
    if "name" in env and "value" in env:
        rows = sq.query_rows("SELECT value FROM TARGET_INFO_SYSTEM_ENV WHERE name = 'Hostname' LIMIT 1")
        rep.host = _text(rows[0][0]) if rows else None
    if "name" in sq.columns("TARGET_INFO_GPU"):
        names = sorted({r[0] for r in sq.query_rows("SELECT name FROM TARGET_INFO_GPU") if _text(r[0])})
        rep.device_name = ", ".join(names) or None
    meta = sq.columns("META_DATA_EXPORT")
    if "name" in meta and "value" in meta:
        rows = sq.query_rows("SELECT value FROM META_DATA_EXPORT WHERE name = 'EXPORT_SCHEMA_VERSION'")
        if rows and _text(rows[0][0]):
            rep.versions["nsys_export_schema"] = rows[0][0]
