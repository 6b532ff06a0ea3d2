"""Module scopes: the hooks on the modules `live.plan` chose, and what each hook records.

`Recorder` holds the hot path: `pre(i)` / `post(i, output)` for hooked module i. Each records
one scope instance (host clock), one timer mark each side, and, for routers, the routing counts.
Everything is appended to bounded Python lists; when full, instances are dropped and counted.
"""

from __future__ import annotations

import threading
import time
from time import perf_counter_ns

import numpy as np

from hybridscope.live.plan import HOOK_ROLES, Spec, is_hybrid_model, plan  # noqa: F401 - capture's entry points


class Mirror:
    """An int64 numpy copy of an append-only list, brought up to date in O(new items): the buffer
    doubles when full, so the copying is amortized O(1) per item whatever the run's length."""

    def __init__(self, items: list[int]):
        self.items, self.buf, self.n = items, np.empty(0, np.int64), 0

    def array(self) -> np.ndarray:
        n = len(self.items)
        if n > self.buf.size:
            grown = np.empty(max(n, 2 * self.buf.size, 1024), np.int64)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        if n > self.n:
            self.buf[self.n:n] = self.items[self.n:n]
            self.n = n
        return self.buf[:n]


class Recorder:
    """The hot path of the hooks. Not thread-safe by design: one thread drives the model.

    Per scope instance (one module call) it keeps: spec index, parent instance, step, host start
    and end (run clock, ns) and nesting depth. `timer` (layers mode) gets a start and an end mark;
    `routing` gets router outputs. Instances past `capacity` are dropped and counted.
    Hot-path costs are kept to list appends of ints and one clock read per side: every
    microsecond here is added to each module call of a launch-bound decode step.
    """

    def __init__(self, specs: list[Spec], *, capacity: int, timer=None, routing=None):
        self.specs = specs
        self.capacity = capacity
        self.timer = timer
        self.routing = routing
        self.is_router = [s.role == "router" for s in specs]
        self.offset = time.time_ns() - time.perf_counter_ns()
        self.tid = threading.get_native_id()
        self.stack: list[tuple[int, int, int]] = []  # (instance or -1 when dropped, spec, t0)
        self.inst_spec: list[int] = []
        self.inst_parent: list[int] = []
        self.inst_step: list[int] = []
        # numpy copies of those, brought up to date with the new instances only (readback at step
        # boundaries indexes them: converting a whole list each time grew with the run's length)
        self.mirrors = {name: Mirror(getattr(self, name)) for name in ("inst_spec", "inst_parent", "inst_step")}
        self.rows: list[tuple[int, int, int, int]] = []  # (instance, t0, t1, depth)
        self.step = 0
        self.drops = 0
        self.mismatches = 0
        self.off = False  # set once a hook place failed too often (Faults.limit)

    def pre(self, i: int) -> None:
        n = len(self.inst_spec)
        stack = self.stack
        timer = self.timer
        if n >= self.capacity or (timer is not None and not timer.room()):
            self.drops += 1
            stack.append((-1, i, 0))
            return
        self.inst_spec.append(i)
        self.inst_parent.append(stack[-1][0] if stack else -1)
        self.inst_step.append(self.step)
        stack.append((n, i, perf_counter_ns()))
        if timer is not None:
            timer.mark(n, True)  # last: the hook's own cost stays outside the interval

    def post(self, i: int, output) -> None:
        stack = self.stack
        if not stack:
            return  # armed in the middle of this module's call: its start was never seen
        inst, spec, t0 = stack.pop()
        if spec != i:  # a call that raised past a hook-less frame; realign on this module
            self.mismatches += 1
            while stack and spec != i:
                inst, spec, t0 = stack.pop()
            if spec != i:
                return
        if inst < 0:
            return
        if self.timer is not None:
            self.timer.mark(inst, False)  # first: the hook's own cost stays outside the interval
        self.rows.append((inst, t0, perf_counter_ns(), len(stack)))
        if self.routing is not None and self.is_router[i]:
            self.routing.add(self.step, self.specs[i], output)

    def reset_stack(self) -> None:
        """At a step boundary nothing is open; leftovers come from calls that raised."""
        self.stack.clear()

    def instance_index(self) -> np.ndarray:
        """Layer index per instance: its module's, else the enclosing instance's (a shared module
        runs inside several layers, live.plan); -1 where neither knows one."""
        own = [-1 if s.layer_index is None else s.layer_index for s in self.specs]
        out = np.empty(len(self.inst_spec), np.int64)
        for k, (spec, parent) in enumerate(zip(self.inst_spec, self.inst_parent)):
            out[k] = own[spec] if own[spec] >= 0 or parent < 0 else out[parent]
        return out

    def parents(self) -> np.ndarray:
        return self.mirrors["inst_parent"].array()

    def column(self, name: str) -> np.ndarray:
        """`inst_spec`, `inst_parent` or `inst_step` as an int64 array (do not write to it)."""
        return self.mirrors[name].array()

    def annotation_columns(self, rank: int, pid: int) -> dict[str, np.ndarray | list]:
        """Every closed instance as an `events` row (source 'annotation', named `Class: path`,
        which the recognizer reads like any record_function range); event_id = instance id.
        `hybridscope.attribute` builds the `scopes` rows from these, as for an import."""
        if not self.rows:
            return {}
        rows = np.asarray(self.rows, np.int64)
        inst = rows[:, 0]
        spec = np.asarray(self.inst_spec, np.int64)[inst]
        sp = self.specs
        n = len(inst)
        dur = rows[:, 2] - rows[:, 1]
        index = self.instance_index()[inst]
        return {
            "rank": np.full(n, rank, np.int32), "event_id": inst,
            "source": ["annotation"] * n, "kind": ["user_annotation"] * n,
            "name": [f"{sp[s].module_class}: {sp[s].path}" for s in spec],
            "pid": np.full(n, pid, np.int64), "tid": np.full(n, self.tid, np.int64),
            "ts_ns": rows[:, 1] + self.offset, "duration_ns": dur, "duration_us": dur / 1000.0,
            "layer_type": [sp[s].layer_type for s in spec],
            "layer_index": [None if i < 0 else int(i) for i in index],
            "module": [sp[s].path for s in spec],
            "args": [f'{{"role":"{sp[s].role}"}}' for s in spec],  # attribution: capture's role and type win
            "step": np.asarray(self.inst_step, np.int32)[inst],
        }


class Hooks:
    """The module hooks of one capture, installed and removed as a set (`install` / `remove`).

    Hook functions are built once; installing registers them again (a few microseconds per
    module, paid at the boundary of a sampled step), removing drops them so that an unsampled
    step runs with no module hook at all (torch's hook-free fast path)."""

    def __init__(self, specs_modules, recorder: Recorder, faults):
        self.fns = [(module, _pre_hook(recorder, spec.idx, faults), _post_hook(recorder, spec.idx, faults))
                    for spec, module in specs_modules]
        self.handles: list = []
        self.installs = 0

    @property
    def installed(self) -> bool:
        return bool(self.handles)

    def install(self) -> None:
        if self.handles:
            return
        for module, pre, post in self.fns:
            self.handles.append(module.register_forward_pre_hook(pre))
            self.handles.append(module.register_forward_hook(post, always_call=True))
        self.installs += 1

    def remove(self) -> None:
        handles, self.handles = self.handles, []
        for h in handles:
            h.remove()


def _pre_hook(recorder: Recorder, i: int, faults):
    pre = recorder.pre

    def hook(module, args):
        if recorder.off:
            return
        try:
            pre(i)
        except Exception as e:  # noqa: BLE001 - capture never takes the workload down
            faults.record("hook.pre", e)
            recorder.off = faults.disabled("hook.pre")
        return

    return hook


def _post_hook(recorder: Recorder, i: int, faults):
    post = recorder.post

    def hook(module, args, output):
        if recorder.off:
            return
        try:
            post(i, output)
        except Exception as e:  # noqa: BLE001 - capture never takes the workload down
            faults.record("hook.post", e)
            recorder.off = faults.disabled("hook.post")
        return  # never replaces the module's output

    return hook
