"""The tracer's side of following a workload's processes (the process side is live.follow).

`armed_environment` makes every Python process started below the tracer arm itself (HYBRIDSCOPE_TRACE
and the bootstrap folder first on PYTHONPATH). When the workload is over, `settle` lets the
workload's multiprocessing children end as they would at interpreter exit and waits, at most
`WAIT_S`, for every process that armed a capture (ran torch modules) to write its record; `gather` merges the stores the
processes wrote into one run of the user's store, one rank each, and lists every process seen.

Ranks: a process whose model ran under torch.distributed (or torchrun's RANK) with a world size
above 1 keeps its rank; every other capturing process (and one whose rank is already taken) gets
the next free rank after them, in the order the processes started (the tracer's own first).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from hybridscope.errors import HybridscopeError
from hybridscope.live.follow import ENV, command_line

WAIT_S = 10.0  # how long the tracer waits, after the workload, for processes still writing
BOOTSTRAP = Path(__file__).resolve().parent / "bootstrap"


@dataclass(frozen=True)
class Options:
    """What every process of one trace captures with: `<dir>/options.json`, read by each process
    (live.follow) when torch first runs a module; HYBRIDSCOPE_TRACE names the folder."""

    dir: str                       # where each process writes its store and record
    mode: str = "layers"
    steps: int | None = None       # limits, per process
    duration: float | None = None
    model: str | None = None
    label: str | None = None
    sample_every: int | None = None
    sample_steps: int | None = None
    metrics_port: int | None = None  # base port of the per-process exporters (follow.metrics_port, live.metrics)
    metrics_host: str = "127.0.0.1"


@contextmanager
def armed_environment(opts: Options):
    """Children started inside this block arm capture at start-up (the environment is restored after)."""
    Path(opts.dir, "options.json").write_text(json.dumps(asdict(opts)))
    saved = {k: os.environ.get(k) for k in (ENV, "PYTHONPATH")}
    os.environ[ENV] = opts.dir
    os.environ["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP), *filter(None, [saved["PYTHONPATH"]])])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Process:
    pid: int
    start: dict
    record: dict | None = None
    rank: int | None = None
    name: str | None = None  # a process without a record: its command line, while it runs

    @property
    def captured(self) -> bool:
        return bool(self.record and self.record.get("store"))

    def line(self) -> str:
        r, s = self.record or {}, self.start
        who = f"pid {self.pid} ({s.get('how')}: {r.get('name') or self.name or '?'})"
        if self.record is None:
            return f"{who}: " + ("still running after the workload ended" if self.name else "ended without a record (killed?)")
        if self.captured:
            world = f", rank {r['rank']} of {r['world_size']} in its process group" if (r.get("world_size") or 1) > 1 else ""
            port = f", metrics port {r['metrics_port']}" if r.get("metrics_port") is not None else ""
            return f"rank {self.rank}: {who}: {r['model']}{world}{port}"
        what = ("torch never imported" if not r.get("torch") else
                "torch imported, no recognized model ran" if r.get("model") is None else
                f"{r['model']} found, nothing written")
        return f"{who}: {what}"


@dataclass
class Result:
    run_id: int | None
    db: str | None
    processes: list[Process] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self, mode: str) -> list[str]:
        captured = [p for p in self.processes if p.captured]
        where = f"run {self.run_id} in {self.db}" if self.run_id is not None else "nothing written"
        out = [f"hybridscope capture ({mode}): {where}; {len(self.processes)} process(es) seen, {len(captured)} captured"]
        for p in sorted(self.processes, key=lambda p: (p.rank is None, p.rank, p.start.get("t", 0))):
            out.append("  " + p.line())
            if p.captured:
                out += ["    " + x.strip() for x in p.record.get("lines", [])]
            for note in (p.record or {}).get("notes", []) + [f"error: {e}" for e in (p.record or {}).get("errors", [])]:
                out.append(f"    note: {note}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def settle(folder: Path, wait_s: float = WAIT_S) -> list[str]:
    """End the workload's multiprocessing children as the interpreter would at exit (daemons are
    terminated, the others joined), then wait up to `wait_s` for every started process to write
    its record (a process that never ran a torch module, such as multiprocessing's resource
    tracker, is not waited for). Returns notes about the processes still running."""
    import sys

    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        try:
            util._exit_function()  # what Python runs at exit: the workload's children end before we merge
        except Exception as e:  # noqa: BLE001 - the workload's own clean-up failing is not ours to raise
            return [f"multiprocessing clean-up failed: {type(e).__name__}: {e}"]
    deadline = time.monotonic() + wait_s
    while True:
        pending = [p for p in _pending(folder) if _alive(p)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return [f"pid {p} was still running {wait_s:g} s after the workload ended: not in the run" for p in pending]


def read(folder: Path) -> list[Process]:
    procs = []
    for path in sorted(folder.glob("proc-*.start")):
        pid = int(path.name.split("-")[1].split(".")[0])
        rec = path.with_suffix(".json")
        procs.append(Process(pid, _load(path), _load(rec) if rec.exists() else None,
                             name=None if rec.exists() else command_line(pid)))
    return procs


def assign_ranks(procs: list[Process]) -> None:
    """Set `rank` of each capturing process (see the module docstring)."""
    captured = [p for p in procs if p.captured]
    taken: set[int] = set()
    for p in sorted(captured, key=lambda p: p.record["rank"]):
        if (p.record.get("world_size") or 1) > 1 and p.record["rank"] not in taken:
            p.rank = p.record["rank"]
            taken.add(p.rank)
    nxt = max(taken) + 1 if taken else 0
    for p in sorted((p for p in captured if p.rank is None), key=lambda p: (p.start.get("how") != "trace",
                                                                            p.start.get("t", 0), p.pid)):
        while nxt in taken:
            nxt += 1
        p.rank = nxt
        taken.add(nxt)


def gather(folder: Path, db: Path, label: str | None) -> Result:
    """Merge the processes' stores into one new run of `db`; the processes and what each captured."""
    from hybridscope.store import db as store
    from hybridscope.store import merge

    procs = read(folder)
    found = {}
    for p in procs:
        if p.captured:
            try:
                found[p.pid] = merge.inspect(Path(p.record["store"]), p.record["run_id"])
            except HybridscopeError as e:  # a process killed while writing: the others still merge
                p.record["errors"] = [*p.record.get("errors", []), f"its store could not be read: {e}"]
                p.record["store"] = None
    assign_ranks(procs)
    captured = sorted((p for p in procs if p.captured), key=lambda p: p.rank)
    if not captured:
        return Result(None, None, procs)
    sources = [replace(found[p.pid], as_rank=p.rank) for p in captured]
    models = list(dict.fromkeys(p.record["model"] for p in captured))
    con = store.open_store(db)
    try:
        run_id = merge.merge(con, sources, label=label or " + ".join(models))
        _process_notes(con, run_id, procs)
    finally:
        con.close()
    return Result(run_id, str(db), procs)


def _process_notes(con, run_id: int, procs: list[Process]) -> None:
    """runs.notes.processes: every process seen, its rank (null: captured nothing) and what it was."""
    from hybridscope.store import db as store

    listed = [{"pid": p.pid, "ppid": p.start.get("ppid"), "how": p.start.get("how"), "rank": p.rank,
               "name": (p.record or {}).get("name"), "model": (p.record or {}).get("model"),
               "summary": p.line()} for p in procs]
    with store.transaction(con):
        (text,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchone()
        notes = json.loads(text) if text else {}
        notes["processes"] = listed
        con.execute("UPDATE runs SET notes = ? WHERE run_id = ?", [json.dumps(notes, sort_keys=True), run_id])


def _pending(folder: Path) -> list[int]:
    return [int(p.name.split("-")[1].split(".")[0]) for p in folder.glob("proc-*.armed")
            if not p.with_suffix(".json").exists()]


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not os.path.exists("/proc")  # /proc exists but has no such pid: gone
    except (IndexError, ValueError):
        return False


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
