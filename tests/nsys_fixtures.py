"""Builders of small Nsight Systems SQLite exports that follow NVIDIA's documented export schema.

The column lists below follow the "SQLite Schema Reference" of the Nsight Systems documentation
(schema 3.28.1 for VINTAGES["2026"]), trimmed to the tables an importer of CUDA traces reads,
and older shapes of the same tables (columns added over the years removed):

    "2026": schema 3.x as documented now: kernel demangledName/shortName/mangledName, graphNodeId
            and graphId, green contexts, NVTX eventId and payload columns, CUDA graph trace table.
    "2022": mid vintage: no mangledName/graphId/greenContextId, no GRAPH_TRACE, no NVTX eventId.
    "2020": oldest: kernel names through demangledName/shortName only, no graphNodeId, NVTX text
            inline only (no textId/domainId), no TARGET_INFO_SESSION_START_TIME, sync types in
            `syncType`.

Every name column of an activity table is an integer id into StringIds, as in real exports.
globalTid/globalPid use NVIDIA's serialization: pid = gtid / 0x1000000 % 0x1000000,
tid = gtid % 0x1000000, with higher bits holding the VM/hardware id (set to 1 here so that a
reader that forgets the modulo gets a wrong pid).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

VM = 1 << 48  # high bits of a serialized GlobalId

_KERNEL_2020 = (
    "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, "
    "streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, demangledName INTEGER NOT NULL, "
    "shortName INTEGER NOT NULL, launchType INTEGER, cacheConfig INTEGER, registersPerThread INTEGER NOT NULL, "
    "gridX INTEGER NOT NULL, gridY INTEGER NOT NULL, gridZ INTEGER NOT NULL, blockX INTEGER NOT NULL, "
    "blockY INTEGER NOT NULL, blockZ INTEGER NOT NULL, staticSharedMemory INTEGER NOT NULL, "
    "dynamicSharedMemory INTEGER NOT NULL, localMemoryPerThread INTEGER NOT NULL, "
    "localMemoryTotal INTEGER NOT NULL, gridId INTEGER NOT NULL, sharedMemoryExecuted INTEGER"
)
_KERNEL_2022 = _KERNEL_2020 + ", graphNodeId INTEGER, sharedMemoryLimitConfig INTEGER"
_KERNEL_2026 = (
    _KERNEL_2022.replace("contextId INTEGER NOT NULL, ", "contextId INTEGER NOT NULL, greenContextId INTEGER, ")
    .replace("shortName INTEGER NOT NULL, ", "shortName INTEGER NOT NULL, mangledName INTEGER, ")
    + ", qmdBulkReleaseDone INTEGER, qmdPreexitDone INTEGER, qmdLastCtaDone INTEGER, graphId INTEGER, "
    "clusterX INTEGER, clusterY INTEGER, clusterZ INTEGER, clusterSchedulingPolicy INTEGER, "
    "maxPotentialClusterSize INTEGER, maxActiveClusters INTEGER, sharedMemoryRequestedPercentage INTEGER, "
    "tensorSizeMinusOneElements TEXT NOT NULL DEFAULT '[]'"
)
_RUNTIME_2020 = ("start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER NOT NULL, globalTid INTEGER, "
                 "correlationId INTEGER, nameId INTEGER NOT NULL, returnValue INTEGER NOT NULL")
_SYNC_2020 = ("start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, "
              "streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, syncType INTEGER NOT NULL, "
              "eventId INTEGER NOT NULL")
_SYNC_2026 = _SYNC_2020.replace("syncType INTEGER NOT NULL", "deprecatedSyncType INTEGER, syncType INTEGER NOT NULL") \
    + ", eventSyncId INTEGER"
_MEMCPY_2020 = ("start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, "
                "streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, bytes INTEGER NOT NULL, "
                "copyKind INTEGER NOT NULL, deprecatedSrcId INTEGER, srcKind INTEGER, dstKind INTEGER, "
                "srcDeviceId INTEGER, srcContextId INTEGER, dstDeviceId INTEGER, dstContextId INTEGER, "
                "migrationCause INTEGER")
_MEMCPY_2026 = _MEMCPY_2020 + ", graphNodeId INTEGER, virtualAddress INTEGER, copyCount INTEGER"
_MEMSET_2020 = ("start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, "
                "streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, value INTEGER NOT NULL, "
                "bytes INTEGER NOT NULL")
_MEMSET_2026 = _MEMSET_2020 + ", graphNodeId INTEGER, memKind INTEGER"
_NVTX_2020 = ("start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, rangeId INTEGER, category INTEGER, "
              "color INTEGER, text TEXT, globalTid INTEGER, endGlobalTid INTEGER")
_NVTX_2022 = _NVTX_2020 + (", textId INTEGER, domainId INTEGER, uint64Value INTEGER, int64Value INTEGER, "
                           "doubleValue REAL, uint32Value INTEGER, int32Value INTEGER, floatValue REAL, "
                           "jsonTextId INTEGER, jsonText TEXT")
_NVTX_2026 = _NVTX_2022 + ", binaryData TEXT, eventId INTEGER NOT NULL PRIMARY KEY"
_GRAPH_2026 = ("start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, "
               "greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, "
               "graphId INTEGER NOT NULL, graphExecId INTEGER NOT NULL")
_COMMON = {
    "StringIds": "id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL",
    "TARGET_INFO_GPU": "vmId INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT, busLocation TEXT, uuid TEXT",
    "TARGET_INFO_SYSTEM_ENV": "globalVid INTEGER, devStateName TEXT NOT NULL, name TEXT NOT NULL, "
                              "nameEnum INTEGER NOT NULL, value TEXT NOT NULL",
    "ENUM_NSYS_EVENT_TYPE": "id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT",
}
_START = "utcEpochNs INTEGER, utcTime TEXT, localTime TEXT, systemClockNs INTEGER"

VINTAGES: dict[str, dict[str, str]] = {
    "2020": {**_COMMON, "CUPTI_ACTIVITY_KIND_KERNEL": _KERNEL_2020, "CUPTI_ACTIVITY_KIND_RUNTIME": _RUNTIME_2020,
             "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION": _SYNC_2020, "CUPTI_ACTIVITY_KIND_MEMCPY": _MEMCPY_2020,
             "CUPTI_ACTIVITY_KIND_MEMSET": _MEMSET_2020, "NVTX_EVENTS": _NVTX_2020},
    "2022": {**_COMMON, "CUPTI_ACTIVITY_KIND_KERNEL": _KERNEL_2022, "CUPTI_ACTIVITY_KIND_RUNTIME": _RUNTIME_2020,
             "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION": _SYNC_2020, "CUPTI_ACTIVITY_KIND_MEMCPY": _MEMCPY_2026,
             "CUPTI_ACTIVITY_KIND_MEMSET": _MEMSET_2026, "NVTX_EVENTS": _NVTX_2022,
             "TARGET_INFO_SESSION_START_TIME": _START, "META_DATA_EXPORT": "name TEXT, value TEXT"},
    "2026": {**_COMMON, "CUPTI_ACTIVITY_KIND_KERNEL": _KERNEL_2026,
             "CUPTI_ACTIVITY_KIND_RUNTIME": _RUNTIME_2020 + ", callchainId INTEGER",
             "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION": _SYNC_2026, "CUPTI_ACTIVITY_KIND_MEMCPY": _MEMCPY_2026,
             "CUPTI_ACTIVITY_KIND_MEMSET": _MEMSET_2026, "NVTX_EVENTS": _NVTX_2026,
             "CUPTI_ACTIVITY_KIND_GRAPH_TRACE": _GRAPH_2026,
             "TARGET_INFO_SESSION_START_TIME": _START + ", sessionStartCntVctNs INTEGER",
             "META_DATA_EXPORT": "name TEXT, value TEXT"},
}
SCHEMA_VERSION = {"2022": "2.7.1", "2026": "3.28.1"}
EVENT_TYPES = [(33, "NvtxCategory"), (34, "NvtxMark"), (39, "NvtxThread"), (59, "NvtxPushPopRange"),
               (60, "NvtxStartEndRange"), (75, "NvtxDomainCreate"), (76, "NvtxDomainDestroy")]


def gtid(pid: int, tid: int) -> int:
    """NVIDIA's serialized global thread id."""
    return VM + pid * 0x1000000 + tid


def gpid(pid: int) -> int:
    return VM + pid * 0x1000000


@dataclass
class Report:
    """What a fixture export holds, in plain Python; `write` lays it out in a vintage's tables.

    kernels: dict(start, end, name, corr, pid, device=0, stream=7, grid=(1,1,1), block=(128,1,1),
             graph_node=None, graph=None, short=None)
    runtime: dict(start, end, name (e.g. 'cudaLaunchKernel_v7000'), corr, pid, tid, ret=0)
    nvtx:    dict(start, end, text, pid, tid, type=59, registered=False, domain=0)
    syncs:   dict(start, end, type, corr, pid, device=0, stream=7)
    memcpy:  dict(start, end, copy, src, dst, bytes, corr, pid, device=0, stream=7)
    memset:  dict(start, end, kind, bytes, corr, pid, device=0, stream=7)
    graphs:  dict(start, end, graph, corr, pid, device=0, stream=7)
    """

    kernels: list[dict] = field(default_factory=list)
    runtime: list[dict] = field(default_factory=list)
    nvtx: list[dict] = field(default_factory=list)
    syncs: list[dict] = field(default_factory=list)
    memcpy: list[dict] = field(default_factory=list)
    memset: list[dict] = field(default_factory=list)
    graphs: list[dict] = field(default_factory=list)
    session_start_ns: int = 1_763_800_000_123_456_789
    host: str = "gpu-node-7"
    gpu: str = "NVIDIA H100 80GB HBM3"


def write(path: Path, rep: Report, vintage: str = "2026", omit: tuple[str, ...] = ()) -> Path:
    """Create the SQLite export at `path`: the tables the vintage has, minus `omit`; like nsys,
    activity/NVTX tables only when they have rows (the kernel table always, for empty reports)."""
    tables = {k: v for k, v in VINTAGES[vintage].items() if k not in omit}
    con = sqlite3.connect(path)
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        return strings.setdefault(text, len(strings) + 1)

    rows: dict[str, list[dict]] = defaultdict(list)
    for k in rep.kernels:
        name = sid(k["name"])
        rows["CUPTI_ACTIVITY_KIND_KERNEL"].append({
            "start": k["start"], "end": k["end"], "deviceId": k.get("device", 0), "contextId": 1,
            "streamId": k.get("stream", 7), "correlationId": k["corr"], "globalPid": gpid(k["pid"]),
            "demangledName": name, "shortName": sid(k.get("short") or k["name"].split("<")[0].split("(")[0]),
            "mangledName": sid("_Z" + k["name"].replace(" ", "")), "registersPerThread": 32,
            "gridX": k.get("grid", (1, 1, 1))[0], "gridY": k.get("grid", (1, 1, 1))[1],
            "gridZ": k.get("grid", (1, 1, 1))[2], "blockX": k.get("block", (128, 1, 1))[0],
            "blockY": k.get("block", (128, 1, 1))[1], "blockZ": k.get("block", (128, 1, 1))[2],
            "staticSharedMemory": 0, "dynamicSharedMemory": 1024, "localMemoryPerThread": 0,
            "localMemoryTotal": 0, "gridId": k["corr"], "graphNodeId": k.get("graph_node"), "graphId": k.get("graph"),
        })
    for r in rep.runtime:
        rows["CUPTI_ACTIVITY_KIND_RUNTIME"].append({
            "start": r["start"], "end": r["end"], "eventClass": 0, "globalTid": gtid(r["pid"], r["tid"]),
            "correlationId": r["corr"], "nameId": sid(r["name"]), "returnValue": r.get("ret", 0)})
    for i, r in enumerate(rep.nvtx):
        text_id = sid(r["text"]) if r.get("registered") else None
        rows["NVTX_EVENTS"].append({
            "start": r["start"], "end": r["end"], "eventType": r.get("type", 59), "globalTid": gtid(r["pid"], r["tid"]),
            "text": None if text_id else r["text"], "textId": text_id, "domainId": r.get("domain", 0), "eventId": i})
    for r in rep.syncs:
        rows["CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"].append(_gpu(r) | {"syncType": r["type"], "eventId": 0})
    for r in rep.memcpy:
        rows["CUPTI_ACTIVITY_KIND_MEMCPY"].append(
            _gpu(r) | {"bytes": r["bytes"], "copyKind": r["copy"], "srcKind": r["src"], "dstKind": r["dst"]})
    for r in rep.memset:
        rows["CUPTI_ACTIVITY_KIND_MEMSET"].append(_gpu(r) | {"bytes": r["bytes"], "value": 0, "memKind": r["kind"]})
    for r in rep.graphs:
        rows["CUPTI_ACTIVITY_KIND_GRAPH_TRACE"].append(_gpu(r) | {"graphId": r["graph"], "graphExecId": r["graph"]})
    rows["StringIds"] = [{"id": i, "value": s} for s, i in strings.items()]
    rows["TARGET_INFO_GPU"] = [{"vmId": 0, "id": 0, "name": rep.gpu, "busLocation": "0000:1b:00.0", "uuid": "GPU-0"}]
    rows["TARGET_INFO_SYSTEM_ENV"] = [{"devStateName": "", "name": "Hostname", "nameEnum": 1, "value": rep.host}]
    rows["TARGET_INFO_SESSION_START_TIME"] = [{"utcEpochNs": rep.session_start_ns, "utcTime": "", "localTime": "",
                                               "systemClockNs": 0}]
    rows["ENUM_NSYS_EVENT_TYPE"] = [{"id": i, "name": n, "label": n} for i, n in EVENT_TYPES]
    rows["META_DATA_EXPORT"] = [{"name": "EXPORT_SCHEMA_VERSION", "value": SCHEMA_VERSION.get(vintage, "")}]
    for table, ddl in tables.items():
        present = rows.get(table) or []
        if table.startswith(("CUPTI_", "NVTX_")) and not present and table not in _ALWAYS:
            continue  # created lazily: no rows, no table
        con.execute(f"CREATE TABLE {table} ({ddl})")
        cols = [part.split()[0] for part in ddl.split(", ")]
        for row in present:
            names = [c for c in cols if c in row]
            values = [row[c] for c in names]
            filled = {c: _default(ddl, c) for c in cols if c not in row and _not_null(ddl, c)}
            names += list(filled)
            values += list(filled.values())
            con.execute(f"INSERT INTO {table} ({', '.join(_q(n) for n in names)}) VALUES ({', '.join('?' * len(names))})",
                        values)
    con.commit()
    con.close()
    return path


_ALWAYS = {"CUPTI_ACTIVITY_KIND_KERNEL"}  # an "empty kernels" report still has the table


def _gpu(r: dict) -> dict:
    return {"start": r["start"], "end": r["end"], "deviceId": r.get("device", 0), "contextId": 1,
            "streamId": r.get("stream", 7), "correlationId": r["corr"], "globalPid": gpid(r["pid"])}


def _not_null(ddl: str, col: str) -> bool:
    for part in ddl.split(", "):
        if part.split()[0] == col:
            return "NOT NULL" in part and "PRIMARY KEY" not in part and "DEFAULT" not in part
    return False


def _default(ddl: str, col: str):
    return "" if f"{col} TEXT" in ddl else 0


def _q(name: str) -> str:
    return f'"{name}"'


# --- scenarios ---------------------------------------------------------------------------------

PID, TID = 4242, 4250


def hybrid_model(steps: int = 2, t0: int = 1_000_000, pythooks: bool = False) -> Report:
    """Two decode steps of a 3-layer hybrid model (Mamba, attention, MoE), one NVTX push/pop range
    per module on the launching thread, as vLLM's layerwise NVTX tracing emits them.

    Per step and layer: one NVTX range `model.layers.<i>.<module>`; inside it one
    cudaLaunchKernel per kernel; each kernel runs on the GPU 2 us after its launch.
    `pythooks` names the ranges as those hooks do (str of a dict, see `pythooks_text`).
    Returns the report; kernels' expected layer indices are in each kernel dict's 'layer'.
    """
    layers = [("mixer", ["_chunk_scan_fwd_kernel", "_state_passing_fwd_kernel"]),
              ("self_attn", ["flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64, 64, 4>>"]),
              ("moe.experts", ["fused_moe_kernel", "topkGatingSoftmax"])]
    rep = Report()
    t, corr = t0, 100
    for _step in range(steps):
        for i, (module, kernels) in enumerate(layers):
            start = t
            for kname in kernels:
                rep.runtime.append({"start": t + 1000, "end": t + 3000, "name": "cudaLaunchKernel_v7000", "corr": corr,
                                    "pid": PID, "tid": TID})
                rep.kernels.append({"start": t + 5000, "end": t + 9000 + 1000 * i, "name": kname, "corr": corr,
                                    "pid": PID, "layer": i, "module": f"model.layers.{i}.{module}"})
                t += 10_000
                corr += 1
            path = f"model.layers.{i}.{module}"
            rep.nvtx.append({"start": start, "end": t, "text": pythooks_text(path) if pythooks else path,
                             "module": path, "pid": PID, "tid": TID})
        t += 50_000
    return rep


def pythooks_text(module: str) -> str:
    """The NVTX text vLLM's/SGLang's layerwise hooks (PytHooks) push for one module call."""
    return str({"Module": module, "TrainableParams": {"weight": [4096, 4096]}, "Inputs": [[1, 4096]],
                "StaticParams": {}})


def as_kineto(rep: Report, *, module_names: bool = True) -> dict:
    """The same run as a Kineto trace: NVTX ranges as record_function ranges (named by module path
    when `module_names`), launches as cuda_runtime, kernels on (device, stream), times in µs."""
    def x(cat, name, start, end, pid, tid, args=None):
        ev = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": start / 1000, "dur": (end - start) / 1000}
        return ev | ({"args": args} if args else {})

    events = [x("user_annotation", r["module"] if module_names and "module" in r else r["text"], r["start"], r["end"],
                r["pid"], r["tid"]) for r in rep.nvtx]
    events += [x("cuda_runtime", r["name"].split("_v")[0], r["start"], r["end"], r["pid"], r["tid"],
                 {"correlation": r["corr"]}) for r in rep.runtime]
    events += [x("kernel", k["name"], k["start"], k["end"], k.get("device", 0), k.get("stream", 7),
                 {"correlation": k["corr"], "device": k.get("device", 0), "stream": k.get("stream", 7)})
               for k in rep.kernels]
    return {"schemaVersion": 1, "traceEvents": events}
