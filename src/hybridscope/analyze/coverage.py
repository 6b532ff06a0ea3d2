"""Attribution coverage: how much of a run's GPU time each attribution method explains.

`coverage(con, run_id, rank=None)` -> Table 'attribution', one row per method, in this order:
- scope: an enclosing scope (module frame, record_function / NVTX range) gave the layer type;
- graph_map: replayed from a CUDA graph and mapped to the launch captured into it; the scope
  around that captured launch gave the type (attribute/graphs.py);
- sequence / sequence_guess: replayed, placed in its layer by sequence attribution against the
  run's layer pattern; `_guess` where no norm kernel fixed the layer boundary (ambiguous);
- graph: replayed from a CUDA graph with no map; typed by the kernel's name rule (`other` when none);
- name:  a kernel-name rule gave the type (no typed scope around the launch);
- none:  nothing did; the event is `other`;
- unattributed: attribution has not run on these events (layer_type NULL): should be 0.
The graph_map and sequence rows appear only when the run has such events. `meta['notes']` adds
what happened to the run's graph replays (`runs.notes.graph_replays`, written by attribution).
Columns: n events, gpu_ns (sum of durations), gpu_pct (of the run's GPU time), typed_ns (the part
whose layer type is not `other`), with_layer_pct (share of gpu_ns whose layer index is known).
GPU events = source 'cuda' AND kind IN ('kernel', 'memcpy', 'memset'). With no rank, ranks pool.
`meta['attributed_pct']` = scope + graph_map + sequence(_guess) + graph + name share of GPU time, counted only where the type is
not `other` (a graph kernel without a name rule is not explained).

`coverage_warning(con, run_id, rank=None)` -> the one line `decompose` and the report put first when
less than WARN_BELOW_PCT (90 %) of the GPU time is attributed (`attributed_pct`), with the share and
the fix that fits the run: no module or annotation scopes -> profile with with_stack=True or capture
with `hybridscope trace`; CUDA-graph replays typed by name only -> `--pattern` / `--model-config`;
otherwise -> kernel-name rules (`--rules`). None when the run has no GPU time or enough is attributed.

`unattributed(con, run_id, rank=None, top=10)` -> Table 'unattributed': the kernels with the most
GPU time among events whose layer type is `other` (attr_method 'none', or 'graph' with no rule),
with n, gpu_ns and gpu_pct of the run's GPU time: the names worth a rule or a scope. The `kernel`
column holds the whole names (kind 'kernel': the terminal shortens them).
"""

from __future__ import annotations

from hybridscope.analyze import timeline
from hybridscope.errors import NotFound, UsageError
from hybridscope.store.db import GPU_EVENTS
from hybridscope.table import Column, Table, plain

METHODS = ("scope", "graph_map", "sequence", "sequence_guess", "graph", "name", "none", "unattributed")
OPTIONAL = frozenset({"graph_map", "sequence", "sequence_guess"})  # rows shown only when present
EXPLAINED = ("scope", "graph_map", "sequence", "sequence_guess", "graph", "name")

_GPU = GPU_EVENTS
WARN_BELOW_PCT = 90.0

COVERAGE_COLUMNS = (
    Column("method", "str", "how the layer type was decided: scope, graph_map, sequence, sequence_guess, "
           "graph, name, none, unattributed"),
    Column("n", "int", "GPU events"),
    Column("gpu_ns", "ns", "sum of their durations", "GPU time"),
    Column("gpu_pct", "pct", "share of the run's GPU time", "% GPU"),
    Column("typed_ns", "ns", "part of gpu_ns with a layer type other than `other`", "typed"),
    Column("with_layer_pct", "pct", "share of gpu_ns whose layer index is known", "% with layer"),
)
UNATTRIBUTED_COLUMNS = (
    Column("kernel", "kernel", "kernel / memcpy / memset name"),
    Column("n", "int", "events"),
    Column("gpu_ns", "ns", "sum of durations", "GPU time"),
    Column("gpu_pct", "pct", "share of the run's GPU time", "% GPU"),
)


def _check_rank(con, run_id: int, rank: int | None) -> None:
    if rank is None:
        return
    found = con.execute("SELECT 1 FROM run_ranks WHERE run_id = ? AND rank = ?", [run_id, rank]).fetchall()
    if not found:
        found = con.execute("SELECT 1 FROM events WHERE run_id = ? AND rank = ? LIMIT 1", [run_id, rank]).fetchall()
    if not found:
        raise NotFound(f"run {run_id} has no rank {rank}")


def coverage(con, run_id: int, *, rank: int | None = None) -> Table:
    """Per attribution method: events, GPU time and its share (see the module doc)."""
    _check_rank(con, run_id, rank)
    rows: dict[str, list] = {}
    for r, method, *sums in _method_sums(con, run_id):
        if rank is None or r == rank:
            acc = rows.setdefault(method, [method, 0, 0, 0, 0])
            for i, v in enumerate(sums, 1):
                acc[i] += int(v or 0)
    rows = list(rows.values())
    by = {r[0]: r for r in rows}
    total = sum(int(r[2] or 0) for r in rows)
    out = []
    for method in METHODS:
        if method in OPTIONAL and method not in by:
            continue
        _, n, gpu, typed, with_layer = by.get(method, (method, 0, 0, 0, 0))
        gpu, typed, with_layer = int(gpu or 0), int(typed or 0), int(with_layer or 0)
        out.append((method, plain(n), gpu, _pct(gpu, total), typed, _pct(with_layer, gpu)))
    explained = sum(r[4] for r in out if r[0] in EXPLAINED)
    graph = by.get("graph")
    notes = _replay_notes(con, run_id, rank)
    if graph is not None:
        notes.append(f"{graph[1]} kernels replayed from CUDA graphs without a map: typed by name, no layer index")
    if by.get("unattributed"):
        notes.append("some GPU events were never attributed: re-run `hybridscope attribution --rules FILE`")
    return Table("attribution", COVERAGE_COLUMNS, out, {
        "title": f"Attribution coverage, run {run_id}" + (f" rank {rank}" if rank is not None else ""),
        "run_id": run_id, "rank": rank, "gpu_ns": total, "attributed_pct": _pct(explained, total),
        "notes": notes,
    })


@timeline.once
def _method_sums(con, run_id: int) -> list[tuple]:
    """(rank, method, n, gpu_ns, typed_ns, with_layer_ns) of the run's GPU events, in one scan
    (found once per report: `decompose` asks for the run and each rank)."""
    return con.execute(
        f"""
        SELECT rank, coalesce(attr_method, 'unattributed') AS method, count(*) AS n,
               sum(duration_ns)::BIGINT AS gpu_ns,
               (sum(duration_ns) FILTER (WHERE layer_type IS NOT NULL AND layer_type <> 'other'))::BIGINT,
               (sum(duration_ns) FILTER (WHERE layer_index IS NOT NULL))::BIGINT
        FROM events
        WHERE run_id = $run AND {_GPU}
        GROUP BY ALL
        """,
        {"run": run_id},
    ).fetchall()


def coverage_warning(con, run_id: int, *, rank: int | None = None) -> str | None:
    """One line when less than WARN_BELOW_PCT of the GPU time is attributed (see the module doc)."""
    cover = coverage(con, run_id, rank=rank)
    pct, total = cover.meta["attributed_pct"], cover.meta["gpu_ns"]
    if not total or pct >= WARN_BELOW_PCT:
        return None
    scopes = con.execute("SELECT count(*) FROM scopes WHERE run_id = ? AND kind IN ('module', 'annotation')",
                         [run_id]).fetchall()[0][0]
    by_name_only = {r[0]: r[3] for r in cover.rows}.get("graph", 0.0)
    if not scopes:
        fix = ("the trace has no module scopes: profile with torch.profiler.profile(..., with_stack=True) "
               "or capture with `hybridscope trace`")
    elif by_name_only >= 10.0:
        fix = (f"{by_name_only:.0f}% is CUDA-graph replays typed by name only: give the layer pattern with "
               "`hybridscope attribution --pattern ...` or `--model-config ...`")
    else:
        fix = "kernel names no rule knows: see `hybridscope attribution`, add rules with `--rules FILE`"
    share = f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%"
    return (f"only {share} of this run's GPU time is attributed to a layer (by scope or a known kernel "
            f"family); the rest is `other`. Fix: {fix}")


def _replay_notes(con, run_id: int, rank: int | None) -> list[str]:
    """What attribution did with the run's CUDA-graph replays (attribute.graphs.GraphStats)."""
    import json

    row = con.execute("SELECT json_extract(notes, '$.graph_replays') FROM runs WHERE run_id = ?", [run_id]).fetchall()
    per = json.loads(row[0][0]) if row and row[0][0] else {}
    keys = [str(rank)] if rank is not None and str(rank) in per else sorted(per)
    out = []
    for key in keys:
        g = per[key]
        where = "" if key == "all" else f"rank {key}: "
        line = (f"{where}{g['replays']} graph replays, {g['captures']} graph captures in the trace: {g['mapped']} "
                f"mapped ({g['ambiguous']} with several fitting captures), {g['no_capture_match']} fit no "
                f"capture, {g['name_mismatch']} name mismatches")
        if g["segmented"] or g["unsegmented"]:
            line += (f"; layer pattern: {g['segmented']} segmented, {g['unsegmented']} not, "
                     f"{g['guessed_kernels']} kernels with a guessed layer boundary")
        out.append(line)
    return out


def unattributed(con, run_id: int, *, rank: int | None = None, top: int = 10) -> Table:
    """The `top` kernel names by GPU time among events left `other` (see the module doc)."""
    if top < 0:
        raise UsageError(f"--top must be >= 0, not {top}")
    _check_rank(con, run_id, rank)
    params = {"run": run_id, "rank": rank, "top": top}
    total = con.execute(
        f"SELECT coalesce(sum(duration_ns), 0)::BIGINT FROM events"
        f" WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND {_GPU}",
        {"run": run_id, "rank": rank},
    ).fetchall()[0][0]
    rows = con.execute(
        f"""
        SELECT name, count(*), sum(duration_ns)::BIGINT AS gpu_ns FROM events
        WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND {_GPU}
          AND coalesce(layer_type, 'other') = 'other'
        GROUP BY name ORDER BY gpu_ns DESC, name LIMIT $top
        """,
        params,
    ).fetchall()
    out = [(name, plain(n), int(gpu), _pct(int(gpu), total)) for name, n, gpu in rows]
    return Table("unattributed", UNATTRIBUTED_COLUMNS, out, {
        "title": f"Top {top} kernels left `other`, run {run_id}" + (f" rank {rank}" if rank is not None else ""),
        "run_id": run_id, "rank": rank, "gpu_ns": int(total),
    })


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0
