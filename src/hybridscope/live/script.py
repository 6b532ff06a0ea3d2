"""Running a user's workload with capture armed in every process of it (the body of `hybridscope trace`).

A Python script (`python script.py ARGS`, `python -m module ARGS`) runs in this process through
`runpy` as `__main__`, with `sys.argv` and `sys.path[0]` set as Python would set them, so it
behaves as under `python script.py ARGS`; its model is found by `live.find.Finder`. Any other
command (`torchrun ...`, `vllm serve ...`, a shell script) runs as a child process. Either way
every Python process started below arms capture itself (live.follow), each writes its own store
into a folder beside the user's store, and at the end `live.family` merges them into one run.

Whatever the script does -- returns, calls `sys.exit(n)`, raises, is interrupted -- the capture is
stopped and written first; then the script's outcome is passed on: its exit code is returned, its
own exception is printed as Python would print it (exit code 1), Ctrl-C gives 130.
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from hybridscope.live import family, follow
from hybridscope.live.session import capture


def run_traced(kind: str, target: str, args: list[str], *, db, mode: str, duration: float | None,
               steps: int | None, model: str | None, label: str | None, sample_every: int | None,
               sample_steps: int | None, metrics_port: int | None = None,
               metrics_host: str = "127.0.0.1") -> tuple[int, family.Result]:
    """Run `target` (a script path, a module name or a command) with capture armed in every
    process; (exit code, what was merged into `db`)."""
    db = Path(db)
    # the options are checked here, once, before anything runs (UsageError: one line)
    capture(db=db, mode=mode, label=label, steps=steps, duration=duration, sample_every=sample_every,
            sample_steps=sample_steps)
    work = Path(tempfile.mkdtemp(prefix=f"{db.stem}.trace-", dir=db.parent if db.parent.is_dir() else None))
    opts = family.Options(dir=str(work), mode=mode,
                          steps=steps, duration=duration, model=model, label=label, sample_every=sample_every,
                          sample_steps=sample_steps, metrics_port=metrics_port, metrics_host=metrics_host)
    if kind == "command":  # the command's Python processes arm themselves; this one only waits
        with family.armed_environment(opts):
            code = _run_command([target, *args])
    else:
        code = _run_in_process(opts, kind, target, args)
    notes = family.settle(work)
    result = family.gather(work, db, label)
    result.notes += notes
    if result.run_id is None:
        what = f"nothing named {model!r}" if model else "no recognized hybrid model (name it with --model)"
        seen = len(result.processes)
        result.notes.append(f"{what} ran in {target}" + (f" or the {seen - 1} process(es) it started" if seen > 1 else ""))
    shutil.rmtree(work, ignore_errors=True)  # merged (or nothing to merge): the per-process stores go
    return code, result


def _run_in_process(opts: family.Options, kind: str, target: str, args: list[str]) -> int:
    top = os.getpid()
    session = follow.Session(opts.dir, how="trace", name=target)
    follow.adopt(session)
    try:
        with family.armed_environment(opts):
            code = _run_script(session, kind, target, args)
        if os.getpid() != top:  # a fork of the script that returned into us: it ends as its script did
            follow.current().finish()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        session.finish()
    finally:
        if os.getpid() == top:
            follow.release()
    return code


def _run_script(session: follow.Session, kind: str, target: str, args: list[str]) -> int:
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    session.start_capture()
    try:
        return _run(kind, target, args)
    except SystemExit as e:
        return _exit_code(e.code)
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - the script's own failure, shown as Python shows it
        traceback.print_exc()
        return 1
    finally:
        sys.argv[:], sys.path[:] = saved_argv, saved_path


def _run_command(argv: list[str]) -> int:
    """The command's exit code. On Ctrl-C (which a terminal sends it too) it gets WAIT_S to write its
    runs and exit, then SIGTERM (which a traced process answers by writing its run), then SIGKILL."""
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=family.WAIT_S)
            break
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            continue
    return 130


def _run(kind: str, target: str, args: list[str]) -> int:
    if kind == "module":
        sys.argv[:] = [target, *args]
        sys.path.insert(0, os.getcwd())  # as `python -m` does
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv[:] = [target, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")
    return 0


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1
