"""Probes behind live.kernels' window strategy (docs/benchmarks.md, Capture).

    python benchmarks/probe_toggle.py none|plain|reopen     (GPU)
    python benchmarks/probe_toggle.py gil                    (CPU is enough)

GPU: 12 steps of 600 small kernels under one torch.profiler session (CUDA activities). `none`: no
toggling; `plain`: collection switched off at steps 2, 6, 10 and on at 4, 8
(`toggle_collection_dynamic`); `reopen`: the same, then switched on again with a few ops before
stop (the work-around for Kineto dropping buffers flushed at a switch-off). Prints kernels kept per
step, the host time of each toggle, and stop time.
`gil`: does `_disable_profiler` (the end of a torch.profiler window) let another thread run?
Prints the share of its duration in which the main thread made progress."""
import json
import sys
import time

import torch

sys.path.insert(0, "src")
from torch.profiler import ProfilerActivity, profile

from hybridscope.live.kernels import _guess_activity


def gil_probe() -> None:
    import threading

    import numpy as np

    res = {}

    def driver():
        p = profile(activities=[ProfilerActivity.CPU])
        p.start()
        y = torch.randn(64, 64)
        for _ in range(30000):
            y = y + 1
        t0 = time.perf_counter()
        torch.autograd._disable_profiler()
        res["window"] = (t0, time.perf_counter())

    stamps = []
    th = threading.Thread(target=driver)
    th.start()
    while th.is_alive():
        stamps.append(time.perf_counter())
    s = np.array(stamps)
    a, b = res["window"]
    gaps = np.diff(s[(s >= a) & (s <= b)])
    tick = float(np.median(np.diff(s)))
    print(json.dumps({"disable_profiler_s": b - a, "main_thread_progress_share": float((gaps < 1e-4).sum() * tick / (b - a))}))


if "gil" in sys.argv:
    gil_probe()
    sys.exit(0)
x = torch.randn(256, 256, device="cuda")


def step(n=300):
    y = x
    for _ in range(n):
        y = y * 1.0001 + 0.5
    return y


for _ in range(3):
    step()
torch.cuda.synchronize()
plan = {0: None, 2: False, 4: True, 6: False, 8: True, 10: False}  # at the start of step s
if "none" in sys.argv:
    plan = {}
bounds, toggles = [], {}
p = profile(activities=[ProfilerActivity.CUDA])
p.start()
for s in range(12):
    if s in plan and plan[s] is not None:
        t0 = time.perf_counter()
        p.toggle_collection_dynamic(plan[s], [ProfilerActivity.CUDA])
        toggles[s] = (plan[s], round((time.perf_counter() - t0) * 1e3, 3))
    bounds.append(time.time_ns())
    t0 = time.perf_counter()
    step()
    bounds[-1] = (bounds[-1], round((time.perf_counter() - t0) * 1e3, 3))
if len(sys.argv) > 1 and sys.argv[1] == "reopen":
    p.toggle_collection_dynamic(True, [ProfilerActivity.CUDA])
    step(5)
    torch.cuda.synchronize()
t0 = time.perf_counter()
p.stop()
stop_ms = (time.perf_counter() - t0) * 1e3
ev = p.profiler.kineto_results.events()
starts = [b[0] for b in bounds] + [time.time_ns()]
per_step = [0] * 12
launch_ts = {}
for e in ev:
    if _guess_activity(e, e.name()) == "cuda_runtime":
        launch_ts[e.correlation_id()] = e.start_ns()
for e in ev:
    if _guess_activity(e, e.name()) == "kernel":
        t = launch_ts.get(e.correlation_id(), e.start_ns())
        for s in range(12):
            if starts[s] <= t < starts[s + 1]:
                per_step[s] += 1
print(json.dumps({"mode": sys.argv[1:], "torch": torch.__version__, "toggles_ms": toggles, "step_ms": [b[1] for b in bounds],
                  "kernels_per_step": per_step, "stop_ms": stop_ms, "n_events": len(ev)}))
sys.stdout.flush()
