"""Live per-layer-type metrics for Prometheus: a step observer (live.observers) and its HTTP endpoint.

Started by `hybridscope.capture(..., metrics_port=9400)` or `hybridscope trace --metrics-port 9400`;
bound to 127.0.0.1 unless `metrics_host` says otherwise. One endpoint per process: a process whose
LOCAL_RANK is r serves on `metrics_port + r` (torchrun's ranks of one host do not collide); every
series carries `rank` (the torch.distributed rank, else 0). Metrics (base units, Prometheus names):

- `hybridscope_layer_seconds{layer_type, rank}` histogram: exclusive device time of each timed
  module call, by the vocabulary's layer types (sampled steps only: capture's sampling applies).
- `hybridscope_step_seconds{rank}` histogram: every step's latency (all steps).
- `hybridscope_tokens_total{rank}` counter: tokens of the steps that say their token count
  (`rate()` gives tokens/s).
- `hybridscope_moe_comm_wait_ratio{rank}` gauge: moe_comm time / duration of the sampled steps
  resolved last (the share of the step spent in MoE all-to-alls).
- `hybridscope_routing_imbalance_ratio{layer, rank}` gauge: max/mean tokens per expert of the
  latest routed step per MoE layer.
- `hybridscope_hot_expert_tokens{layer, expert, rank}` gauge: tokens of the `hot_experts` (default 4)
  busiest experts of each MoE layer in the latest routed step. Bounded cardinality: at most
  hot_experts series per MoE layer and rank at any time (an expert that leaves the top is removed).
- `hybridscope_capture_steps_total`, `hybridscope_capture_drops_total{place}`,
  `hybridscope_capture_faults_total{place}`: capture's own health.
- `hybridscope_gpu_utilization_ratio{gpu, rank}` (NVML utilization: a kernel was running) and
  `hybridscope_gpu_sm_active_ratio{gpu, rank}` (NVML GPM SM activity, what DCGM calls SM_ACTIVE,
  where the GPU supports GPM), from the capture's sampler; `hybridscope_cpu_utilization_ratio`
  without NVML.

Histograms are kept as numpy bucket counts (one `searchsorted` per batch of layer rows, no per-row
Python) and exposed by a custom collector at scrape time, so observing costs the model's thread
microseconds per sampled step.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left

import numpy as np

from hybridscope.live.observers import LayerTimes, RoutingCounts, StepObserver, StepTiming

# Upper bounds in seconds: 1 µs .. ~8.4 s, doubling (24 buckets) plus +Inf. Fit for µs kernels to
# second-long prefill steps; a quantile read from them is within a factor 2 of the truth at worst
# (histogram_quantile interpolates linearly inside the bucket).
BUCKETS_S: tuple[float, ...] = tuple(float(f"{1e-6 * 2 ** i:.9g}") for i in range(24))
HOT_EXPERTS = 4
SAMPLE_GAUGES = {"gpu_util_pct": ("hybridscope_gpu_utilization_ratio", "NVML utilization: share of time a kernel ran"),
                 "sm_active_pct": ("hybridscope_gpu_sm_active_ratio", "NVML GPM SM activity (DCGM SM_ACTIVE)"),
                 "cpu_util_pct": ("hybridscope_cpu_utilization_ratio", "machine CPU utilization (no NVML)")}


class Hist:
    """Cumulative histogram of seconds in BUCKETS_S, fed with int64 ns arrays."""

    def __init__(self):
        self.counts = np.zeros(len(BUCKETS_S) + 1, np.int64)  # last: above the largest bound
        self.sum_s = 0.0

    def add(self, ns: np.ndarray) -> None:
        s = np.asarray(ns, np.float64) / 1e9
        idx = np.searchsorted(BUCKETS_S, s, side="left")  # le bound: bucket i holds s <= BUCKETS_S[i]
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.sum_s += float(s.sum())

    def add_one(self, ns: int) -> None:
        """One value (a step's latency, each step): a bisection, no array built."""
        s = ns / 1e9
        self.counts[bisect_left(BUCKETS_S, s)] += 1
        self.sum_s += s

    def buckets(self) -> list[tuple[str, int]]:
        cum = np.cumsum(self.counts)
        return [(repr(b), int(c)) for b, c in zip(BUCKETS_S, cum[:-1])] + [("+Inf", int(cum[-1]))]


class PrometheusExporter(StepObserver):
    """The observer: keeps the metrics above in memory; `collect()` is the prometheus_client
    collector protocol. `serve(host, port)` starts the HTTP endpoint (a daemon thread)."""

    def __init__(self, rank: int = 0, hot_experts: int = HOT_EXPERTS):
        self.rank, self.hot_experts = str(rank), hot_experts
        self.lock = threading.Lock()
        self.layer: dict[str, Hist] = {}
        self.step = Hist()
        self.tokens = 0
        self.steps = 0
        self.step_ns: dict[int, int] = {}  # recent steps' durations, for the wait ratio
        self.wait_ratio: float | None = None
        self.imbalance: dict[int, float] = {}
        self.hot: dict[int, dict[int, int]] = {}
        self.samples: dict[tuple[str, int], float] = {}
        self.faults = None  # set by the capture: its faults and drops are exported too
        self.drops_source = None  # () -> {place: records dropped}
        self.server = None

    # -- the observer ---------------------------------------------------------------------------
    def on_step(self, step: StepTiming) -> None:
        with self.lock:
            self.step.add_one(step.duration_ns)
            self.steps += 1
            if step.sampled:
                self.step_ns[step.step] = step.duration_ns
                if len(self.step_ns) > 4096:
                    self.step_ns.pop(next(iter(self.step_ns)))
            if step.n_tokens:
                self.tokens += int(step.n_tokens)

    def on_layers(self, rows: LayerTimes) -> None:
        types = rows.layer_type.astype(object)
        typed = np.array([t is not None for t in types], bool)
        if not typed.any():
            return
        names, inv = np.unique(types[typed].astype(str), return_inverse=True)
        excl = rows.excl_ns[typed]
        with self.lock:
            for i, name in enumerate(names):
                self.layer.setdefault(name, Hist()).add(excl[inv == i])
            span = sum(self.step_ns.get(int(st), 0) for st in np.unique(rows.step))
            if span:
                self.wait_ratio = float(excl[names[inv] == "moe_comm"].sum()) / span

    def on_routing(self, rows: RoutingCounts) -> None:
        last = int(rows.step.max())
        keep = rows.step == last
        layers, experts, tokens = rows.layer_index[keep], rows.expert[keep], rows.tokens[keep]
        with self.lock:
            for layer in np.unique(layers):
                t = tokens[layers == layer]
                e = experts[layers == layer]
                mean = t.mean() if t.size else 0.0
                self.imbalance[int(layer)] = float(t.max() / mean) if mean > 0 else 0.0
                top = np.argsort(-t, kind="stable")[: self.hot_experts]
                self.hot[int(layer)] = {int(e[j]): int(t[j]) for j in top if t[j] > 0}

    def on_samples(self, rows: list) -> None:
        with self.lock:
            for dev, _ts, metric, value in rows:
                if metric in SAMPLE_GAUGES:
                    self.samples[(metric, int(dev))] = float(value) / 100.0

    # -- the collector ------------------------------------------------------------------------
    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        r = self.rank
        with self.lock:
            h = HistogramMetricFamily("hybridscope_layer_seconds", "Exclusive device time of a module call, "
                                      "by layer type (sampled steps)", labels=["layer_type", "rank"])
            for name in sorted(self.layer):
                hist = self.layer[name]
                h.add_metric([name, r], hist.buckets(), hist.sum_s)
            yield h
            s = HistogramMetricFamily("hybridscope_step_seconds", "Step latency", labels=["rank"])
            s.add_metric([r], self.step.buckets(), self.step.sum_s)
            yield s
            yield _counter(CounterMetricFamily, "hybridscope_tokens", "Tokens of the steps", r, self.tokens)
            yield _counter(CounterMetricFamily, "hybridscope_capture_steps", "Steps seen by capture", r, self.steps)
            g = GaugeMetricFamily("hybridscope_moe_comm_wait_ratio", "moe_comm time / sampled step time",
                                  labels=["rank"])
            if self.wait_ratio is not None:
                g.add_metric([r], self.wait_ratio)
            yield g
            g = GaugeMetricFamily("hybridscope_routing_imbalance_ratio", "max/mean tokens per expert, latest "
                                  "routed step", labels=["layer", "rank"])
            for layer, v in sorted(self.imbalance.items()):
                g.add_metric([str(layer), r], v)
            yield g
            g = GaugeMetricFamily("hybridscope_hot_expert_tokens", f"Tokens of the {self.hot_experts} busiest "
                                  "experts per MoE layer, latest routed step", labels=["layer", "expert", "rank"])
            for layer, top in sorted(self.hot.items()):
                for e, n in top.items():
                    g.add_metric([str(layer), str(e), r], n)
            yield g
            for metric, (name, doc) in SAMPLE_GAUGES.items():
                label = "gpu" if metric != "cpu_util_pct" else "device"
                g = GaugeMetricFamily(name, doc, labels=[label, "rank"])
                for (m, dev), v in sorted(self.samples.items()):
                    if m == metric:
                        g.add_metric([str(dev), r], v)
                yield g
            c = CounterMetricFamily("hybridscope_capture_faults", "Failures inside capture, by place",
                                    labels=["place", "rank"])
            for place, f in (self.faults.as_dict() if self.faults is not None else {}).items():
                c.add_metric([place, r], f["count"])
            yield c
            c = CounterMetricFamily("hybridscope_capture_drops", "Records dropped by capture's bounded buffers",
                                    labels=["place", "rank"])
            for place, n in (self.drops_source() if self.drops_source is not None else {}).items():
                c.add_metric([place, r], n)
            yield c

    # -- the endpoint --------------------------------------------------------------------------
    def serve(self, host: str, port: int, by_local_rank: bool = True) -> int:
        """Start the HTTP endpoint on (host, port + LOCAL_RANK) (exactly `port` when not
        `by_local_rank`: `hybridscope trace` gives each process its own); returns the port bound."""
        from prometheus_client import CollectorRegistry, start_http_server

        local = os.environ.get("LOCAL_RANK", "")
        port = port + (int(local) if by_local_rank and local.isdigit() else 0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self.server = start_http_server(port, addr=host, registry=registry)
        return port

    def close(self) -> None:
        """At the capture's stop: the endpoint goes down with the capture (its port is free again)."""
        if self.server is not None:
            server, _thread = self.server
            server.shutdown()
            self.server = None


def _counter(cls, name: str, doc: str, rank: str, value: int):
    c = cls(name, doc, labels=["rank"])
    c.add_metric([rank], value)
    return c
