"""`layers` mode: per-module device time from marks recorded around each hooked module.

Each pre/post hook leaves one *mark* (a start or an end of one module invocation, an "instance").
On CUDA a mark is a CUDA event recorded on the current stream (no CUPTI, no sync); on CPU it is
`time.perf_counter_ns()` read in the hook, which is the module's time on the host thread (there is
no device timeline to read: CPU ops run synchronously inside the call).

Marks are kept per step, in hook order, which is stream order for modules on one stream. They are
read back lazily: CUDA events are only resolved once the step's last event has completed
(`event.query()`, never a synchronize), and only when the pool of pending events grows past half
its capacity, or when free events run low, or at flush: the hot path never waits for the GPU.
Events are created ahead (at arm time) and recycled, since creating one costs far more than
recording or reading it (numbers in docs/benchmarks.md).

Times are *exclusive*: between two consecutive marks the device was working for the innermost
instance open at that point, so an instance's row gets the time between its marks minus that of
its timed children. Rows of one layer therefore add up to the layer's span without double counts.
Absolute positions: the first mark of each step is placed from the previous step's first mark
(chained, each `elapsed_time` short, so float32 milliseconds keep sub-microsecond precision), the
chain starting at a reference event recorded after one synchronize at arm time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Resolved:
    """Exclusive times of resolved instances, as columns (one entry per instance with marks)."""

    inst: list[np.ndarray] = field(default_factory=list)
    ts_ns: list[np.ndarray] = field(default_factory=list)
    excl_ns: list[np.ndarray] = field(default_factory=list)
    incl_ns: list[np.ndarray] = field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return {"inst": cat(self.inst, np.int64), "ts_ns": cat(self.ts_ns, np.int64),
                "excl_ns": cat(self.excl_ns, np.int64), "incl_ns": cat(self.incl_ns, np.int64)}


def exclusive_times(
    t_ns: np.ndarray, inst: np.ndarray, is_start: np.ndarray, parent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per instance: (ids, start ns, exclusive ns, inclusive ns) from one step's ordered marks.

    `parent[i]` is the parent instance of instance i (-1 for none), indexed by instance id.
    The segment after a start mark belongs to that instance; after an end mark, to its parent.
    Instances whose end mark is missing (dropped, or still open at flush) are left out.
    """
    owner = np.where(is_start, inst, parent[inst])
    seg = np.diff(t_ns)
    own = owner[:-1]
    ids = np.unique(inst)
    starts = np.full(ids.shape, -1, np.int64)
    ends = np.full(ids.shape, -1, np.int64)
    pos = np.searchsorted(ids, inst)
    starts[pos[is_start]] = t_ns[is_start]
    ends[pos[~is_start]] = t_ns[~is_start]
    excl = np.zeros(ids.shape, np.float64)
    keep_seg = own >= 0
    np.add.at(excl, np.searchsorted(ids, own[keep_seg]), seg[keep_seg])
    ok = (starts >= 0) & (ends >= 0)
    return ids[ok], starts[ok], excl[ok].astype(np.int64), (ends - starts)[ok]


class CpuTimer:
    """Marks from perf_counter_ns, mapped onto the run clock (time.time_ns) by one offset."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.offset = time.time_ns() - time.perf_counter_ns()
        self.t: list[int] = []
        self.inst: list[int] = []
        self.start: list[bool] = []
        self.drops = 0

    def room(self) -> bool:
        return len(self.t) + 2 <= self.capacity

    def mark(self, inst: int, is_start: bool) -> None:
        self.t.append(time.perf_counter_ns())
        self.inst.append(inst)
        self.start.append(is_start)

    def step_boundary(self) -> None:
        """Nothing to do on CPU: every mark is already a time."""

    def resolve(self, parents, final: bool, faults=None, live: bool = False) -> Resolved:
        """All marks so far (CPU marks are times already); `parents()` gives the parent array.
        Only at `final`, or `live` (observers want the times now; called at a step boundary, where
        every instance of the closed steps has ended)."""
        out = Resolved()
        if not self.t or not (final or live):
            return out
        t = np.asarray(self.t, np.int64) + self.offset
        ids, st, ex, inc = exclusive_times(t, np.asarray(self.inst), np.asarray(self.start), parents())
        out.inst.append(ids), out.ts_ns.append(st), out.excl_ns.append(ex), out.incl_ns.append(inc)
        self.t, self.inst, self.start = [], [], []
        return out


# Timing events outlive a capture: creating a CUDA event costs far more than recording one, so
# events are created at arm time (`prewarm`) and kept for the next capture of the process.
SHARED_POOL: list = []
POOL_KEEP = 1 << 16


def _fast_record(torch, probe):
    """(record, current stream key, stream from key) bypassing `torch.cuda.Event.record()`.

    `Event.record()` with no stream calls `torch.cuda.current_stream()`, which builds a Python
    Stream object per call; that and the wrapper cost several microseconds a mark on an H100 host
    (docs/benchmarks.md). Here the current stream is read as a tuple (a C call) and the Stream
    object is rebuilt only when it changes, so marks still follow `torch.cuda.stream(...)`
    switches. Returns None (the plain `record()` is used) when this torch lacks these entry
    points or the probe record fails."""
    try:
        base = torch._C._CudaEventBase.record
        current = torch._C._cuda_getCurrentStream
        dev = torch.cuda.current_device()

        def key():
            return current(dev)

        def stream(k):
            return torch.cuda.Stream(stream_id=k[0], device_index=k[1], device_type=k[2])

        if probe is not None:
            base(probe, stream(key()))
        return base, key, stream
    except Exception:  # noqa: BLE001 - an internal API moved: fall back to the public one
        return None


class CudaTimer:
    """Marks from CUDA events on the current stream, read back lazily (see module docstring).

    `pool`: where free events wait (default: the process-wide SHARED_POOL); `prewarm`: events
    to have ready before the first mark (created and recorded once now, outside the run)."""

    def __init__(self, capacity: int, torch, pool: list | None = None, prewarm: int = 0):
        self.torch = torch
        self.capacity = capacity
        self.pool: list = SHARED_POOL if pool is None else pool  # free events
        for _ in range(max(0, min(prewarm, POOL_KEEP) - len(self.pool))):
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()  # the CUDA event itself is created on first record
            self.pool.append(ev)
        self._record = _fast_record(torch, self.pool[0] if self.pool else None)
        self._stream_key = None       # (stream id, device, type) of the cached stream object
        self._stream = None
        self.n_live = 0               # events handed out and not yet recycled
        self.current: list = []       # marks of the running step: (event, inst, is_start)
        self.pending: deque = deque()  # finished steps waiting for their events
        self.step_marks = 0            # most marks seen in one step
        self.drops = 0
        torch.cuda.synchronize()
        self.ref = torch.cuda.Event(enable_timing=True)
        self.ref.record()
        self.ref_ns = time.time_ns()  # the stream was idle: the reference event ran just now
        self.anchor, self.anchor_ns = self.ref, self.ref_ns

    def room(self) -> bool:
        return self.n_live + 2 <= self.capacity

    def mark(self, inst: int, is_start: bool) -> None:
        pool = self.pool
        ev = pool.pop() if pool else self.torch.cuda.Event(enable_timing=True)
        self.n_live += 1
        rec = self._record
        if rec is None:
            ev.record()
        else:  # the current stream, without building a Stream object per mark (see _fast_record)
            key = rec[1]()
            if key != self._stream_key:
                self._stream_key, self._stream = key, rec[2](key)
            rec[0](ev, self._stream)
        self.current.append((ev, inst, is_start))

    def step_boundary(self) -> None:
        if self.current:
            self.step_marks = max(self.step_marks, len(self.current))
            self.pending.append(self.current)
            self.current = []

    def resolve(self, parents, final: bool, faults=None, live: bool = False) -> Resolved:
        """Resolve pending steps whose events completed; at `final`, synchronize and take all;
        `live` (observers want the times now): every pending step whose events completed.

        Not final: only when free events run low (fewer than two steps' worth) or half the
        capacity is in flight; reading back costs less than creating events, and a step whose
        events have not completed yet is left for later (never waited for)."""
        out = Resolved()
        if final:
            self.step_boundary()
            self.torch.cuda.synchronize()
            out = self._resolve_all(parents, faults)
            if self.anchor is not self.ref:
                self.pool.append(self.anchor)
                self.anchor = self.ref
            del self.pool[POOL_KEEP:]
            return out
        if not live and self.n_live < self.capacity // 2 and len(self.pool) >= 2 * self.step_marks:
            return out
        return self._resolve_all(parents, faults, only_done=True)

    def _resolve_all(self, parents, faults, only_done: bool = False) -> Resolved:
        out = Resolved()
        parent = parents()
        while self.pending:
            marks = self.pending[0]
            if only_done and not marks[-1][0].query():
                break
            self.pending.popleft()
            try:
                self._resolve_step(marks, parent, out)
            except Exception as e:  # a step we cannot read is counted, the rest goes on
                if faults is None:
                    raise
                faults.record("layers.resolve", e)
            self._recycle(marks)
        return out

    def _recycle(self, marks) -> None:
        """Return a resolved step's events to the pool, keeping its first as the next anchor."""
        for ev, _, _ in marks:
            if ev is not self.anchor:
                self.pool.append(ev)
                self.n_live -= 1

    def _resolve_step(self, marks, parent: np.ndarray, out: Resolved) -> None:
        first = marks[0][0]
        base_ns = self.anchor_ns + round(self.anchor.elapsed_time(first) * 1e6)
        if self.anchor is not self.ref:  # the old anchor is free again
            self.pool.append(self.anchor)
            self.n_live -= 1
        self.anchor, self.anchor_ns = first, base_ns
        rel = np.fromiter((first.elapsed_time(m[0]) for m in marks), np.float64, len(marks))
        t = base_ns + np.round(rel * 1e6).astype(np.int64)
        inst = np.fromiter((m[1] for m in marks), np.int64, len(marks))
        is_start = np.fromiter((m[2] for m in marks), bool, len(marks))
        ids, st, ex, inc = exclusive_times(t, inst, is_start, parent)
        out.inst.append(ids), out.ts_ns.append(st), out.excl_ns.append(ex), out.incl_ns.append(inc)
