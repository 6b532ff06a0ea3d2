"""Module scopes: which modules of a model get hooks, and what each hook records.

`plan(model)` walks the module tree once and keeps the modules the shared recognizer
(`hybridscope.attribute.recognize.classify_module`) gives a structural role worth timing:
decoder blocks, mixers, attention, MoE blocks, routers, experts, dense MLPs, embeddings and
the LM head. Norms and rotary embeddings are not hooked: their time stays in the enclosing
block's own (exclusive) time. A module is accepted on its class name, or on the last component
of its path (`lm_head`, `gate`), never on an ancestor's path component alone (otherwise every
Linear inside a `mixer` would be hooked).

Layer types: a weak type (`norm`, `mlp`) yields to a strong enclosing one (a shared-expert MLP
inside an MoE block is `moe_experts`), and a block, which has no type of its own, takes the type
of its strong child (its exclusive time is the norm and residual of that layer).

`Recorder` holds the hot path: `pre(i)` / `post(i, output)` for hooked module i. Each records
one scope instance (host clock), one timer mark each side, and, for routers, the routing counts.
Everything is appended to bounded Python lists; when full, instances are dropped and counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from hybridscope.attribute.recognize import WEAK_TYPES, classify_module

HOOK_ROLES = frozenset({
    "block", "mixer", "attention", "moe", "router", "experts", "mlp", "embedding", "lm_head",
    "sampling", "moe_comm",
})
STRONG_ROLES = frozenset({"mixer", "attention", "moe"})
# Roles whose submodules are not hooked (a Conv1d inside a Mamba mixer adds cost, not meaning).
LEAF_ROLES = frozenset({"mixer", "attention", "router", "experts", "mlp", "embedding", "lm_head", "sampling"})
EXPERT_COUNT_ATTRS = ("num_experts", "n_routed_experts", "num_local_experts", "n_experts")


@dataclass(frozen=True)
class Spec:
    """One hooked module: where it is, what it is, and (routers) how many experts it picks from."""

    idx: int
    path: str
    module_class: str
    role: str
    layer_type: str | None
    layer_index: int | None
    family: str | None
    n_experts: int | None = None


def recognize(module, path: str):
    """The recognizer's answer for one module, or None when it is not to be hooked."""
    cls = type(module).__name__
    if classify_module(cls) is not None:
        info = classify_module(cls, path)
    elif classify_module("", path.rsplit(".", 1)[-1]) is not None:
        info = classify_module("", path)  # the last component is what the recognizer sees here
    else:
        return None
    return info if info.role in HOOK_ROLES else None


def is_hybrid_model(model) -> bool:
    """True when the model holds at least one recognized decoder block with a strong child."""
    return any(s.role == "block" and s.layer_type is not None for s, _ in plan(model))


def plan(model) -> list[tuple[Spec, object]]:
    """(Spec, module) for every module to hook, in `named_modules` order (parents first)."""
    found, leaves = [], []
    for path, module in model.named_modules():
        if not path:
            continue  # the model itself is the step, not a scope
        if any(path.startswith(leaf) for leaf in leaves) and not _strong_by_class(module):
            continue  # inside a leaf only a mixer/attention class counts (a parallel hybrid's halves)
        info = recognize(module, path)
        if info is not None:
            found.append((path, module, info))
            if info.role in LEAF_ROLES:
                leaves.append(path + ".")
    by_path = {p: info for p, _, info in found}
    specs = []
    for i, (path, module, info) in enumerate(found):
        layer_type = _resolve_type(path, info, by_path)
        n_experts = _expert_count(module) if info.role == "router" else None
        specs.append((Spec(i, path, type(module).__name__, info.role, layer_type, info.layer_index,
                           info.family, n_experts), module))
    return specs


def _strong_by_class(module) -> bool:
    info = classify_module(type(module).__name__)
    return info is not None and info.role in STRONG_ROLES


def _resolve_type(path: str, info, by_path: dict) -> str | None:
    if info.role == "block":  # a strong child's type, else the first typed child's (a dense MLP)
        children = [i for p, i in by_path.items() if p.startswith(path + ".") and i.layer_type]
        strong = [i for i in children if i.role in STRONG_ROLES]
        return (strong or children or [info])[0].layer_type
    if info.layer_type in WEAK_TYPES:
        parts = path.split(".")
        for k in range(len(parts) - 1, 0, -1):
            anc = by_path.get(".".join(parts[:k]))
            if anc is not None and anc.role in STRONG_ROLES and anc.layer_type:
                return anc.layer_type
    return info.layer_type


def _expert_count(module) -> int | None:
    for attr in EXPERT_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    weight = getattr(module, "weight", None)
    if weight is not None and getattr(weight, "ndim", 0) == 2:
        return int(weight.shape[0])  # a gate Linear(hidden -> experts) stores [experts, hidden]
    return None


class Recorder:
    """The hot path of the hooks. Not thread-safe by design: one thread drives the model.

    Per scope instance (one module call) it keeps: spec index, parent instance, step, host start
    and end (run clock, ns) and nesting depth. `timer` (layers mode) gets a start and an end mark;
    `routing` gets router outputs. Instances past `capacity` are dropped and counted.
    """

    def __init__(self, specs: list[Spec], *, capacity: int, timer=None, routing=None):
        self.specs = specs
        self.capacity = capacity
        self.timer = timer
        self.routing = routing
        self.offset = time.time_ns() - time.perf_counter_ns()
        self.tid = threading.get_native_id()
        self.stack: list[tuple[int, int, int]] = []  # (instance or -1 when dropped, spec, t0)
        self.inst_spec: list[int] = []
        self.inst_parent: list[int] = []
        self.inst_step: list[int] = []
        self.rows: list[tuple[int, int, int, int]] = []  # (instance, t0, t1, depth)
        self.step = 0
        self.drops = 0
        self.mismatches = 0

    def pre(self, i: int) -> None:
        n = len(self.inst_spec)
        if n >= self.capacity or (self.timer is not None and not self.timer.room()):
            self.drops += 1
            self.stack.append((-1, i, 0))
            return
        self.inst_spec.append(i)
        self.inst_parent.append(self.stack[-1][0] if self.stack else -1)
        self.inst_step.append(self.step)
        self.stack.append((n, i, time.perf_counter_ns()))
        if self.timer is not None:
            self.timer.mark(n, True)  # last: the hook's own cost stays outside the interval

    def post(self, i: int, output) -> None:
        if not self.stack:
            return  # armed in the middle of this module's call: its start was never seen
        inst, spec, t0 = self.stack.pop()
        if spec != i:  # a call that raised past a hook-less frame; realign on this module
            self.mismatches += 1
            while self.stack and spec != i:
                inst, spec, t0 = self.stack.pop()
            if spec != i:
                return
        if inst < 0:
            return
        if self.timer is not None:
            self.timer.mark(inst, False)
        self.rows.append((inst, t0, time.perf_counter_ns(), len(self.stack)))
        if self.routing is not None and self.specs[i].role == "router":
            self.routing.add(self.step, self.specs[i], output)

    def reset_stack(self) -> None:
        """At a step boundary nothing is open; leftovers come from calls that raised."""
        self.stack.clear()

    def parents(self) -> np.ndarray:
        return np.asarray(self.inst_parent, np.int64)

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
        return {
            "rank": np.full(n, rank, np.int32), "event_id": inst,
            "source": ["annotation"] * n, "kind": ["user_annotation"] * n,
            "name": [f"{sp[s].module_class}: {sp[s].path}" for s in spec],
            "pid": np.full(n, pid, np.int64), "tid": np.full(n, self.tid, np.int64),
            "ts_ns": rows[:, 1] + self.offset, "duration_ns": dur, "duration_us": dur / 1000.0,
            "layer_type": [sp[s].layer_type for s in spec],
            "layer_index": [sp[s].layer_index for s in spec],
            "module": [sp[s].path for s in spec],
            "step": np.asarray(self.inst_step, np.int32)[inst],
        }


def install(specs_modules, recorder: Recorder, faults) -> list:
    """Register the pre/post hooks; return their handles. Each hook swallows its own failures."""
    handles = []
    for spec, module in specs_modules:
        handles.append(module.register_forward_pre_hook(_pre_hook(recorder, spec.idx, faults)))
        handles.append(module.register_forward_hook(_post_hook(recorder, spec.idx, faults), always_call=True))
    return handles


def _pre_hook(recorder: Recorder, i: int, faults):
    def hook(module, args):
        if faults.disabled("hook.pre"):
            return
        try:
            recorder.pre(i)
        except Exception as e:  # noqa: BLE001 - capture never takes the workload down
            faults.record("hook.pre", e)
        return

    return hook


def _post_hook(recorder: Recorder, i: int, faults):
    def hook(module, args, output):
        if faults.disabled("hook.post"):
            return
        try:
            recorder.post(i, output)
        except Exception as e:  # noqa: BLE001 - capture never takes the workload down
            faults.record("hook.post", e)
        return  # never replaces the module's output

    return hook
