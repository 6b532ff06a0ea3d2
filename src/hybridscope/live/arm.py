"""An armed capture: the hooks, timer, routing, kernel backend and sampler of one model, its steps,
and `finish()`, which turns them into one run in the store (see live.session for the contract).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from hybridscope.live import writer
from hybridscope.live.hooks import Hooks, Recorder, plan
from hybridscope.live.layers import CpuTimer, CudaTimer, Resolved
from hybridscope.live.observers import LayerTimes, Observers, RoutingCounts, StepTiming
from hybridscope.live.routing import Routing
from hybridscope.live.sampler import Sampler

CUDA_EVENT_POOL = 1 << 18  # events in flight at most: 2 per module call not yet read back
PREWARM_STEPS = 16
# With observers (live metrics), layer times are read back at the first step boundary past this
# interval since the last read: live within a second, at most one read-back pass a second.
LIVE_INTERVAL_NS = 1_000_000_000
# One replay of a graph in GRAPH_EVERY is timed by default (live.graphs): a timed replay cost about
# 0.8 ms on the H200 (its 55 events in the graph, their readback, its routing counted): +0.9-1.2 %
# on the mean batch-1 decode step at 1 in 32, +0.9 % at 1 in 64 (docs/benchmarks.md, "CUDA graphs
# under capture").
GRAPH_EVERY = 64


def arm(cap, model, in_forward: bool = False) -> Armed:
    return Armed(cap, model, in_forward)


class Armed:
    def __init__(self, cap, model, in_forward: bool):
        import torch

        self.cap, self.faults, self.torch = cap, cap.faults, torch
        self.rank, self.world_size = _rank()
        # layers mode leaves out a block's only strong child (hooks.plan); kernels mode keeps it:
        # attribution types a kernel by its innermost scope's name, and a block's name has no type
        specs_modules = plan(model, prune=cap.mode == "layers")
        self.specs = [s for s, _ in specs_modules]
        self.device = _device_of(model)
        self.cuda = self.device is not None and self.device.type == "cuda"
        timer = None
        if cap.mode == "layers":
            capacity = min(2 * cap.max_events, CUDA_EVENT_POOL)
            # events for PREWARM_STEPS steps are created now, not in the run (then reused)
            timer = (CudaTimer(capacity, torch, prewarm=min(capacity // 2, 2 * len(self.specs) * PREWARM_STEPS))
                     if self.cuda else CpuTimer(2 * cap.max_events))
        self.timer = timer
        self.routing = Routing(cap.max_events)
        if self.cuda:
            with self.faults.guard("routing.prewarm"):
                self.routing.prewarm(self.device, [s.n_experts for s in self.specs if s.role == "router" and s.n_experts])
        self.recorder = Recorder(self.specs, capacity=cap.max_events, timer=timer, routing=self.routing)
        self.resolved = Resolved()
        self.steps: list[tuple] = []
        self.explicit = False
        self.root_depth = 1 if in_forward else 0
        self.forward_seen = in_forward
        self.open_ts = time.perf_counter_ns()
        self.open_meta: tuple = (None, None, None)
        self.last_end = self.open_ts
        self.kernels = None
        if cap.mode == "kernels":
            from hybridscope.live.kernels import KernelBackend

            self.kernels = KernelBackend(cuda=self.cuda, window=cap.window, max_windows=4096, faults=self.faults)
            self.kernels.start()
        # the step observer seam (live.observers): the store's buffers here, plus the capture's extra
        # observers (the Prometheus exporter); each call guarded by the faults
        self.observers = Observers(getattr(cap, "observers", []), self.faults)
        self.routing_seen = 0
        self.spec_types = self.spec_index = None  # layer type / index per spec, for the observers
        self.last_live = 0
        self.sampler = Sampler(cap.sampler_interval, self.faults, devices=self._uuids(),
                               observe=self.observers.on_samples if self.observers.observers else None)
        self.sampler.start()
        self.hooks = Hooks(specs_modules, self.recorder, self.faults)
        self._toggle(0)  # step 0 is always sampled
        self.handles = [model.register_forward_pre_hook(self._root_pre, with_kwargs=True),
                        model.register_forward_hook(self._root_post, always_call=True)]
        self.model_class = type(model).__name__
        self.model_ref = model
        self.was_sampled: bool | None = None  # hooks' state when finish() began
        self.step_graph: list | None = None  # [graph key, timed] when the open step is a replay
        self.replay_insts: list[tuple[int, int, int]] = []  # (first instance, count, graph key)
        self.graphs = None
        if self.cuda:
            from hybridscope.live.graphs import GraphWatch

            with self.faults.guard("graphs.install"):
                every = cap.graph_every or (1 if cap.window[1] == 1 else max(cap.window[1], GRAPH_EVERY))
                self.graphs = GraphWatch(self, torch, cap.graph_timing, every, cap.graph_marks)
                self.graphs.install()
        self.script = _script()  # now: `hybridscope trace` restores sys.argv before the run is written

    # -- steps ---------------------------------------------------------------------------------
    def _root_pre(self, module, args, kwargs):
        with self.faults.guard("hook.step"):
            self.root_depth += 1
            if self.graphs is not None and (self.graphs.capturing is not None or self.graphs.busy):
                if self.root_depth == 1 and not self.graphs.busy:
                    self.graphs.root_call(args, kwargs, 1, _step_meta(args, kwargs))
                return  # a model call captured into a CUDA graph is no step: its replays are
            if self.root_depth > 1 or self.explicit:
                return
            now = time.perf_counter_ns()
            meta = _step_meta(args, kwargs)
            if not self.forward_seen:
                self.forward_seen, self.open_ts, self.open_meta = True, now, meta
            else:
                self._boundary(now, closing=self.open_meta, following=meta)
        return

    def _root_post(self, module, args, output):
        with self.faults.guard("hook.step"):
            self.root_depth = max(0, self.root_depth - 1)
            if self.root_depth == 0 and self.graphs is not None and self.graphs.capturing is not None:
                self.graphs.root_return(output)
                return
            if self.root_depth == 0:
                self.last_end = time.perf_counter_ns()

    def explicit_step(self, n_tokens, phase, n_requests) -> None:
        if not self.explicit:
            self.explicit = True
            self.forward_seen = True
        self._boundary(time.perf_counter_ns(), closing=(phase, n_tokens, n_requests), following=(None,) * 3)

    def replay_step(self, info) -> None:
        """A CUDA-graph replay starts (live.graphs): a step boundary unless steps are explicit."""
        now = time.perf_counter_ns()
        meta = info.meta if info is not None else (None, None, None)
        if not self.explicit:
            if not self.forward_seen:
                self.forward_seen, self.open_ts, self.open_meta = True, now, meta
            else:
                self._boundary(now, closing=self.open_meta, following=meta, replay=True)
        self.step_graph = [info.key if info is not None else 0, False]
        self.last_end = now

    def step_timed(self, timed: bool) -> None:
        if self.step_graph is not None:
            self.step_graph[1] = timed

    def take(self, res: Resolved) -> None:
        self._take(res)

    def sampled(self, step: int) -> bool:
        """Steps recorded in full: the first k of every n (`cap.window` = (k, n)); step 0 always."""
        k, n = self.cap.window
        return step % n < k

    def _toggle(self, step: int) -> None:
        """Module hooks in place for a sampled step, none for the others (see live.session)."""
        with self.faults.guard("hooks.toggle"):
            if self.sampled(step):
                self.recorder.reset_stack()
                self.hooks.install()
            else:
                self.hooks.remove()

    def _boundary(self, now: int, closing: tuple, following: tuple, replay: bool = False) -> None:
        """Close the open step at `now`, open the next; `replay`: the next is a CUDA-graph replay,
        which runs no module hook, so none is installed for it (each install costs microseconds a
        module)."""
        rec = self.recorder
        self.steps.append(self._step_row(now, closing))
        self.step_graph = None
        if self.observers.observers:
            self._observe_step(self.steps[-1])
        rec.step += 1
        self.open_ts, self.open_meta = now, following
        if replay:
            if self.hooks.installed:
                with self.faults.guard("hooks.toggle"):
                    self.hooks.remove()
        elif self.sampled(rec.step) != self.hooks.installed:
            self._toggle(rec.step)
        live = bool(self.observers.observers) and now - self.last_live >= LIVE_INTERVAL_NS
        if live:
            self.last_live = now
        if self.timer is not None:
            self.timer.step_boundary()
            with self.faults.guard("layers.resolve"):
                self._take(self.timer.resolve(rec.parents, final=False, faults=self.faults, live=live))
                if self.graphs is not None and self.graphs.times.pending:
                    self.graphs.times.resolve()
        with self.faults.guard("routing"):
            self.routing.step_boundary(live=live)
        if self.observers.observers and len(self.routing.done) > self.routing_seen:
            self._observe_routing()
        if self.kernels is not None:
            with self.faults.guard("kernels.step"):
                self.kernels.step(rec.step)
        if self.cap.limit_reached(len(self.steps)):
            self.open_ts = None  # the step just begun is not recorded: its hooks go now
            self.cap.stop()

    def _step_row(self, end: int, closing: tuple) -> tuple:
        """(step, ts, duration, phase, n_tokens, n_requests, sampled, graph replay) of the open step;
        a replay step is sampled when it was timed (live.graphs)."""
        g = self.step_graph
        installed = self.hooks.installed if self.was_sampled is None else self.was_sampled
        if g is None:
            sampled = installed
        else:  # a replay: timed (layers), or its kernels collected (kernels)
            sampled = g[1] or (self.kernels is not None and self.kernels.collecting)
        return (self.recorder.step, self.open_ts + self.recorder.offset, max(0, end - self.open_ts), *closing,
                sampled, g is not None)

    def _take(self, res: Resolved) -> None:
        if not res.inst:  # most step boundaries resolve nothing
            return
        for name in ("inst", "ts_ns", "excl_ns", "incl_ns"):
            getattr(self.resolved, name).extend(getattr(res, name))
        if self.observers.observers:
            self._observe_layers(res)

    # -- the observers (live.observers) ----------------------------------------------------------
    def drop_counts(self) -> dict[str, int]:
        return {"scopes": self.recorder.drops, "routing": self.routing.drops, "samples": self.sampler.drops}

    def _observe_step(self, row: tuple) -> None:
        step, start, dur, phase, n_tokens, n_requests, sampled = row[:7]
        self.observers.on_step(StepTiming(self.rank, step, start, dur, phase, n_tokens, n_requests, sampled))

    def _observe_layers(self, res: Resolved) -> None:
        with self.faults.guard("observe.layers"):
            cols = res.columns()
            rec = self.recorder
            if self.spec_types is None:  # per spec, once: the specs are fixed at arm
                self.spec_types = np.asarray([s.layer_type for s in rec.specs] + [None], dtype=object)
                self.spec_index = np.asarray([-1 if s.layer_index is None else s.layer_index for s in rec.specs],
                                             np.int64)
            spec = rec.column("inst_spec")[cols["inst"]]
            types, index = self.spec_types[spec], self.spec_index[spec]
            step = rec.column("inst_step")[cols["inst"]]
            self.observers.on_layers(LayerTimes(self.rank, step, types, index, cols["excl_ns"]))

    def _observe_routing(self) -> None:
        with self.faults.guard("observe.routing"):
            new = self.routing.done[self.routing_seen:]
            self.routing_seen = len(self.routing.done)
            step, layer, expert, tokens = (np.concatenate(c) for c in zip(*new))
            self.observers.on_routing(RoutingCounts(self.rank, step, layer, expert, tokens))

    # -- the end -------------------------------------------------------------------------------
    def finish(self, summary) -> None:
        """Disarm, read everything back and write the run; fills `summary`."""
        self.was_sampled = self.hooks.installed
        if self.graphs is not None:
            with self.faults.guard("graphs.remove"):
                self.graphs.remove()
        for h in self.handles:
            with self.faults.guard("disarm"):
                h.remove()
        with self.faults.guard("disarm"):
            self.hooks.remove()
        if self.kernels is not None:
            with self.faults.guard("kernels.stop"):
                self.kernels.stop()
        self.sampler.stop()
        self.observers.close()
        rec = self.recorder
        if self.open_ts is not None and self.forward_seen and (
                not self.explicit or (rec.inst_step and rec.inst_step[-1] == rec.step)):
            end = self.last_end if not self.explicit else time.perf_counter_ns()
            self.steps.append(self._step_row(end, self.open_meta))
        if self.timer is not None:
            with self.faults.guard("layers.resolve"):
                self._take(self.timer.resolve(rec.parents, final=True, faults=self.faults))
            if self.graphs is not None:
                with self.faults.guard("graphs.resolve"):
                    self.graphs.times.resolve(final=True)
        tables, counts = self._tables()
        notes = self._notes()
        db = Path(str(self.cap.db).replace("{rank}", str(self.rank)))
        if self.world_size > 1 and "{rank}" not in str(self.cap.db):
            db = db.with_name(f"{db.stem}.rank{self.rank}{db.suffix}")
            summary.notes.append(f"rank {self.rank} of {self.world_size}: writing {db}")
        meta = writer.RunMeta(label=self.cap.label or self.model_class, path=self.script, rank=self.rank,
                              world_size=self.world_size, device_name=self._device_name(),
                              versions=self._versions())
        run_id, written = writer.write_run(db, meta, tables, notes, self.faults)
        summary.run_id, summary.db = run_id, str(written)
        for k, v in counts.items():
            setattr(summary, k, v)
        summary.drops = notes["drops"]
        summary.sampled_steps, summary.window = notes["sampling"]["sampled_steps"], tuple(self.cap.window)
        summary.notes += [n for n in (notes.get("sampler"), notes.get("routing")) if n]

    def _tables(self) -> tuple[dict, dict]:
        rec, pid = self.recorder, os.getpid()
        ann = rec.annotation_columns(self.rank, pid)
        first = len(rec.inst_spec)
        steps, step_ann, step_samples = writer.step_tables(self.steps, rank=self.rank, pid=pid, tid=rec.tid,
                                                           first_id=first)
        first += len(self.steps)
        dev = self.device.index if self.cuda else None
        layer = writer.layer_columns(self.resolved.columns(), rec, rank=self.rank, pid=pid, device=dev,
                                     first_id=first, replays=self.replay_insts)
        first += len(layer.get("event_id", ()))
        kern = {}
        if self.kernels is not None:
            with self.faults.guard("kernels.convert"):
                kern = self.kernels.columns(self.rank)
        if kern:
            import numpy as np

            from hybridscope.live.kernels import align_threads

            kern["event_id"] = first + np.arange(len(kern["name"]), dtype=np.int64)
            self.tid_remapped = align_threads(kern, rec.tid)
        routing = {}
        with self.faults.guard("routing"):
            routing = self.routing.columns(self.rank)
        samples = writer.merge(self.sampler.columns(self.rank), step_samples)
        events = writer.merge(ann, step_ann, layer, kern)
        counts = {"events": _n(events), "layer_events": _n(layer), "kernel_events": _n(kern),
                  "gpu_events": _n_gpu(kern), "cpu_ops": _n_where(kern, "source", "cpu"),
                  "scopes": _n(ann) + _n(step_ann), "steps": _n(steps), "routing_rows": _n(routing),
                  "samples": _n(samples)}
        return {"events": events, "steps": steps, "routing": routing, "samples": samples}, counts

    def _notes(self) -> dict:
        rec = self.recorder
        notes = {
            "mode": self.cap.mode, "model": self.model_class, "hooked_modules": len(self.specs),
            "layer_timing": ("cuda_events" if self.cuda else "perf_counter") if self.timer else None,
            "drops": {"scopes": rec.drops, "routing": self.routing.drops, "samples": self.sampler.drops,
                      "kernel_windows": self.kernels.dropped_windows if self.kernels else 0},
            "faults": self.faults.as_dict(), "hook_mismatches": rec.mismatches,
            "sampler": self.sampler.note or None, "window": list(self.cap.window),
            "sampling": self._sampling_note(),
        }
        if self.graphs is not None:
            notes["cuda_graphs"] = self.graphs.note()
        if self.kernels is not None:
            notes["kernel_clock_offset_ns"] = self.kernels.clock_offset_ns
            if getattr(self, "tid_remapped", None) is not None:
                notes["launch_tid_remapped"] = self.tid_remapped
        if self.routing.unknown:
            notes["routing"] = ("routers with an unknown expert count were not counted: "
                                + ", ".join(sorted(self.routing.unknown)))
        if self.routing.out_of_range:
            notes["routing_out_of_range"] = self.routing.out_of_range
        if not self.specs:
            notes["routing"] = "no hybrid layers recognized in this model: only steps were recorded"
        return notes

    def _sampling_note(self) -> dict:
        k, n = self.cap.window
        return {"sample_steps": k, "sample_every": n, "steps": len(self.steps),
                "sampled_steps": sum(1 for s in self.steps if s[6]), "hook_installs": self.hooks.installs,
                "covers": ("layer times, scopes, routing counts" + (" and kernels" if self.kernels else "")
                           + " come from sampled steps only (steps.sampled); step latency from every step")}

    def _uuids(self) -> dict | None:
        if not self.cuda:
            return None
        with self.faults.guard("sampler.devices"):
            idx = self.device.index if self.device.index is not None else self.torch.cuda.current_device()
            return {idx: str(self.torch.cuda.get_device_properties(idx).uuid)}
        return None

    def _device_name(self) -> str | None:
        if self.cuda:
            return self.torch.cuda.get_device_name(self.device)
        import platform

        return platform.processor() or platform.machine() or None

    def _versions(self) -> dict:
        v = {"torch": self.torch.__version__, "python": sys.version.split()[0]}
        if self.cuda:
            v["cuda_runtime"] = self.torch.version.cuda
        return v


def _n(cols: dict) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def _step_meta(args, kwargs) -> tuple:
    """(phase, n_tokens, n_requests) from a top-level call's inputs, None where they do not say."""
    import torch

    for a in (*args, *kwargs.values()):
        if isinstance(getattr(a, "decode", None), bool):  # an engine batch descriptor
            lens = list(getattr(a, "lens", None) or ())
            n_one = sum(n == 1 for n in lens)
            phase = ("decode" if a.decode or (lens and n_one == len(lens))
                     else "mixed" if n_one else "prefill")
            ids = next((x for x in args if isinstance(x, torch.Tensor) and not x.is_floating_point()), None)
            return phase, (int(ids.numel()) if ids is not None else None), len(getattr(a, "slots", ()) or ()) or None
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = next((x for x in args if isinstance(x, torch.Tensor)), None)
    if isinstance(ids, torch.Tensor) and ids.ndim == 2 and not ids.is_floating_point():
        return ("prefill" if ids.shape[1] > 1 else "decode"), int(ids.numel()), int(ids.shape[0])
    return None, None, None


def _device_of(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def _rank() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialized, else torchrun's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except (RuntimeError, ValueError):  # a half-initialized process group says nothing useful
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _script() -> str:
    return os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "<python>"


def _n_where(cols: dict, column: str, value: str) -> int:
    """Rows of the column table `cols` whose `column` equals `value`."""
    return sum(1 for v in cols.get(column, ()) if v == value)


def _n_gpu(cols: dict) -> int:
    """GPU events (store.db.GPU_EVENTS: source 'cuda', kind kernel / memcpy / memset) among the
    profiler's rows: what decompose and the report read."""
    from hybridscope.store.db import GPU_KINDS

    return sum(1 for src, kind in zip(cols.get("source", ()), cols.get("kind", ()))
               if src == "cuda" and kind in GPU_KINDS)
