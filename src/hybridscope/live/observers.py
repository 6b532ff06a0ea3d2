"""The step observer seam: what capture hands out while the workload runs.

Capture produces four streams of plain data, each as it becomes available on the model's thread
(or the sampler's, for samples): a finished step's timing, resolved layer timings (read back
lazily, so a few steps late: see live.layers), routing counts (copied back in blocks: see
live.routing) and the sampler's readings. Every observer gets all four:

    class StepObserver:
        def on_step(self, step: StepTiming) -> None
        def on_layers(self, rows: LayerTimes) -> None
        def on_routing(self, rows: RoutingCounts) -> None
        def on_samples(self, rows: list[tuple[int, int, str, float]]) -> None   # (device, ts_ns, metric, value)
        def close(self) -> None

The store writer is the first observer (`StoreBuffer`: it keeps everything for the one write at
stop); the Prometheus exporter (live.metrics) is another; an OTLP exporter would be a third module
of the same shape. `Observers` fans out and guards each call with the capture's faults: an observer
that raises is counted and, past the faults' limit, switched off; the workload never sees it.
Observers are called synchronously and must stay cheap: numpy arrays in, no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepTiming:
    rank: int
    step: int
    start_ns: int     # run clock (wall, ns)
    duration_ns: int
    phase: str | None
    n_tokens: int | None
    n_requests: int | None
    sampled: bool     # module hooks were in place: its layer times will follow


@dataclass(frozen=True)
class LayerTimes:
    """Resolved module instances: exclusive device time per instance, typed."""

    rank: int
    step: np.ndarray          # int64 [n]
    layer_type: np.ndarray    # object [n] (the vocabulary's names, None when untyped)
    layer_index: np.ndarray   # int64 [n] (-1 when none)
    excl_ns: np.ndarray       # int64 [n]


@dataclass(frozen=True)
class RoutingCounts:
    rank: int
    step: np.ndarray          # int64 [n]
    layer_index: np.ndarray   # int64 [n]
    expert: np.ndarray        # int64 [n]
    tokens: np.ndarray        # int64 [n]


class StepObserver:
    """Base class: every method a no-op, so an observer overrides what it uses."""

    def on_step(self, step: StepTiming) -> None: ...

    def on_layers(self, rows: LayerTimes) -> None: ...

    def on_routing(self, rows: RoutingCounts) -> None: ...

    def on_samples(self, rows: list) -> None: ...

    def close(self) -> None: ...


class Observers(StepObserver):
    """Fan-out to several observers, each call guarded (`faults.guard('observer.<Class>')`)."""

    def __init__(self, observers: list[StepObserver], faults):
        self.observers, self.faults = list(observers), faults

    def _each(self, method: str, *args) -> None:
        for o in self.observers:
            place = f"observer.{type(o).__name__}"
            if self.faults.disabled(place):
                continue
            with self.faults.guard(place):
                getattr(o, method)(*args)

    def on_step(self, step: StepTiming) -> None:
        self._each("on_step", step)

    def on_layers(self, rows: LayerTimes) -> None:
        if len(rows.excl_ns):
            self._each("on_layers", rows)

    def on_routing(self, rows: RoutingCounts) -> None:
        if len(rows.tokens):
            self._each("on_routing", rows)

    def on_samples(self, rows: list) -> None:
        if rows:
            self._each("on_samples", rows)

    def close(self) -> None:
        self._each("close")
