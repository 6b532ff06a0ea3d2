"""`kernels` mode: kernel-level events through torch.profiler / Kineto, converted straight to columns.

On a GPU the profiler runs with CUDA activities only: kernels, memcpy/memset and the CUDA runtime
calls that launched them (CUPTI correlation ids), without recording every aten op on the CPU,
which is what makes `torch.profiler` with CPU activities so expensive on eager decode. Kernels get
their layer through the hooks' scopes: kernel -> correlation -> launch (host time, thread) ->
innermost scope, by `hybridscope.attribute` like any import. On CPU there is no device timeline:
the profiler records CPU ops (source 'cpu', kind 'cpu_op'), attributed the same way.

Windowed sampling `window=(k, n)`: the first k steps of every n are profiled, the same steps
that get module hooks (live.session, Sampling). Two ways to cut the windows out of a run
(`WINDOW_STRATEGY`):
  - 'toggle' (the default on CUDA): one profiler session for the whole run; CUDA collection is
    switched on for the windows only (`toggle_collection_dynamic`). Switching off drains the device
    and flushes CUPTI's buffers (about 4-6 ms on an H100), switching on is 0.4 ms; every window is
    processed once, at stop, off the run. Kineto before pytorch/kineto#1362 (torch 2.11) returns the
    buffers flushed at a toggle-off only when a buffer is still open at stop, so `stop` switches
    collection back on and runs one tiny op first; events from that moment on are cut off.
  - 'schedule' (CPU, and torch builds without toggling): a torch.profiler schedule (`_schedule`)
    stops the profiler after each window and starts it again one warm-up step before the next; the
    end of each window is processed on the model's thread (about one step time per profiled step
    on an H100, docs/benchmarks.md), kept as the profiler's result objects, converted at flush.
`n == 1`: one profiler session for the whole run. `max_windows` bounds the windows; windows past
it are not recorded and are counted.

Conversion reads `_KinetoEvent` accessors into columns (`_convert`); benchmarks/bench_capture.py
compares it with exporting a Chrome trace and importing it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings

import numpy as np

# host calls that block on the device, spelled as the Kineto importer spells them (kind 'sync')
SYNC_NAME = r"(?i)^(cuda|hip|cu)[A-Za-z]*Synchronize$"

# Kineto activity type -> (events.source, events.kind)
ACTIVITY_KINDS: dict[str, tuple[str, str]] = {
    "kernel": ("cuda", "kernel"),
    "gpu_memcpy": ("cuda", "memcpy"),
    "gpu_memset": ("cuda", "memset"),
    "gpu_user_annotation": ("cuda", "gpu_annotation"),
    "cuda_runtime": ("cuda_api", "runtime"),
    "cuda_driver": ("cuda_api", "driver"),
    "cuda_sync": ("cuda_api", "sync"),
    "cpu_op": ("cpu", "cpu_op"),
    "python_function": ("cpu", "python"),
    "user_annotation": ("annotation", "user_annotation"),
}
DEVICE_SIDE = frozenset({"kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation", "cuda_sync"})
SKIP = frozenset({"overhead", "ac2g", "flow", "cpu_instant_event", "collective_comm"})

# how windows are cut out of a run (module docstring): 'auto' = 'toggle' on CUDA where torch can
# toggle collection, else 'schedule'
WINDOW_STRATEGY = "auto"


class KernelBackend:
    """Owns one torch.profiler session; `step(s)` at the boundary that starts step s, `stop()` at the end."""

    def __init__(self, *, cuda: bool, window: tuple[int, int] | None, max_windows: int, faults):
        import torch

        self.torch = torch
        self.cuda = cuda
        self.window = window if window is not None and window[1] > window[0] else None
        self.max_windows = max_windows
        self.faults = faults
        self.strategy = _strategy(cuda, torch) if self.window is not None else "session"
        self.results: list = []
        self.dropped_windows = 0
        self.windows = 0
        self.collecting = False
        self.cut_ns: int | None = None  # toggle: events from here on are the stop's own
        self.prof = None
        self.acts: list = []
        self.marker: tuple[int, int] | None = None
        self.clock_offset_ns = 0

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.acts = [ProfilerActivity.CUDA] if self.cuda else [ProfilerActivity.CPU]
        sched = _schedule(*self.window) if self.strategy == "schedule" else None
        with warnings.catch_warnings():  # "clears events at the end of each cycle": _keep holds them
            warnings.simplefilter("ignore", UserWarning)
            self.prof = profile(activities=self.acts, schedule=sched, on_trace_ready=self._keep)
            self.prof.start()
        self.collecting, self.windows = True, 1  # step 0 is always sampled
        if self.cuda and sched is None:
            # a runtime call at a known host time: `columns` checks the launch clock against it
            t0 = time.time_ns()
            self.torch.cuda.synchronize()
            self.marker = (t0, time.time_ns())

    def step(self, step: int) -> None:
        if self.prof is None or self.window is None:
            return
        if self.strategy == "toggle":
            k, n = self.window
            want = step % n < k
            if want and not self.collecting and self.windows >= self.max_windows:
                self.dropped_windows += step % n == 0
            elif want != self.collecting:
                self._collect(want)
                self.windows += want
            return
        with warnings.catch_warnings():  # the same warning at each new cycle
            warnings.simplefilter("ignore", UserWarning)
            self.prof.step()

    def _collect(self, on: bool) -> None:
        with _quiet_stderr():  # torch logs a warning line at every toggle, whatever the activities
            self.prof.toggle_collection_dynamic(on, self.acts)
        self.collecting = on

    def force_collect(self, on: bool | None) -> None:
        """CUDA collection on for a CUDA-graph capture (`on=True`), then back as the window wants
        (`None`): the capture phase maps the replays (live.graphs). Only with 'toggle' windows or
        one session; with 'schedule' windows a capture outside a window is not recorded."""
        if self.prof is None or self.strategy not in ("toggle", "session"):
            return
        if on:
            self._forced = not self.collecting
            if self._forced:
                self._collect(True)
        elif getattr(self, "_forced", False):
            self._forced = False
            self._collect(False)

    def stop(self) -> None:
        """Stop the profiler; torch.profiler hands a window still recording to `_keep`."""
        if self.prof is None:
            return
        if self.strategy == "toggle" and not self.collecting:
            # keep a buffer open at stop so that Kineto returns the windows flushed before
            # (module docstring); what runs from now on is cut off in `columns`
            self.cut_ns = time.time_ns()
            self._collect(True)
            x = self.torch.zeros(1, device="cuda" if self.cuda else "cpu")
            x += 1
            if self.cuda:
                self.torch.cuda.synchronize()
        prof, self.prof = self.prof, None
        prof.stop()

    def _keep(self, prof) -> None:
        if len(self.results) >= self.max_windows:
            self.dropped_windows += 1
            return
        self.results.append(prof.profiler.kineto_results)

    def columns(self, rank: int) -> dict[str, np.ndarray | list]:
        """Every kept window as `events` columns (without event_id); converted now."""
        parts = [_convert(r.events(), rank) for r in self.results]
        parts = [p for p in parts if p]
        if not parts:
            return {}
        cols = {k: _concat([p[k] for p in parts]) for k in parts[0]}
        self.clock_offset_ns = _marker_offset(cols, self.marker)
        if self.clock_offset_ns:
            cols["ts_ns"] = cols["ts_ns"] + self.clock_offset_ns
        if self.cut_ns is not None:
            keep = np.flatnonzero(cols["ts_ns"] < self.cut_ns)
            cols = {k: v[keep] if isinstance(v, np.ndarray) else [v[i] for i in keep] for k, v in cols.items()}
        return cols


def _strategy(cuda: bool, torch) -> str:
    """The window strategy for this session (WINDOW_STRATEGY; module docstring)."""
    if WINDOW_STRATEGY != "auto":
        return WINDOW_STRATEGY
    toggles = hasattr(torch.profiler.profile, "toggle_collection_dynamic")
    return "toggle" if cuda and toggles else "schedule"


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the block (C++ log lines); Python's stderr flushed first."""
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _schedule(k: int, n: int):
    """torch.profiler schedule recording steps s with s % n < k (the capture's sampled steps):
    a warm-up step just before each window, the window's last step saves (on_trace_ready)."""
    from torch.profiler import ProfilerAction

    def action(step: int) -> ProfilerAction:
        pos = step % n
        if pos < k:
            return ProfilerAction.RECORD_AND_SAVE if pos == k - 1 else ProfilerAction.RECORD
        return ProfilerAction.WARMUP if pos == n - 1 else ProfilerAction.NONE

    return action


def _concat(chunks):
    if isinstance(chunks[0], np.ndarray):
        return np.concatenate(chunks)
    return [v for c in chunks for v in c]


def _convert(events, rank: int) -> dict[str, np.ndarray | list]:
    """`_KinetoEvent`s -> events columns. Correlations: a launch and its kernel share CUPTI's
    correlation id; a kernel's `linked_correlation_id` (and a CPU op's own id) is the external id."""
    pid = os.getpid()
    cols: dict[str, list] = {k: [] for k in (
        "source", "kind", "name", "device", "stream", "tid", "ts_ns", "duration_ns",
        "correlation", "external_id")}
    sync = re.compile(SYNC_NAME)
    for e in events:
        name = e.name()
        act = e.activity_type() if hasattr(e, "activity_type") else _guess_activity(e, name)
        if act in SKIP:
            continue
        src, kind = ACTIVITY_KINDS.get(act, ("cpu", "other"))
        if src == "cuda_api" and sync.match(name):
            kind = "sync"
        device_side = act in DEVICE_SIDE
        cols["source"].append(src)
        cols["kind"].append(kind)
        cols["name"].append(name)
        cols["device"].append(e.device_index() if device_side else None)
        cols["stream"].append(e.device_resource_id() if device_side else None)
        cols["tid"].append(None if device_side else e.device_resource_id())
        cols["ts_ns"].append(e.start_ns())
        cols["duration_ns"].append(e.duration_ns())
        if src in ("cpu", "annotation"):
            cols["correlation"].append(None)
            cols["external_id"].append(e.correlation_id())
        else:
            cols["correlation"].append(e.correlation_id())
            cols["external_id"].append(e.linked_correlation_id() or None)
    n = len(cols["name"])
    if n == 0:
        return {}
    out: dict[str, np.ndarray | list] = dict(cols)
    out["ts_ns"] = np.asarray(cols["ts_ns"], np.int64)
    out["duration_ns"] = np.asarray(cols["duration_ns"], np.int64)
    out["duration_us"] = out["duration_ns"] / 1000.0
    out["pid"] = np.full(n, pid, np.int64)
    out["rank"] = np.full(n, rank, np.int32)
    return out


def _guess_activity(e, name: str) -> str:
    """Activity type for torch builds whose `_KinetoEvent` lacks `activity_type()`."""
    if str(e.device_type()).endswith("CUDA"):
        low = name.lower()
        return "gpu_memcpy" if low.startswith("memcpy") else "gpu_memset" if low.startswith("memset") else "kernel"
    if name.startswith(("cuda", "cu")) and e.linked_correlation_id() == 0 and e.correlation_id() != 0:
        return "cuda_runtime"
    return "cpu_op"


def _marker_offset(cols: dict, marker: tuple[int, int] | None, slack_ns: int = 1_000_000) -> int:
    """0 when the profiler's host clock agrees with time.time_ns() (the marker's
    cudaDeviceSynchronize lies within its host window, give or take `slack_ns`); otherwise the
    offset that centres it there (Kineto converts CUPTI times to the system clock; this guards
    against a build that does not)."""
    if marker is None:
        return 0
    names = np.asarray(cols["name"], dtype=object)
    hit = np.flatnonzero((names == "cudaDeviceSynchronize") & (np.asarray(cols["source"], dtype=object) == "cuda_api"))
    if len(hit) == 0:
        return 0
    i = hit[np.argmin(cols["ts_ns"][hit])]
    t0, t1 = marker
    ts, dur = int(cols["ts_ns"][i]), int(cols["duration_ns"][i])
    if t0 - slack_ns <= ts <= t1 + slack_ns:
        return 0
    return (t0 + t1) // 2 - (ts + dur // 2)


def align_threads(cols: dict, tid: int) -> int | None:
    """Give the launching thread the hooks' thread id when the profiler named it otherwise.

    Attribution matches a launch to the scopes open on its (pid, tid). When no runtime call
    carries the hooks' tid, the thread with the most runtime calls is the model's; its rows get
    `tid`. Returns the id replaced, or None when nothing was changed."""
    src = np.asarray(cols["source"], dtype=object)
    tids = np.asarray([-1 if t is None else t for t in cols["tid"]], np.int64)
    api = tids[src == "cuda_api"]
    if len(api) == 0 or (api == tid).any():
        return None
    values, counts = np.unique(api, return_counts=True)
    old = int(values[np.argmax(counts)])
    cols["tid"] = [tid if t == old else t for t in cols["tid"]]
    return old
