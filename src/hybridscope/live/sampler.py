"""The dashboard's view of the capture window, sampled in a background thread.

With NVML (nvidia-ml-py) and a GPU: per device, `gpu_util_pct`, `mem_util_pct` (NVML's
utilization rates: share of the last sample period with a kernel / a memory transfer active),
`sm_clock_mhz`, `power_w`, `mem_used_mib`, and `sm_active_pct` where the GPU supports NVML GPM
(Hopper and later: the share of SMs busy over the sample period, what DCGM reports as SM_ACTIVE;
utilization counts a period busy if any kernel ran). Without NVML (no package, no driver, no GPU):
`cpu_util_pct` of the whole machine and `proc_rss_mib` of this process (psutil), and the
reason NVML is absent goes into the run's notes. The step latency and tokens/s of the same
window come from the steps (see `session`), not from this thread.

The thread never raises: each failed reading is counted in `faults` under 'sampler'; after
`faults.limit` failures the thread stops.
"""

from __future__ import annotations

import threading
import time

import numpy as np

MIN_CPU_SPAN_S = 0.1  # psutil's CPU times tick every 10 ms: a shorter span is not a reading
NVML_METRICS = ("gpu_util_pct", "mem_util_pct", "sm_clock_mhz", "power_w", "mem_used_mib", "sm_active_pct")


class Sampler:
    """Start with `start()`, stop with `stop()`; `columns(rank)` gives the `samples` rows."""

    def __init__(self, interval_s: float, faults, capacity: int = 200_000, devices=None, observe=None):
        """`devices`: {CUDA index: device UUID string} to sample (rows name the CUDA index);
        None samples every NVML device under its NVML index."""
        self.interval = interval_s
        self.faults = faults
        self.capacity = capacity
        self.rows: list[tuple[int, int, str, float]] = []  # (device, ts_ns, metric, value)
        self.drops = 0
        self.source = "none"
        self.note = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._devices = devices
        self._observe = observe  # live.observers: each reading also goes to the observers
        self._read = None

    def start(self) -> None:
        with self.faults.guard("sampler.start"):
            self._read = self._open_nvml() or self._open_psutil()
        if self._read is None:
            return
        self._thread = threading.Thread(target=self._loop, name="hybridscope-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1.0)
        if self.source == "nvml":
            with self.faults.guard("sampler.stop"):
                import pynvml

                pynvml.nvmlShutdown()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.faults.disabled("sampler"):
                return
            with self.faults.guard("sampler"):
                self._sample_once()
            self._stop.wait(self.interval)
        if not self.faults.disabled("sampler"):  # the span since the last reading: a window shorter
            with self.faults.guard("sampler"):  # than one interval still gets a reading
                self._sample_once()

    def _sample_once(self) -> None:
        ts = time.time_ns()
        readings = self._read()
        if len(self.rows) + len(readings) > self.capacity:
            self.drops += len(readings)
            return
        rows = [(dev, ts, metric, float(v)) for dev, metric, v in readings]
        if self._observe is not None:
            self._observe(rows)
        self.rows.extend(rows)

    def _open_nvml(self):
        try:
            import pynvml
        except ImportError:
            self.note = "NVML absent: nvidia-ml-py is not installed; sampled CPU utilization instead"
            return None
        try:
            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - no driver / no GPU: an NVMLError subclass, or OSError
            self.note = f"NVML absent ({type(e).__name__}: {e}); sampled CPU utilization instead"
            return None
        handles = _nvml_handles(pynvml, self._devices)
        self.source = "nvml"
        gpm = GpmSmActive(pynvml, handles)  # SM activity where the GPU supports GPM (Hopper and later)
        if not gpm.handles:
            why = f" ({gpm.why})" if gpm.why else ""
            self.note = f"NVML GPM not supported on this GPU{why}: no sm_active_pct (DCGM's SM_ACTIVE)"

        def read():
            out = []
            for d, h in handles:
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                out += [(d, "gpu_util_pct", util.gpu), (d, "mem_util_pct", util.memory),
                        (d, "sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                        (d, "power_w", pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                        (d, "mem_used_mib", mem.used / 2**20)]
            return out + gpm.read()

        return read

    def _open_psutil(self):
        try:
            import psutil
        except ImportError:
            self.note += "; psutil is not installed either: no samples"
            return None
        proc = psutil.Process()
        since: list[float | None] = [None]
        self.source = "psutil"

        def read():
            # cpu_percent(None) is the utilization since the previous call *of the calling thread*
            # (psutil keeps the reference per thread): the first call of the sampler's thread only sets
            # it (it reads 0.0), and a span shorter than a few clock ticks reads 0 or 100. Neither
            # gives a cpu_util_pct row.
            rows = [(-1, "proc_rss_mib", proc.memory_info().rss / 2**20)]
            if since[0] is None:
                psutil.cpu_percent(None)
                since[0] = time.monotonic()
            elif time.monotonic() - since[0] >= MIN_CPU_SPAN_S:
                rows.insert(0, (-1, "cpu_util_pct", psutil.cpu_percent(None)))
                since[0] = time.monotonic()
            return rows

        return read

    def columns(self, rank: int) -> dict[str, np.ndarray | list]:
        if not self.rows:
            return {}
        dev, ts, metric, value = zip(*self.rows)
        return {"rank": np.full(len(ts), rank, np.int32),
                "device": [None if d < 0 else d for d in dev],
                "ts_ns": np.asarray(ts, np.int64), "metric": list(metric),
                "value": np.asarray(value, np.float64)}


def _nvml_handles(pynvml, devices: dict[int, str] | None) -> list[tuple[int, object]]:
    """NVML handles of the CUDA devices in use. NVML numbers devices on the whole machine, CUDA
    after CUDA_VISIBLE_DEVICES: the UUID is what both agree on."""
    count = pynvml.nvmlDeviceGetCount()
    all_handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    if not devices:
        return list(enumerate(all_handles))
    by_uuid = {}
    for h in all_handles:
        uuid = pynvml.nvmlDeviceGetUUID(h)
        by_uuid[_bare(uuid.decode() if isinstance(uuid, bytes) else uuid)] = h
    picked = [(d, by_uuid[_bare(u)]) for d, u in devices.items() if _bare(u) in by_uuid]
    return picked or list(enumerate(all_handles))


def _bare(uuid: str) -> str:
    """'GPU-58c3...' (NVML) and '58c3...' (torch) name the same device."""
    return str(uuid).lower().removeprefix("gpu-")


class GpmSmActive:
    """SM activity from NVML GPM (NVML_GPM_METRIC_SM_UTIL), per device: the metric between the
    previous sample and this one. Devices without GPM support are left out."""

    def __init__(self, pynvml, handles: list[tuple[int, object]]):
        self.nv = pynvml
        self.handles, self.prev, self.why = [], {}, None
        for d, h in handles:
            try:
                if pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice:
                    self.prev[d] = pynvml.nvmlGpmSampleGet(h, pynvml.nvmlGpmSampleAlloc())
                    self.handles.append((d, h))
            except Exception as e:  # noqa: BLE001 - an NVML without GPM (old driver / library): no SM activity
                self.why = f"{type(e).__name__}: {e}"

    def read(self) -> list[tuple[int, str, float]]:
        nv, out = self.nv, []
        for d, h in self.handles:
            cur = nv.nvmlGpmSampleGet(h, nv.nvmlGpmSampleAlloc())
            mg = nv.c_nvmlGpmMetricsGet_t()
            mg.version, mg.numMetrics = nv.NVML_GPM_METRICS_GET_VERSION, 1
            mg.sample1, mg.sample2 = self.prev[d], cur
            mg.metrics[0].metricId = nv.NVML_GPM_METRIC_SM_UTIL
            nv.nvmlGpmMetricsGet(mg)
            nv.nvmlGpmSampleFree(self.prev[d])
            self.prev[d] = cur
            out.append((d, "sm_active_pct", float(mg.metrics[0].value)))
        return out
