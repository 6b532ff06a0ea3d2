"""`kernels` mode: kernel-level events through torch.profiler / Kineto, converted straight to columns.

On a GPU the profiler runs with CUDA activities only: kernels, memcpy/memset and the CUDA runtime
calls that launched them (CUPTI correlation ids), without recording every aten op on the CPU,
which is what makes `torch.profiler` with CPU activities so expensive on eager decode. Kernels get
their layer through the hooks' scopes: kernel -> correlation -> launch (host time, thread) ->
innermost scope, by `hybridscope.attribute` like any import. On CPU there is no device timeline:
the profiler records CPU ops (source 'cpu', kind 'cpu_op'), attributed the same way.

Windowed sampling `window=(k, n)`: the first k steps of every n are profiled, the same steps
that get module hooks (capture.session, Sampling); a torch.profiler schedule (`_schedule`) turns
the profiler off outside them, with one warm-up step before each window, so a long run pays for
CUPTI only in its windows. `n == 1`: one profiler session for the whole run.
The results of each window are kept as the profiler's own result objects and converted at flush,
so the run itself pays only for the profiler, not for the conversion. `max_windows` bounds them;
windows past it are dropped and counted.

Conversion reads `_KinetoEvent` accessors into columns (`_convert`); benchmarks/bench_capture.py
compares it with exporting a Chrome trace and importing it.
"""

from __future__ import annotations

import os
import re
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


class KernelBackend:
    """Owns one torch.profiler session; `step()` at each step boundary, `stop()` at the end."""

    def __init__(self, *, cuda: bool, window: tuple[int, int] | None, max_windows: int, faults):
        import torch

        self.torch = torch
        self.cuda = cuda
        self.window = window
        self.max_windows = max_windows
        self.faults = faults
        self.results: list = []
        self.dropped_windows = 0
        self.prof = None
        self.marker: tuple[int, int] | None = None
        self.clock_offset_ns = 0

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CUDA] if self.cuda else [ProfilerActivity.CPU]
        sched = None
        if self.window is not None and self.window[1] > self.window[0]:
            sched = _schedule(*self.window)
        with warnings.catch_warnings():  # "clears events at the end of each cycle": _keep holds them
            warnings.simplefilter("ignore", UserWarning)
            self.prof = profile(activities=acts, schedule=sched, on_trace_ready=self._keep)
            self.prof.start()
        if self.cuda and sched is None:
            # a runtime call at a known host time: `columns` checks the launch clock against it
            t0 = time.time_ns()
            self.torch.cuda.synchronize()
            self.marker = (t0, time.time_ns())

    def step(self) -> None:
        if self.prof is not None and self.window is not None:
            with warnings.catch_warnings():  # the same warning at each new cycle
                warnings.simplefilter("ignore", UserWarning)
                self.prof.step()

    def stop(self) -> None:
        """Stop the profiler; torch.profiler hands a window still recording to `_keep`."""
        if self.prof is None:
            return
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
        return cols


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
