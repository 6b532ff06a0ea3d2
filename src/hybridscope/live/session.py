"""`hybridscope.capture(...)`: live capture of a PyTorch model into the store, as one run.

    with hybridscope.capture(db="run.duckdb", model=model, mode="layers") as cap:
        for batch in batches:
            model(batch)
            cap.step()                 # optional: without it, each top-level forward is a step

Modes: 'layers' (light, meant to stay on: per-module device time from CUDA events, see
live.layers) and 'kernels' (deep: kernels through torch.profiler, attributed to the same
scopes, see live.kernels). Both record the module scopes, MoE routing counts, steps, and the
dashboard's view (sampler).

Sampling (both modes): `sample_every=n, sample_steps=k` records the first k steps of every n in
full (step 0 always): module hooks are installed at the boundary that starts a sampled step and
removed at its end, so the other steps run with no module hook at all (and, in kernels mode,
with CUDA collection off). Every step is still timed (the steps table, step_ms samples); layer
times, scopes, routing counts and kernels come from sampled steps only (`steps.sampled`,
`runs.notes...sampling`). Defaults (DEFAULT_SAMPLING): layers 1 of 8; kernels 2 of 64 (each window
costs its steps' CUPTI overhead and a 4-6 ms drain at its end, live.kernels; measured in-run
costs in docs/benchmarks.md).
`sample_every=1` records every step (kernels: one profiler session, processed at stop).

Steps: `cap.step(n_tokens=, phase=, n_requests=)` ends the current step and starts the next
(step 0 starts when capture is armed). Until the first `cap.step()`, each top-level call of the
model is one step, from its start to the next call's start (the last: to its own end); phase and
token count are read from its inputs when they say it (a 2-D `input_ids` of width 1 is decode,
wider is prefill; an argument with a boolean `decode` attribute says it directly).

CUDA graphs (live.graphs): on a CUDA model every `CUDAGraph.replay()` is a step. `kernels` mode
records each graph's capture phase, so attribution maps the replays' kernels to their layers.
`layers` mode, `graph_timing='variant'` (default): each graph captured while armed gets an
instrumented twin, replayed instead of it one step in `graph_every` (default: max(sample_every,
64); 1 with sample_every=1); 'inline': timing events in the program's own graph, every replay
timed; 'off'. `graph_marks='blocks'` (default) times the top-level hooked modules only (decoder
blocks, embedding, LM head: each timing event costs microseconds inside a graph), 'all' every
module the eager steps time. Graphs captured before arming are counted, not timed (`runs.notes...cuda_graphs`).

Limits: `steps=N` and `duration=seconds` stop recording at the first step boundary past them:
hooks are removed, the profiler and sampler stop and the run is written then; the workload goes on.
Nothing in capture can take the workload down (live.faults): failures are counted and reported,
buffers are bounded (`max_events`) and drops are counted. The summary goes to stderr at the end.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridscope.errors import UsageError
from hybridscope.live.faults import Faults

MODES = ("layers", "kernels")
# Sampling defaults per mode: (sample_steps k, sample_every n): the first k steps of every n are
# recorded in full (module hooks in place), the others only timed as steps. Measured costs are in
# docs/benchmarks.md (Capture); `sample_every=1` records every step.
DEFAULT_SAMPLING = {"layers": (1, 8), "kernels": (2, 64)}


@dataclass
class Summary:
    """What a capture wrote. `drops` and `faults` are counts per place."""

    run_id: int | None
    db: str | None
    mode: str
    events: int = 0
    layer_events: int = 0
    kernel_events: int = 0  # the profiler's rows (kernels mode): GPU events, CPU ops, runtime calls
    gpu_events: int = 0  # of those, GPU kernels / memcpy / memset: what the analyses decompose
    cpu_ops: int = 0  # of those, CPU operators (source 'cpu')
    scopes: int = 0
    steps: int = 0
    sampled_steps: int = 0
    window: tuple | None = None  # (k, n): the first k steps of every n recorded in full
    routing_rows: int = 0
    samples: int = 0
    drops: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    flush_s: float = 0.0

    def lines(self) -> list[str]:
        where = f"run {self.run_id} in {self.db}" if self.run_id is not None else "nothing written"
        k, n = self.window or (1, 1)
        sampled = f" ({self.sampled_steps} recorded in full: {k} of every {n})" if n > 1 else ""
        profiler = (f"; profiler: {self.gpu_events} GPU kernel/memcpy/memset, {self.cpu_ops} CPU op, "
                    f"{self.kernel_events - self.gpu_events - self.cpu_ops} other"
                    if self.mode == "kernels" else "")
        out = [f"hybridscope capture ({self.mode}): {where}",
               (f"  {self.steps} steps{sampled}, {self.events} events ({self.layer_events} layer{profiler}), "
                f"{self.scopes} scopes, {self.routing_rows} routing rows, {self.samples} samples; "
                f"flush {self.flush_s:.2f} s")]
        if self.mode == "kernels" and self.run_id is not None and not self.gpu_events:
            out.append(f"  recorded: no GPU kernels (no GPU, or none ran): {self.cpu_ops} CPU operators and their "
                       "scopes. CPU operators are not GPU kernels: decompose, report, overlap and check have "
                       "nothing to decompose in this run (`hybridscope query` reads the operators: events WHERE "
                       "source = 'cpu'). On a CPU, --mode layers records per-layer timings they all use.")
        drops = {k: v for k, v in self.drops.items() if v}
        out.append("  drops: " + (", ".join(f"{k} {v}" for k, v in drops.items()) if drops else "none"))
        out.append("  faults: " + (", ".join(f"{k} {v['count']} ({v['first']})" for k, v in self.faults.items())
                                   if self.faults else "none"))
        out += [f"  note: {n}" for n in self.notes]
        return out


def capture(db: str | os.PathLike = "run.duckdb", model=None, mode: str = "layers", label: str | None = None,
            steps: int | None = None, duration: float | None = None, sample_every: int | None = None,
            sample_steps: int | None = None, sampler_interval: float = 0.5, max_events: int = 1_000_000,
            quiet: bool = False, metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
            graph_timing: str = "variant", graph_every: int | None = None, graph_marks: str = "blocks") -> Capture:
    """A capture session (a context manager). `model` may be given later with `cap.attach(model)`.
    `metrics_port`: also serve live per-layer-type metrics for Prometheus on metrics_host:port (+ the
    process's LOCAL_RANK) while capture is armed (live.metrics; docs/capture.md, "Watch it live").

    Raises UsageError (one line) for arguments that do not fit; nothing else escapes it."""
    if mode not in MODES:
        raise UsageError(f"capture mode must be one of {', '.join(MODES)}, not {mode!r}")
    from hybridscope.live.graphs import MARKS, TIMINGS

    if graph_timing not in TIMINGS:
        raise UsageError(f"graph_timing must be one of {', '.join(TIMINGS)}, not {graph_timing!r}")
    if graph_marks not in MARKS:
        raise UsageError(f"graph_marks must be one of {', '.join(MARKS)}, not {graph_marks!r}")
    for name, value in (("steps", steps), ("sample_every", sample_every), ("max_events", max_events),
                        ("graph_every", graph_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a positive integer, not {value!r}")
    if duration is not None and not duration > 0:
        raise UsageError(f"duration must be a positive number of seconds, not {duration!r}")
    k, n = DEFAULT_SAMPLING[mode]
    n = n if sample_every is None else sample_every
    k = min(k, n) if sample_steps is None else sample_steps
    if not isinstance(k, int) or not 1 <= k <= n:
        raise UsageError(f"sample_steps must be between 1 and sample_every ({n}), not {k!r}")
    if not sampler_interval > 0:
        raise UsageError(f"sampler_interval must be positive, not {sampler_interval!r}")
    if metrics_port is not None and (not isinstance(metrics_port, int) or not 0 < metrics_port < 65536):
        raise UsageError(f"metrics_port must be a TCP port (1-65535), not {metrics_port!r}")
    window = (k, n)
    cap = Capture(Path(db), mode=mode, label=label, steps=steps, duration=duration, window=window,
                  sampler_interval=sampler_interval, max_events=max_events, quiet=quiet, model=None,
                  graph_timing=graph_timing, graph_every=graph_every, graph_marks=graph_marks)
    cap.metrics = (metrics_host, metrics_port, False) if metrics_port is not None else None
    cap._pending_model = model
    return cap


class Capture:
    """One capture session; see the module docstring. Use through `capture(...)`."""

    def __init__(self, db: Path, *, mode, label, steps, duration, window, sampler_interval, max_events,
                 quiet, model=None, graph_timing="variant", graph_every=None, graph_marks="blocks"):
        self.db, self.mode, self.label = db, mode, label
        self.graph_timing, self.graph_every, self.graph_marks = graph_timing, graph_every, graph_marks
        self.max_steps, self.duration, self.window = steps, duration, window
        self.sampler_interval, self.max_events, self.quiet = sampler_interval, max_events, quiet
        self.faults = Faults()
        self.summary: Summary | None = None
        self.model = None
        self._pending_model = model
        self._state = "new"  # new -> armed -> stopped
        # (host, port, exact) of the Prometheus endpoint, if asked: exact False adds LOCAL_RANK to the port
        self.metrics: tuple[str, int, bool] | None = None
        self.observers: list = []  # extra step observers (live.observers), beside the store's buffers
        self.exporter = None
        self._lock = threading.Lock()

    # -- public API -----------------------------------------------------------------------------
    def __enter__(self):  # -> Capture
        self._t_enter = time.monotonic()
        if self._pending_model is not None:
            self.attach(self._pending_model)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop()
        return False  # the workload's own exceptions are its own

    def attach(self, model, in_forward: bool = False) -> None:
        """Arm capture on `model` (an nn.Module). UsageError when it is not one. `in_forward`: the
        model's first call is already running (found by `hybridscope trace`): it is step 0."""
        from hybridscope.live import arm

        if not hasattr(model, "named_modules") or not hasattr(model, "register_forward_pre_hook"):
            raise UsageError(f"capture needs a torch.nn.Module, not {type(model).__name__}")
        if self._state != "new":
            return
        self.model = model
        self._t_enter = getattr(self, "_t_enter", time.monotonic())
        if self.metrics is not None:
            self._start_exporter()
        self._armed = arm.arm(self, model, in_forward)
        if self.exporter is not None:
            self.exporter.drops_source = self._armed.drop_counts
        self._state = "armed"

    def _start_exporter(self) -> None:
        """The Prometheus endpoint (live.metrics). A port that cannot be bound is a capture fault,
        reported in the summary: the workload runs on."""
        from hybridscope.live.arm import _rank
        from hybridscope.live.metrics import PrometheusExporter

        with self.faults.guard("metrics.start"):
            exporter = PrometheusExporter(rank=_rank()[0])
            exporter.faults = self.faults
            host, port, exact = self.metrics
            self.metrics_bound = (host, exporter.serve(host, port, by_local_rank=not exact))
            self.exporter = exporter
            self.observers.append(exporter)

    def step(self, n_tokens: int | None = None, phase: str | None = None, n_requests: int | None = None) -> None:
        """End the current step and start the next one (see the module docstring)."""
        if self._state != "armed":
            return
        with self.faults.guard("step"):
            self._armed.explicit_step(n_tokens, phase, n_requests)

    def stop(self) -> Summary:
        """Disarm and write the run (idempotent). Returns (and prints) the summary."""
        with self._lock:
            if self._state == "stopped":
                return self.summary
            armed, self._state = getattr(self, "_armed", None), "stopped"
        t0 = time.perf_counter()
        summary = Summary(run_id=None, db=None, mode=self.mode)
        if armed is None:
            summary.notes.append("no model was captured (no recognized model ran, or none was given)")
        else:
            try:
                armed.finish(summary)
            except Exception as e:  # noqa: BLE001 - the last line of defence: report, never raise into the workload
                self.faults.record("stop", e)
        if self.exporter is not None:
            host, port = self.metrics_bound
            summary.notes.append(f"Prometheus metrics were served on http://{host}:{port}/metrics while armed")
        summary.faults = self.faults.as_dict()
        summary.flush_s = time.perf_counter() - t0
        self.summary = summary
        if not self.quiet:
            print("\n".join(summary.lines()), file=sys.stderr)
        return summary

    def where(self) -> tuple[int, int] | None:
        """(rank, world size) of the armed model, as read when it was armed; None before."""
        armed = getattr(self, "_armed", None)
        return (armed.rank, armed.world_size) if armed is not None else None

    # -- called by the armed hooks -----------------------------------------------------------------
    def limit_reached(self, steps_done: int) -> bool:
        if self.max_steps is not None and steps_done >= self.max_steps:
            return True
        return self.duration is not None and time.monotonic() - self._t_enter >= self.duration
