"""Timed CUDA-graph replays read back (live.graphs): new instances per replay, a plain `pre` event
recorded just before it, and the replay's timing events read once they completed (at a step
boundary, `resolve()`), at the latest before the same graph is timed again (its events are recorded
again then), or all at the end (`final`).

Absolute times chain from one `pre` to the next (each `elapsed_time` short, so float32 milliseconds
keep sub-microsecond precision), starting at the layer timer's reference event (live.layers).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hybridscope.live.layers import Resolved, exclusive_times


class ReplayTimes:
    def __init__(self, armed, torch):
        self.armed, self.torch = armed, torch
        self.pending: deque = deque()  # (graph info, pre event, first instance id, step)
        self.free: list = []           # plain timing events for `pre`
        self.anchor, self.anchor_ns = armed.timer.ref, armed.timer.ref_ns
        self.drops = 0

    def arm(self, info):
        """Before a timed replay: read the last one of this graph, new instances, the `pre` event."""
        for item in list(self.pending):
            if item[0] is info:
                self.resolve(until=item)
        rec = self.armed.recorder
        k = len(info.specs)
        if len(rec.inst_spec) + k > rec.capacity:
            self.drops += 1
            return None
        base = len(rec.inst_spec)
        rec.inst_spec.extend(info.specs.tolist())
        rec.inst_parent.extend(np.where(info.parents >= 0, info.parents + base, -1).tolist())
        rec.inst_step.extend([rec.step] * k)
        self.armed.replay_insts.append((base, k, info.key))
        pre = self.free.pop() if self.free else self.torch.cuda.Event(enable_timing=True)
        pre.record()
        self.pending.append((info, pre, base, rec.step))
        return pre

    def forget(self, info) -> None:
        """Drop the pending readback of `info` armed last (its replay did not run)."""
        if self.pending and self.pending[-1][0] is info:
            self.free.append(self.pending.pop()[1])

    def resolve(self, until=None, final: bool = False) -> Resolved:
        """Read back timed replays: those complete (lazy), or up to `until` / all (`final`), in
        order; the results go to the armed capture (`_take`)."""
        out = Resolved()
        parent = None
        while self.pending:
            info, pre, base, _ = item = self.pending[0]
            last = info.marks[-1][0]
            forced = final or until is not None
            if not forced and not last.query():
                break
            if forced:
                last.synchronize()
            self.pending.popleft()
            if parent is None:
                parent = self.armed.recorder.parents()
            self._resolve_one(info, pre, base, parent, out)
            if item is until:
                break
        self.armed.take(out)
        return out

    def _resolve_one(self, info, pre, base: int, parent: np.ndarray, out: Resolved) -> None:
        base_ns = self.anchor_ns + round(self.anchor.elapsed_time(pre) * 1e6)
        if self.anchor is not self.armed.timer.ref:
            self.free.append(self.anchor)
        self.anchor, self.anchor_ns = pre, base_ns
        seen: dict[int, float] = {}  # a boundary's event serves an end and the next start: read once
        rel = np.fromiter((seen[id(m[0])] if id(m[0]) in seen else seen.setdefault(id(m[0]), pre.elapsed_time(m[0]))
                           for m in info.marks), np.float64, len(info.marks))
        t = base_ns + np.round(rel * 1e6).astype(np.int64)
        inst = base + np.fromiter((m[1] for m in info.marks), np.int64, len(info.marks))
        is_start = np.fromiter((m[2] for m in info.marks), bool, len(info.marks))
        ids, st, ex, inc = exclusive_times(t, inst, is_start, parent)
        out.inst.append(ids), out.ts_ns.append(st), out.excl_ns.append(ex), out.incl_ns.append(inc)
