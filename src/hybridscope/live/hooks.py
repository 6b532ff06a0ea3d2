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
from time import perf_counter_ns

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


def plan(model, prune: bool = True) -> list[tuple[Spec, object]]:
    """(Spec, module) for every module to hook, in `named_modules` order (parents first).

    `prune`: leave out a strong module that is its block's only hooked direct child (`_redundant`)."""
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
    types = [_resolve_type(path, info, by_path) for path, _, info in found]  # before pruning
    pruned = _redundant(found) if prune else set()
    specs = []
    for (path, module, info), layer_type in zip(found, types):
        if path in pruned:
            continue
        n_experts = _expert_count(module) if info.role == "router" else None
        specs.append((Spec(len(specs), path, type(module).__name__, info.role, layer_type, info.layer_index,
                           info.family, n_experts), module))
    return specs


def _redundant(found: list) -> set[str]:
    """Paths of strong modules (mixer / attention / MoE) that are the only hooked child of their
    block: the block's scope already carries their layer type, index and time (plus the norm and
    residual around them), so hooking them too costs two hook calls per layer and adds no layer
    type. A block with two strong children (a parallel hybrid) keeps both."""
    children: dict[str, list] = {}
    blocks = {p for p, _, info in found if info.role == "block"}
    for path, _, info in found:
        parent = next((b for b in blocks if path.startswith(b + ".")), None)
        if parent is not None and "." not in path[len(parent) + 1:]:
            children.setdefault(parent, []).append((path, info))
    return {kids[0][0] for kids in children.values() if len(kids) == 1 and kids[0][1].role in STRONG_ROLES}


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
