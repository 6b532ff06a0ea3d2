"""Pieces every importer shares: the import's context and result, content hashes, progress.

An importer turns ONE file into the rows of one rank of one run, inside the caller's transaction
(`hybridscope.ingest.import_files` opens it). It gets an `ImportContext` (the options of the whole
import, and the runs already opened by earlier files of the same call) and returns an
`ImportResult`. The `runs` and `run_ranks` rows are written by `hybridscope.store.runs`, the
same way for every format and for live capture, so that `runs` means the same thing whatever the
source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb

from hybridscope.errors import BadInput
from hybridscope.store.db import next_run_id

HASH_CHUNK = 1 << 20
# The border every importer checks (docs/import.md, "Values at the border"):
MAX_RANK = 2**31 - 2  # ranks and world sizes are INTEGER columns
MAX_TS_NS = 2**62  # |ts_ns| beyond this is no clock reading (ts + duration then never overflows BIGINT)
MAX_DURATION_NS = 2**53  # ~104 days: a longer "duration" is a corrupt record (and exact in a double)

Advance = Callable[[int], None]  # advance(done): `done` bytes or rows of the file read so far


class Progress(Protocol):
    """How far an import is, reported to whoever called it (the CLI hands in a rich bar on stderr;
    a library caller hands in nothing, and nothing is printed). Around the reading of one file,
    `progress(label, total, unit)` is a context manager yielding `advance(done)`; `unit` is
    'bytes' or 'rows'."""

    def __call__(self, label: str, total: int, unit: str) -> AbstractContextManager[Advance]: ...


@dataclass(frozen=True)
class ImportResult:
    """What one file became. `duplicate_of` is (run_id, rank) when the file was already stored:
    then nothing was written and `run_id`/`rank` name the stored copy."""

    path: str
    format: str
    run_id: int
    rank: int
    n_events: int
    skipped: Mapping[str, int] = field(default_factory=dict)
    duplicate_of: tuple[int, int] | None = None
    world_size: int = 1
    notes: tuple[str, ...] = ()  # one line each: what the file lacked or what was not read (summary)


class RetryFile(Exception):
    """Raised by an importer to have its file imported again, in a fresh transaction, with
    `ctx.careful` set (a fast path met something it cannot vouch for). The driver retries once."""


@dataclass
class ImportContext:
    """Options of one `import_files` call, and the runs its earlier files opened.

    `rank` forces the rank of every file (only sensible for one file); `label` names new runs;
    `careful` is set by the driver when it retries a file after RetryFile. `progress` is the
    caller's reporter (None: report nothing).
    `jobs` maps a distributed-job key to (run_id, ranks already stored in this call), so that the
    files of one job (same world size, distinct ranks) become one run.
    """

    rules_path: Path | None = None
    pattern: object = None  # attribute.pattern.LayerPattern for CUDA-graph replays, or None
    rank: int | None = None
    label: str | None = None
    progress: Progress | None = None
    careful: bool = False
    jobs: dict[str, tuple[int, set[int]]] = field(default_factory=dict)

    pending: tuple[str, int, int] | None = None

    def run_for(self, con: duckdb.DuckDBPyConnection, job_key: str | None, rank: int) -> tuple[int, bool]:
        """The run this rank belongs to, and whether it is new (the caller inserts its `runs` row).

        A rank joins an earlier file's run of this call when both have the same non-empty job key
        and the rank is not taken yet; otherwise it opens a new run. Call inside the transaction;
        the claim counts only once `committed()` is called after COMMIT.
        """
        run_id, new = None, True
        if job_key is not None and job_key in self.jobs:
            jrun, ranks = self.jobs[job_key]
            if rank not in ranks:
                run_id, new = jrun, False
        if run_id is None:
            run_id = next_run_id(con)
        self.pending = (job_key, run_id, rank) if job_key is not None else None
        return run_id, new

    def reporting(self, label: str, total: int, unit: str, *, worth_it: bool = True) -> AbstractContextManager[Advance]:
        """The caller's progress context for one file, or a silent one when there is no reporter or
        the file is too small for a bar to help (`worth_it` False)."""
        if self.progress is None or not worth_it:
            return nullcontext(lambda done: None)
        return self.progress(label, total, unit)

    def committed(self) -> None:
        """The file's transaction committed: its rank now holds its place in its job's run."""
        if self.pending is None:
            return
        job_key, run_id, rank = self.pending
        self.pending = None
        if job_key not in self.jobs or self.jobs[job_key][0] != run_id:
            self.jobs[job_key] = (run_id, set())
        self.jobs[job_key][1].add(rank)


TEMP_PREFIX = "hybridscope-import-"  # + "<pid>-": a folder of slice files, removed on every exit path


def temp_folder():
    """A temporary folder for one file's slices (a context manager; removed when it exits, whatever
    the exit). Named after this process, so that `remove_stale_temp` can tell a killed run's."""
    import os
    import tempfile

    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def remove_stale_temp() -> int:
    """Remove the slice folders that killed imports (SIGKILL, power loss) left in the temporary
    directory: those whose process is gone. Returns how many were removed."""
    import os
    import shutil
    import tempfile

    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = folder.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def checked_int(path: Path, name: str, value, lo: int, hi: int) -> int:
    """`value` as an integer in [lo, hi], else BadInput naming the field (a bool, a fraction, text
    that is not a number, or a number out of range refuses the file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{path}: {name} is not an integer ({value!r:.40})")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (ValueError, OverflowError):
        number = None
    if number is None:
        raise BadInput(f"{path}: {name} is not an integer ({value!r:.40})")
    if not lo <= number <= hi:
        raise BadInput(f"{path}: {name} = {number} is out of range ({lo} to {hi})")
    return number


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes as stored (a .gz is hashed compressed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def settings(con: duckdb.DuckDBPyConnection, values: dict, also: tuple[str, ...] = ()):
    """Run with these DuckDB settings; they (and the settings named in `also`) get their previous
    values back after."""
    old = {name: con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0]
           for name in (*values, *also)}
    for name, value in values.items():
        con.execute(f"SET {name} = '{value}'")
    try:
        yield
    finally:
        for name, value in old.items():
            try:
                con.execute(f"SET {name} = '{value}'")
            except duckdb.Error:  # after an interrupt: the error that got us here is the one to show
                break
