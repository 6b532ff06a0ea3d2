"""CUDA graphs under live capture: each replay is a step; layer times and kernel scopes inside it.

Module hooks do not run inside a replay, so while a capture is armed on a CUDA model,
`torch.cuda.CUDAGraph.capture_begin` / `capture_end` / `replay` are wrapped (`GraphWatch.install`,
undone at disarm):

- Every `replay()` is a step boundary (unless the program calls `cap.step()` itself), with the
  phase / token / request counts of the model call that was captured. Graphs captured before
  capture was armed are replayed untouched and counted (`graphs.not_instrumented`). The steps in
  which a graph was captured are noted (`capture_steps`): the capture, and the eager call engines
  run before it, are one-time costs that the warm-up rule leaves out (analyze/warmup.py).
- `kernels` mode: during a capture the module hooks are in place and CUDA collection is on, so the
  trace holds the capture phase (the launches with their scopes): attribution maps each replay's
  kernels to them (attribute/graphs.py, `graph_map`).
- `layers` mode, `graph_timing`:
  - 'variant' (default): right after the program's capture, the same model call is captured again
    into an *instrumented variant* (same memory pool; the hooks record external timing events,
    `torch.cuda.Event(external=True)`, at every boundary they time; its outputs are copied into
    the program's output tensors). One replay in `graph_every` runs the variant instead of the
    program's graph: timing events cost about 2.4 us each inside a graph (docs/benchmarks.md), so
    the amortized cost stays small. Only when the captured body was exactly one call of the model
    (no other tensor op inside the capture, checked with a dispatch mode) and its outputs are
    tensors: otherwise the graph is counted as not instrumented, with the reason.
  - 'inline': the events go into the program's own graph; every replay is timed (costly).
  - 'off': replays are steps, nothing more.
  Timed replays are read back lazily: a replay's events are read once they completed (`query`),
  and at the latest before the same graph is replayed again (the events are re-recorded then).
  Their instances get fresh ids, the captured template's specs and parents, and the replay's step;
  their layer rows carry the graph's id (`events.graph_id`) and their steps `graph_replay`.
  Routing: the instrumented capture holds each router's expert-id tensor (graph memory, rewritten
  by every replay), and a timed replay's ids are counted right behind it on the stream
  (`Routing.add_held`), unless two routers' ids share memory (noted in `routing_not_counted`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from hybridscope.live.graph_times import ReplayTimes
from hybridscope.live.routing import expert_ids

TIMINGS = ("variant", "inline", "off")
MARKS = ("blocks", "all")


@dataclass
class GraphInfo:
    key: int
    graph: object
    pool: object = None
    meta: tuple = (None, None, None)
    calls: int = 0                  # top-level model calls during the capture
    outside_ops: int = 0            # tensor ops in the capture outside the model call
    outside_names: list = field(default_factory=list)  # the first few of them
    call: tuple | None = None       # (args, kwargs) of the captured model call
    output: object = None
    variant: object = None          # the instrumented twin ('variant'), or the graph itself ('inline')
    keep: list = field(default_factory=list)  # the variant's own outputs, kept alive
    marks: list = field(default_factory=list)  # (external event, template instance, is_start)
    specs: np.ndarray | None = None  # template instance -> spec index
    parents: np.ndarray | None = None  # template instance -> template parent (-1: none)
    reason: str | None = None       # why it is not instrumented
    replays: int = 0
    timed: int = 0
    step: int | None = None         # the step the capture ran in (a one-time cost: analyze/warmup)
    routers: list = field(default_factory=list)  # (spec, expert ids) of the instrumented capture, held
    routing_reason: str | None = None  # why its timed replays' routing is not counted


# ops that launch no device work: allowed in a capture beside the model call (views are too)
_NO_WORK = frozenset({"empty", "empty_strided", "empty_like", "detach", "alias", "lift_fresh", "sym_size",
                      "sym_stride", "sym_numel", "sym_storage_offset", "_local_scalar_dense"})


class _Marks:
    """A timer for the hooks during an instrumented capture: external events into the graph.
    `blocks`: only top-level hooked modules (decoder blocks, embedding, LM head) are timed, and a
    block's start shares the event of the end just before it (one event per boundary: whatever
    runs between two blocks outside any module is counted in the second)."""

    def __init__(self, torch, out: list, parents: list | None):
        self.torch, self.out, self.parents = torch, out, parents

    def room(self) -> bool:
        return True

    def mark(self, inst: int, is_start: bool) -> None:
        if self.parents is not None:
            if self.parents[inst] >= 0:
                return
            if is_start and self.out and not self.out[-1][2]:
                self.out.append((self.out[-1][0], inst, True))
                return
        ev = self.torch.cuda.Event(enable_timing=True, external=True)
        ev.record()
        self.out.append((ev, inst, is_start))


class _HeldIds:
    """Stands in for live.routing during an instrumented capture: keeps each router's expert ids
    (a tensor of the graph's memory, which every replay rewrites) instead of counting them; the
    counts are taken after each timed replay (`Routing.add_held`)."""

    def __init__(self, out: list, routing):
        self.out, self.routing = out, routing

    def add(self, step: int, spec, output) -> None:
        if self.routing.known(spec):
            self.out.append((spec, expert_ids(spec, output)))


def _shared_memory(held: list) -> bool:
    """Whether two held id tensors overlap in memory (a workspace every router writes: after a
    replay it holds the last router's ids only)."""
    spans = sorted((ids.data_ptr(), ids.data_ptr() + ids.element_size() * (1 + sum(
        (n - 1) * st for n, st in zip(ids.shape, ids.stride())))) for _, ids in held if ids.numel())
    return any(b[0] < a[1] for a, b in pairwise(spans))


class GraphWatch:
    """The wrappers and the bookkeeping of one armed capture (see the module docstring)."""

    def __init__(self, armed, torch, timing: str, every: int, marks: str = "blocks"):
        self.armed, self.torch, self.timing, self.every, self.marks = armed, torch, timing, every, marks
        self.layers = armed.timer is not None and armed.cuda
        self.graphs: dict[int, GraphInfo] = {}
        self.capturing: GraphInfo | None = None
        self.busy = False              # capturing our own variant
        self.unknown: set[int] = set()
        self.unknown_replays = 0
        self.times = ReplayTimes(armed, torch) if self.layers else None
        self.saved: dict = {}
        self.mode = None

    # -- patching -------------------------------------------------------------------------------
    def install(self) -> None:
        cls = self.torch.cuda.CUDAGraph
        self.saved = {name: cls.__dict__[name] for name in ("capture_begin", "capture_end", "replay")
                      if name in cls.__dict__}
        begin = self.saved.get("capture_begin", cls.capture_begin)
        end = self.saved.get("capture_end", cls.capture_end)
        replay = self.saved.get("replay", cls.replay)
        watch = self

        def capture_begin(graph, *args, **kwargs):
            if watch.busy:
                return begin(graph, *args, **kwargs)
            watch._guard("graphs.begin", watch._begin, graph, args, kwargs)
            out = begin(graph, *args, **kwargs)
            # after torch's own capture prologue (its RNG state ops are no part of the body)
            watch._guard("graphs.begin", watch._start_mode)
            return out

        def capture_end(graph):
            if watch.busy:
                return end(graph)
            watch._guard("graphs.end", watch._stop_mode)
            out = end(graph)
            watch._guard("graphs.end", watch._end, graph)
            return out

        def replay_(graph):
            if watch.busy:
                return replay(graph)
            info = watch._guard("graphs.replay", watch._before_replay, graph)
            if info is not None and info.variant is not None and watch._timed(info):
                out = watch._guard_replay(info, replay, graph)
            else:
                out = replay(graph)
            watch.armed.last_end = time.perf_counter_ns()
            return out

        cls.capture_begin, cls.capture_end, cls.replay = capture_begin, capture_end, replay_

    def remove(self) -> None:
        cls = self.torch.cuda.CUDAGraph
        for name in ("capture_begin", "capture_end", "replay"):
            if name in self.saved:
                setattr(cls, name, self.saved[name])
            elif name in cls.__dict__:
                delattr(cls, name)
        self._stop_mode()

    def _guard(self, where: str, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - capture never takes the workload down
            self.armed.faults.record(where, e)
            return None

    # -- capture --------------------------------------------------------------------------------
    def _begin(self, graph, args, kwargs) -> None:
        pool = kwargs.get("pool", args[0] if args else None)
        info = GraphInfo(key=len(self.graphs) + 1, graph=graph, pool=pool, step=self.armed.recorder.step)
        self.graphs[id(graph)] = info
        self.capturing = info
        a = self.armed
        a.recorder.routing = None  # router outputs under capture are placeholders, not counts
        if a.kernels is not None:  # the capture phase is what maps the replays (attribute.graphs)
            a.hooks.install()
            a.kernels.force_collect(True)
        elif self.layers and self.timing == "inline":
            a.hooks.install()
            a.recorder.reset_stack()
            a.recorder.routing = _HeldIds(info.routers, a.routing)
            self._swap_timer(info.marks)
        else:
            a.hooks.remove()

    def _end(self, graph) -> None:
        info, self.capturing = self.capturing, None
        a = self.armed
        self._stop_mode()
        self._restore_timer()
        a.recorder.routing = a.routing
        if a.kernels is not None:
            a.kernels.force_collect(None)
        if info is None or info.graph is not graph:
            return
        if not self.layers or self.timing == "off":
            info.reason = "graph timing off" if self.layers else None
        elif self.timing == "inline":
            self._template(info, graph)
        else:
            self._variant(info)
        self._check_routers(info)
        info.call = info.output = None  # the variant, if any, is built: drop the references
        a._toggle(a.recorder.step)

    def root_call(self, args, kwargs, depth: int, meta: tuple) -> None:
        """A top-level model call under capture (the armed root hook; depth after entering; meta:
        its (phase, n_tokens, n_requests), which its replays' steps get)."""
        info = self.capturing
        if info is None or self.busy or depth != 1:
            return
        info.calls += 1
        info.call = (args, kwargs)
        info.meta = meta

    def root_return(self, output) -> None:
        if self.capturing is not None and not self.busy:
            self.capturing.output = output

    def _variant(self, info: GraphInfo) -> None:
        """Capture the instrumented twin of `info` (see the module docstring)."""
        outs = _tensors(info.output)
        if info.calls != 1 or info.call is None:
            info.reason = f"{info.calls} model calls in the capture"
        elif info.outside_ops:
            info.reason = (f"{info.outside_ops} tensor ops in the capture outside the model call "
                           f"({', '.join(info.outside_names)})")
        elif outs is None:
            info.reason = "the model's output holds more than tensors"
        if info.reason is not None:
            return
        torch, a = self.torch, self.armed
        variant = torch.cuda.CUDAGraph()
        self.busy = True
        a.hooks.install()
        a.recorder.reset_stack()
        a.recorder.routing = _HeldIds(info.routers, a.routing)
        self._swap_timer(info.marks)
        try:
            args, kwargs = info.call
            with torch.cuda.graph(variant, pool=info.pool):
                out2 = a.model_ref(*args, **kwargs)
                twins = _tensors(out2)
                if twins is None or len(twins) != len(outs):
                    raise RuntimeError("the variant's outputs differ from the graph's")
                for dst, src in zip(outs, twins):
                    dst.copy_(src)
            info.keep = twins
        except Exception as e:  # noqa: BLE001 - the program's own graph is untouched
            info.reason = f"variant capture failed: {type(e).__name__}"
            a.faults.record("graphs.variant", e)
            info.marks.clear()
            info.routers.clear()
            return
        finally:
            self.busy = False
            self._restore_timer()
            a.recorder.routing = a.routing
            a.recorder.reset_stack()
        info.variant = variant
        self._template(info, None)

    def _check_routers(self, info: GraphInfo) -> None:
        """Keep the held router ids only where they can be read after a replay."""
        if info.variant is None:
            info.routers.clear()
        elif info.routers and _shared_memory(info.routers):
            info.routers.clear()
            info.routing_reason = "the routers' expert ids share memory (a workspace)"

    def _template(self, info: GraphInfo, graph) -> None:
        """Instances recorded during the instrumented capture -> a template per replay."""
        if not info.marks:
            info.reason = info.reason or "no hooked module ran in the capture"
            info.variant = None
            return
        rec = self.armed.recorder
        inst = np.asarray([m[1] for m in info.marks], np.int64)
        ids = np.unique(inst)
        parent = rec.column("inst_parent")[ids]
        local = np.where(parent >= 0, np.searchsorted(ids, parent), -1)
        local[(parent >= 0) & ~np.isin(parent, ids)] = -1
        info.specs = rec.column("inst_spec")[ids]
        info.parents = local
        info.marks = [(ev, int(np.searchsorted(ids, i)), s) for ev, i, s in info.marks]
        if graph is not None:
            info.variant = graph
        captured = set(ids.tolist())
        rec.rows = [r for r in rec.rows if r[0] not in captured]  # no host scopes for captures

    def _swap_timer(self, out: list) -> None:
        rec = self.armed.recorder
        self._timer = rec.timer
        rec.timer = _Marks(self.torch, out, rec.inst_parent if self.marks == "blocks" else None)

    def _restore_timer(self) -> None:
        if hasattr(self, "_timer"):
            self.armed.recorder.timer = self._timer
            del self._timer

    def _start_mode(self) -> None:
        """Count the tensor ops of the capture outside the model call ('variant' needs none)."""
        info = self.capturing
        if info is None or not self.layers or self.timing != "variant" or self.mode is not None:
            return
        from torch.utils._python_dispatch import TorchDispatchMode

        watch = self

        class OutsideOps(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                info = watch.capturing
                if info is not None and watch.armed.root_depth == 0 and not getattr(func, "is_view", False) \
                        and func.__name__.split(".")[0] not in _NO_WORK:
                    info.outside_ops += 1
                    if len(info.outside_names) < 4:
                        info.outside_names.append(func.__name__)
                return func(*args, **(kwargs or {}))

        self.mode = OutsideOps()
        self.mode.__enter__()

    def _stop_mode(self) -> None:
        mode, self.mode = self.mode, None
        if mode is not None:
            mode.__exit__(None, None, None)

    # -- replay ---------------------------------------------------------------------------------
    def _before_replay(self, graph) -> GraphInfo | None:
        info = self.graphs.get(id(graph))
        if info is not None and info.graph is not graph:
            info = None
        if info is None:
            self.unknown.add(id(graph))
            self.unknown_replays += 1
        self.armed.replay_step(info)
        if info is not None:
            info.replays += 1
        return info

    def _timed(self, info: GraphInfo) -> bool:
        return self.timing == "inline" or self.armed.recorder.step % self.every == 0

    def _guard_replay(self, info: GraphInfo, replay, graph):
        try:
            pre = self.times.arm(info)
        except Exception as e:  # noqa: BLE001
            self.armed.faults.record("graphs.replay", e)
            return replay(graph)
        if pre is None:
            return replay(graph)
        if info.variant is graph:  # inline: the program's own graph carries the events
            out = replay(graph)
            self._count_routing(info)
        else:
            try:
                out = replay(info.variant)  # the unwrapped replay: the variant is no step of its own
            except Exception as e:  # noqa: BLE001 - the variant is ours: drop it, run the program's graph
                self.armed.faults.record("graphs.variant_replay", e)
                self.times.forget(info)
                info.variant, info.reason = None, f"variant replay failed: {type(e).__name__}"
                info.routers.clear()
                return replay(graph)
            self._count_routing(info)
        info.timed += 1
        self.armed.step_timed(True)
        return out

    def _count_routing(self, info: GraphInfo) -> None:
        """A timed replay's routing: its routers' ids, counted right behind it on the stream."""
        if info.routers:
            self._guard("graphs.routing", self.armed.routing.add_held, self.armed.recorder.step, info.routers)

    def note(self) -> dict:
        infos = list(self.graphs.values())
        reasons: dict[str, int] = {}
        for i in infos:
            if i.reason:
                reasons[i.reason] = reasons.get(i.reason, 0) + 1
        return {"timing": self.timing if self.layers else None, "every": self.every, "marks": self.marks,
                "captured_while_armed": len(infos),
                "capture_steps": sorted({i.step for i in infos if i.step is not None}),
                "instrumented": sum(i.variant is not None for i in infos),
                "not_instrumented": reasons, "replays": sum(i.replays for i in infos),
                "timed_replays": sum(i.timed for i in infos),
                "graphs_captured_before_arming": len(self.unknown),
                "replays_of_graphs_captured_before_arming": self.unknown_replays,
                "dropped_replays": self.times.drops if self.times else 0,
                "events_per_timed_replay": {str(i.key): len({id(m[0]) for m in i.marks}) for i in infos if i.marks},
                "routers_per_timed_replay": {str(i.key): len(i.routers) for i in infos if i.routers},
                "routing_not_counted": {str(i.key): i.routing_reason for i in infos if i.routing_reason}}


def _tensors(out) -> list | None:
    """The tensors of a model output (tensor, tuple/list, dict / ModelOutput); None when it holds
    anything else but None."""
    import torch

    found: list = []

    def walk(x) -> bool:
        if isinstance(x, torch.Tensor):
            found.append(x)
            return True
        if x is None:
            return True
        if isinstance(x, (tuple, list)):
            return all(walk(v) for v in x)
        if isinstance(x, dict):
            return all(walk(v) for v in x.values())
        return False

    return found if walk(out) and found else None
