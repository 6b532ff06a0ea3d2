"""Capture in every process of a traced workload: one `Session` per process (see live.family).

`hybridscope trace` arms capture in the process it starts (the script runs there) and, through
the environment, in every Python process started below it: HYBRIDSCOPE_TRACE names the trace's
folder (its options.json: family.Options) and the folder of `bootstrap/sitecustomize.py` is put
first on PYTHONPATH, so
`site` runs `start()` at the start of each child (spawn, forkserver, `subprocess`, torchrun's
workers; forked children inherit the session and get a fresh one in `os.register_at_fork`).

A session costs nothing until torch is imported: an import watcher (one `sys.meta_path` entry)
sees `import torch` finish and puts one global forward pre-hook in place; the first call of a
module that holds a non-empty ModuleList (a decoder stack; any module with `--model`) builds the
capture and a `live.find.Finder`, which finds the model as `trace` does in its own process. At
exit (atexit, `os._exit`, a SIGTERM the process did not handle) the capture is stopped and written to `<dir>/pid<P>-rank<R>.duckdb` (rank from torch.distributed when the model
ran, else torchrun's RANK, else 0: `family` renumbers), and a record `<dir>/proc-<P>.json` says what
the process was and captured; `<dir>/proc-<P>.start` is written at start, so the tracer knows whom
to wait for. A process whose model was never found writes only its record.

Fork: the child of a fork inherits its parent's session, hooks and capture buffers half-way. In
the child, the inherited session is abandoned without touching what it holds (no CUDA call, no
profiler stop, no thread join: its objects are kept referenced, so no destructor runs), its hooks
are removed (plain Python dictionaries), and a new session starts; if the parent had initialized
CUDA the record says so (CUDA cannot be used in such a child; its capture is host-only at best).
Nothing here raises into the workload: every failure is caught and written into the record.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

ENV = "HYBRIDSCOPE_TRACE"  # the trace's folder: options.json (family.Options), and each process's files
_session: Session | None = None
_abandoned: list = []  # sessions inherited through fork: kept alive so that no destructor runs in the child
_real_exit = os._exit
_hooked = False  # the fork and exit hooks are process-wide: installed once
# Start-up cost (docs/benchmarks.md, bench_trace_hook.py): this module imports nothing beyond
# os, sys, time and atexit; json is imported when torch runs a module (torch has imported it).


def start(folder: str) -> None:
    """Arm this process (the bootstrap's entry): a session, the torch watcher, the exit paths."""
    if _session is not None:
        return
    adopt(Session(folder, how="exec"))
    if "torch" in sys.modules:
        _session.torch_ready()
    else:
        sys.meta_path.insert(0, _TorchWatcher())


def current() -> Session | None:
    return _session


def adopt(session: Session) -> None:
    """Make `session` this process's own (the tracer's process, armed without the bootstrap): its
    forked children get sessions of their own, which exits write."""
    global _session, _hooked
    _session = session
    if not _hooked:
        _hooked = True
        os.register_at_fork(after_in_child=_after_fork)
        atexit.register(_at_exit)
        os._exit = _exit


def release() -> None:
    """The tracer's process is done with its session: later forks and exits are no part of the trace."""
    global _session
    _session = None


def _at_exit() -> None:
    if _session is not None:
        _session.finish()


def _exit(code):
    if _session is not None:
        _session.finish()
    _real_exit(code)


def _after_fork() -> None:
    global _session
    parent = _session
    if parent is None:
        return
    _abandoned.append(parent)
    try:
        _session = Session(parent.dir, how="fork", name=f"fork of {parent.name or _process_name()}")
        parent.abandon(_session)
        if "torch" in sys.modules:
            _session.torch_ready()
    except Exception as e:  # noqa: BLE001 - the child runs on, untraced; say so once
        _session = None
        print(f"hybridscope trace: pid {os.getpid()} (a fork) not traced: {type(e).__name__}: {e}", file=sys.stderr)


class _TorchWatcher:
    """A `sys.meta_path` finder that only notices `import torch` and calls back once it completed."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            return None
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module"):
            run = loader.exec_module

            def exec_module(module):
                run(module)
                if _session is not None:
                    _session.torch_ready()

            loader.exec_module = exec_module  # this loader instance loads torch alone
        return spec


class Session:
    """One process's part of a trace: a capture and a Finder once torch runs modules; its record."""

    def __init__(self, folder: str, how: str, name: str | None = None):
        self.dir, self.how = folder, how  # how: 'trace' (the tracer's process), 'exec', 'fork'
        self.name = name
        self.pid, self.ppid, self.t_start = os.getpid(), os.getppid(), time.time()
        self.cap = self.finder = self._first = None
        self._named, self._checked = False, set()
        self.cuda_forked = False  # forked from a process that had initialized CUDA
        self.done = False
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.port: int | None = None
        self._mark("start", {"pid": self.pid, "ppid": self.ppid, "how": how, "t": self.t_start})

    def options(self) -> dict:
        """The trace's options (family.Options, written by the tracer into the folder)."""
        import json

        with open(os.path.join(self.dir, "options.json")) as f:
            return json.load(f)

    # -- arming ----------------------------------------------------------------------------------
    def torch_ready(self) -> None:
        """torch is imported: one global pre-hook waits for a module call that could be a model."""
        try:
            import weakref

            from torch.nn.modules import module as nn_module

            self._named = self.options()["model"] is not None
            self._checked = weakref.WeakSet()
            self._first = nn_module.register_module_forward_pre_hook(self._first_call)
        except Exception as e:  # noqa: BLE001
            self._error("arm", e)

    def _first_call(self, module, args):
        """Until a called module holds a decoder stack (a non-empty ModuleList, which the finder's
        recognition requires of an unnamed model), nothing of capture is imported: a process that
        only runs small modules pays one set lookup per call, not the capture's imports."""
        try:
            if self._first is None or (not self._named and not self._may_be_model(module)):
                return
            handle, self._first = self._first, None
            if handle is None:  # another thread's call got here first
                return
            handle.remove()
            self.start_capture()
            self.finder._pre(module, args)  # this call's own pre-hook list was read before the Finder existed
        except Exception as e:  # noqa: BLE001
            self._error("arm", e)

    def _may_be_model(self, module) -> bool:
        if module in self._checked:
            return False
        self._checked.add(module)
        return any(type(m).__name__ == "ModuleList" and len(m) > 0 for m in module.modules())

    def start_capture(self) -> None:
        """The capture and its Finder (the tracer's process calls this before running the script)."""
        from hybridscope.live.find import Finder
        from hybridscope.live.session import capture

        self._mark("armed", {"t": time.time()})  # the tracer waits for armed processes to write
        o = self.options()
        mode = o["mode"]
        if self.cuda_forked and mode == "kernels":  # the profiler's CUDA side (CUPTI) is the parent's
            mode = "layers"
            self.notes.append("kernels mode asked; layers here: the profiler's CUDA state came from the parent")
        db = os.path.join(self.dir, f"pid{self.pid}-rank{{rank}}.duckdb")
        self.cap = capture(db=db, mode=mode, label=o["label"], steps=o["steps"], duration=o["duration"],
                           sample_every=o["sample_every"], sample_steps=o["sample_steps"], quiet=True)
        if o["metrics_port"] is not None:
            self.port = metrics_port(o["metrics_port"], self.dir)
            if self.port is not None:  # the exporter starts when the capture arms on a model
                self.cap.metrics = (o.get("metrics_host", "127.0.0.1"), self.port, True)
        self.cap.__enter__()
        self.finder = Finder(self.cap, o["model"])
        if self.how != "trace":
            _catch_sigterm()

    # -- the end ---------------------------------------------------------------------------------
    def finish(self) -> None:
        """Stop the capture, write its run and this process's record (once; never raises)."""
        if self.done:
            return
        self.done = True
        summary = None
        try:
            if self.finder is not None:
                self.finder.remove()
            if self._first is not None:
                self._first.remove()
            if self.cap is not None:
                summary = self.cap.stop()
        except Exception as e:  # noqa: BLE001
            self._error("stop", e)
        self._mark("json", self.record(summary))

    def record(self, summary) -> dict:
        cap = self.cap
        where = cap.where() if cap is not None else None
        model = getattr(self.finder, "found", None)
        return {
            "pid": self.pid, "ppid": self.ppid, "how": self.how, "name": _process_name(self.name),
            "t_start": self.t_start, "t_end": time.time(), "torch": "torch" in sys.modules,
            "model": type(model).__name__ if model is not None else None,
            "rank": where[0] if where else None, "world_size": where[1] if where else None,
            "store": summary.db if summary is not None and summary.run_id is not None else None,
            "run_id": summary.run_id if summary is not None else None,
            "lines": summary.lines()[1:] if summary is not None and summary.run_id is not None else [],
            "metrics_port": self.port, "notes": self.notes,
            "errors": self.errors + ([f"capture {place}: {f['first']} ({f['count']}x)" for place, f in summary.faults.items()]
                                     if summary is not None and summary.run_id is None else []),
        }

    def abandon(self, child: Session) -> None:
        """In a forked child: let go of this (the parent's) session without using its state."""
        self.done = True  # its run is the parent's to write
        for handle in (self._first, *getattr(self.finder, "handles", ())):
            if handle is not None:
                handle.remove()
        armed = getattr(self.cap, "_armed", None)
        if armed is not None:
            for handle in armed.handles:
                handle.remove()
            armed.hooks.remove()
            child.notes.append(f"forked from pid {self.pid} after its capture armed on {type(self.cap.model).__name__}: "
                               "the parent's capture stays the parent's")
        torch = sys.modules.get("torch")
        if torch is not None and _cuda_was_initialized(torch):
            child.cuda_forked = True
            child.notes.append(f"forked from pid {self.pid} after it initialized CUDA: CUDA cannot be used "
                               "in this process (torch raises); its capture, if any, is host-only")

    # -- helpers ---------------------------------------------------------------------------------
    def _error(self, place: str, e: BaseException) -> None:
        self.errors.append(f"{place}: {type(e).__name__}: {e}")

    def _mark(self, ext: str, payload: dict) -> None:
        path = os.path.join(self.dir, f"proc-{self.pid}.{ext}")
        try:
            with open(path + ".tmp", "w") as f:
                f.write(_dumps(payload))
            os.replace(path + ".tmp", path)  # the tracer never reads half a record
        except OSError as e:
            self.errors.append(f"record: {e}")


def _dumps(value) -> str:
    """JSON text of dicts, lists, str, numbers, bool, None: json's when loaded, else a few lines
    (json costs a process that never imports it several ms of start-up)."""
    if "json" in sys.modules:
        return sys.modules["json"].dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_dumps(str(k))}: {_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + "".join(c if c >= " " and c not in '"\\' else f"\\u{ord(c):04x}" for c in value) + '"'
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _cuda_was_initialized(torch) -> bool:
    """In a forked child: had the parent initialized CUDA? torch's flag (kept through the fork) or
    its C-level bad-fork mark (set in fork's own child handler, before Python's handlers run)."""
    bad_fork = getattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    return bool(getattr(torch.cuda, "_initialized", False) or bad_fork())


def metrics_port(base: int, folder: str, limit: int = 256) -> int | None:
    """The port of this process's metrics exporter (live.metrics): `base + slot`, one slot per process
    that runs torch modules. The slot is torchrun's LOCAL_RANK when it is free, else the lowest free one, claimed by
    creating `<folder>/port-<slot>` exclusively (processes of one trace never share a port)."""
    local = os.environ.get("LOCAL_RANK", "")
    order = ([int(local)] if local.isdigit() else []) + list(range(limit))
    for slot in order:
        try:
            os.close(os.open(os.path.join(folder, f"port-{slot}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return base + slot
    return None


def _catch_sigterm() -> None:
    """A process killed by SIGTERM (how servers stop their workers) writes its run first, then dies
    of the signal as it would have. Only where SIGTERM is not handled yet, and from the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_term(signum, frame):
        _at_exit()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)


def _process_name(given: str | None = None) -> str:
    """multiprocessing's name for its children, else `given`, else the command line."""
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        name = mp.current_process().name
        if name != "MainProcess":
            return name
    return given or command_line(os.getpid()) or " ".join(sys.argv) or "python"


def command_line(pid: int, width: int = 100) -> str | None:
    """A process's command line as /proc shows it (cut at `width`), or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    text = " ".join(w for w in words if w)
    return text if len(text) <= width else text[:width - 3] + "..."
