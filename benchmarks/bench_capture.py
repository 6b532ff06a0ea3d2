"""Capture overhead on a GPU: throughput traced / untraced, paired and interleaved in one process.

    python benchmarks/bench_capture.py --out bench_capture.json [--rounds 8] [--budget-s 200]

Workloads:
  (a) HF transformers NemotronH, random init, the Nemotron-3-Nano-like layout of
      shared/traces/make_hf_models.py (config copied below), bf16, eager `generate`:
      batch 8, prompt 512, 32 new tokens, greedy;
  (b) the project's engine (`hybridscope.engine`), preset nemotron3-nano-mini with the first 13
      layers of its pattern, 8 requests of 512 prompt tokens and 32 new tokens, continuous
      batching, no CUDA graphs (module hooks do not run inside a graph replay).
Variants: hybridscope layers (default sampling, 1 step in 8) and every step; hybridscope kernels
(default windows, 2 steps in 64, CUDA collection toggled), windows of 1 step in 8, the default
windows with the profiler restarted per window ('schedule', the strategy before toggling), and
every step; torch.profiler CUDA only (and CPU + CUDA with --with-cpu-profiler).
Design (noise: identical untraced runs of these launch-bound workloads vary by 10-30 %):
  - the process is pinned to --cores cores (default 2: fewer thread migrations);
  - every variant runs once first, uncounted (CUPTI init, allocator, first launches);
  - each round runs U V1 U V2 ... Vn U (untraced between every two traced runs, variant order
    rotated each round), gc.collect() and torch.cuda.synchronize() before every clock read;
  - a traced run's paired overhead = its time / mean(the untraced runs just before and after) - 1,
    which cancels drift slower than two runs; reported as median, quartiles, min/max and a
    bootstrap 90 % interval of the median over rounds;
  - in-run time (the workload call, capture armed around it) and stop time (hybridscope: disarm,
    readback, conversion, DuckDB write, attribution; torch.profiler: its __exit__) apart.
Also: host micro costs of the hot path, and Kineto results -> columns vs export + import.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import hybridscope
from hybridscope.demo import free_port

HF_PATTERN = "MEMEM*EMEMEM*EMEMEM*E"  # shared/traces/make_hf_models.py, kind "nemotron_h"


def build_hf():
    from transformers import AutoModelForCausalLM, NemotronHConfig

    cfg = NemotronHConfig(
        vocab_size=32000, hidden_size=1024, hybrid_override_pattern=HF_PATTERN, num_attention_heads=16,
        num_key_value_heads=2, head_dim=64, mamba_num_heads=32, mamba_head_dim=64, ssm_state_size=128,
        n_groups=8, chunk_size=128, n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=1024, n_group=1, topk_group=1, intermediate_size=2048,
        max_position_embeddings=8192)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16).cuda().eval()


def hf_workload(model):
    ids = torch.randint(10, 30000, (8, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(0))

    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                           do_sample=False, pad_token_id=0)
    return run, 8 * 32


def build_engine():
    from hybridscope.engine.config import NEMOTRON3_NANO_PATTERN, EngineConfig
    from hybridscope.engine.model import build_model

    cfg = EngineConfig.from_preset("nemotron3-nano-mini", pattern=NEMOTRON3_NANO_PATTERN[:13])
    return build_model(cfg, device="cuda")


def engine_workload(model):
    from hybridscope.engine.scheduler import Engine, Request

    def run():
        engine = Engine(model, cuda_graphs=False)
        reqs = [Request(rid=i, prompt=[(7 * i + j) % 30000 + 10 for j in range(512)], max_new_tokens=32)
                for i in range(8)]
        engine.run(reqs)
    return run, 8 * 32


# --------------------------------------------------------------------------------------- variants
STARTS: list[float] = []  # host time of each top-level model call of the current run (step starts)
LAST = {"after_first_step_s": float("nan")}


def _timed(fn) -> float:
    """The run's wall time (synchronized both ends); LAST['after_first_step_s']: from the start of
    its second top-level model call to the end, i.e. without the prefill step and `generate`'s setup."""
    STARTS.clear()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    LAST["after_first_step_s"] = t1 - STARTS[1] if len(STARTS) > 1 else float("nan")
    return t1 - t0


def variant_untraced(model, run, db):
    return _timed(run), 0.0, {}


def _hybridscope(mode, strategy="auto", **kw):
    """A hybridscope capture variant; `strategy`: kernels mode's window strategy (live.kernels)."""
    from hybridscope.live import kernels

    def variant(model, run, db):
        label = mode + ("_every_step" if kw.get("sample_every") == 1 else "")
        kernels.WINDOW_STRATEGY = strategy
        cap = hybridscope.capture(db=db, model=model, mode=mode, quiet=True, label=label, **kw)
        cap.__enter__()
        in_run = _timed(run)
        t0 = time.perf_counter()
        cap.__exit__(None, None, None)
        kernels.WINDOW_STRATEGY = "auto"
        s = cap.summary
        return in_run, time.perf_counter() - t0, {"events": s.events, "kernel_events": s.kernel_events,
                                                   "layer_events": s.layer_events, "faults": s.faults,
                                                   "drops": s.drops, "run_id": s.run_id}
    return variant


def _torch_profiler(cpu: bool):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if cpu else [])

    def variant(model, run, db):
        prof = profile(activities=acts)
        prof.__enter__()
        in_run = _timed(run)
        t0 = time.perf_counter()
        prof.__exit__(None, None, None)
        stop = time.perf_counter() - t0
        variant.last = prof
        return in_run, stop, {}
    return variant


def _with_metrics(mode):
    """`mode` with the Prometheus exporter on (live.metrics), a free port each run."""
    def variant(model, run, db):
        return _hybridscope(mode, metrics_port=free_port())(model, run, db)
    return variant


VARIANTS = {
    "layers": _hybridscope("layers"),
    "layers_metrics": _with_metrics("layers"),  # the exporter on top of layers mode (live.metrics)
    "layers_every_step": _hybridscope("layers", sample_every=1),
    "kernels": _hybridscope("kernels"),  # default windows (2 steps of 64), collection toggled
    "kernels_1_in_8": _hybridscope("kernels", sample_every=8, sample_steps=1),
    "kernels_schedule": _hybridscope("kernels", strategy="schedule"),  # the same windows, profiler restarted
    "kernels_every_step": _hybridscope("kernels", sample_every=1),
    "torch_profiler_cuda": _torch_profiler(cpu=False),
}


def measure(name, model, workload, rounds, db, deadline) -> dict:
    """Paired, interleaved rounds (module docstring); stops adding rounds past `deadline`."""
    run, tokens = workload
    # the same step clock in every variant (one root pre-hook, like the capture's own)
    clock = model.register_forward_pre_hook(lambda m, a: STARTS.append(time.perf_counter()))
    variant_untraced(model, run, db)
    for v in VARIANTS.values():  # warm-up, not counted
        v(model, run, db)
    names = list(VARIANTS)
    untraced: list[float] = []
    table: dict[str, list] = {k: [] for k in names}
    for rnd in range(rounds):
        if time.monotonic() > deadline and rnd >= 2:
            break
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        gc.collect()
        before = (variant_untraced(model, run, db)[0], LAST["after_first_step_s"])
        untraced.append(before)
        for k in order:
            gc.collect()
            res = VARIANTS[k](model, run, db)
            steady = LAST["after_first_step_s"]
            gc.collect()
            after = (variant_untraced(model, run, db)[0], LAST["after_first_step_s"])
            untraced.append(after)
            table[k].append((*res, 0.5 * (before[0] + after[0]), steady, 0.5 * (before[1] + after[1])))
            before = after
    clock.remove()
    steady_u = [u[1] for u in untraced]
    untraced = [u[0] for u in untraced]
    out = {"workload": name, "tokens": tokens, "rounds": len(table[names[0]]),
           "untraced": {"in_run_s": statistics.median(untraced), "tokens_per_s": tokens / statistics.median(untraced),
                        "spread_pct": _spread(untraced), "n": len(untraced), "all": untraced,
                        "after_first_step_spread_pct": _spread(steady_u)},
           "variants": {}}
    for k, results in table.items():
        in_run = [r[0] for r in results]
        paired = [100.0 * (r[0] / r[3] - 1.0) for r in results]
        steady = [100.0 * (r[4] / r[5] - 1.0) for r in results]
        out["variants"][k] = {
            "in_run_s": statistics.median(in_run), "tokens_per_s": tokens / statistics.median(in_run),
            "overhead_pct": statistics.median(paired), "overhead_q": _quartiles(paired),
            "overhead_minmax": [min(paired), max(paired)], "overhead_ci90": _bootstrap_ci(paired),
            "overhead_pct_all": paired, "in_run_all": in_run,
            "after_first_step_overhead_pct": statistics.median(steady), "after_first_step_q": _quartiles(steady),
            "after_first_step_ci90": _bootstrap_ci(steady), "after_first_step_all": steady,
            "stop_s": statistics.median(r[1] for r in results), "info": results[-1][2]}
    if "layers" in table and "layers_metrics" in table:  # the exporter's own cost: paired within each round
        extra = [100.0 * (m[0] / lay[0] - 1.0) for lay, m in zip(table["layers"], table["layers_metrics"])]
        out["exporter_over_layers"] = {"overhead_pct": statistics.median(extra), "overhead_q": _quartiles(extra),
                                       "overhead_ci90": _bootstrap_ci(extra), "all": extra}
    with contextlib.suppress(Exception):  # a diagnostic: never lose the timings over it
        out["layers_vs_kernels"] = per_layer_agreement(db)
    return out


def _quartiles(xs: list[float]) -> list[float]:
    import numpy as np

    return [float(v) for v in np.percentile(xs, [25, 75])]


def _spread(xs: list[float]) -> float:
    """(max - min) / median of identical runs, percent."""
    return 100.0 * (max(xs) - min(xs)) / statistics.median(xs)


def _bootstrap_ci(xs: list[float], n: int = 2000) -> list[float]:
    """90 % bootstrap interval of the median of `xs` (resampled rounds)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = np.asarray(xs)
    meds = np.median(a[rng.integers(0, len(a), (n, len(a)))], axis=1)
    return [float(v) for v in np.percentile(meds, [5, 95])]


def per_layer_agreement(db) -> dict:
    """Per layer index: layers-mode exclusive time / kernels-mode kernel time (latest runs of each)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = {m: con.execute("SELECT max(run_id) FROM runs WHERE label = ?", [f"{m}_every_step"]).fetchall()[0][0]
                for m in ("layers", "kernels")}
        q = ("SELECT layer_index, sum(duration_ns) FROM events WHERE run_id = ? AND layer_index IS NOT NULL "
             "AND ((source = 'layer') OR (source = 'cuda' AND kind IN ('kernel', 'memcpy', 'memset'))) GROUP BY 1")
        lay = dict(con.execute(q, [runs["layers"]]).fetchall())
        ker = dict(con.execute(q, [runs["kernels"]]).fetchall())
        scoped = con.execute("SELECT sum(duration_ns) FILTER (WHERE attr_method = 'scope') / sum(duration_ns) "
                             "FROM events WHERE run_id = ? AND source = 'cuda' AND kind = 'kernel'",
                             [runs["kernels"]]).fetchall()[0][0]
    finally:
        con.close()
    return {"ratio": {int(i): lay[i] / ker[i] for i in sorted(lay) if ker.get(i)}, "scoped_share": scoped}


def micro() -> dict:
    """Host cost of the hot-path pieces, in microseconds per call."""
    lin = torch.nn.Linear(8, 8).cuda()
    x = torch.zeros(1, 8, device="cuda")

    def per_call(fn, n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return 1e6 * (time.perf_counter() - t0) / n

    events = [torch.cuda.Event(enable_timing=True) for _ in range(20000)]
    for ev in events:
        ev.record()
    it = iter(events)
    out = {"event_record_reused_us": per_call(lambda: next(it).record(), 20000),
           "event_create_and_record_us": per_call(lambda: torch.cuda.Event(enable_timing=True).record(), 5000),
           "module_call_us": per_call(lambda: lin(x), 20000)}
    firsts, pairs = events[0], iter(events[1:])
    out["event_elapsed_time_us"] = per_call(lambda: firsts.elapsed_time(next(pairs)), 10000)
    from hybridscope.live.layers import CudaTimer

    timer = CudaTimer(1 << 16, torch, pool=list(events[:15000]))
    if timer._record is not None:
        out["capture_mark_us"] = per_call(lambda: timer.mark(0, True), 15000)  # pool pop + fast record
    plain = iter(events[15000:])
    out["event_record_current_stream_us"] = per_call(lambda: next(plain).record(torch.cuda.current_stream()), 4000)
    lin.register_forward_pre_hook(lambda m, a: None)
    lin.register_forward_hook(lambda m, a, o: None)
    out["module_call_with_2_noop_hooks_us"] = per_call(lambda: lin(x), 20000)
    out.update(_hook_costs())
    return out


def _hook_costs() -> dict:
    """The capture's own hooks on one Linear (Recorder without timer), and installing / removing
    every module hook of the engine preset used below (what a sampled step's boundaries cost)."""
    from hybridscope.live.faults import Faults
    from hybridscope.live.hooks import Hooks, Recorder, Spec, plan

    lin = torch.nn.Linear(8, 8).cuda()
    x = torch.zeros(1, 8, device="cuda")
    spec = Spec(0, "lin", "Linear", "mlp", "mlp", 0, None)
    rec = Recorder([spec], capacity=1 << 20)
    hooks = Hooks([(spec, lin)], rec, Faults())
    hooks.install()
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        lin(x)
    torch.cuda.synchronize()
    out = {"module_call_with_capture_hooks_no_timer_us": 1e6 * (time.perf_counter() - t0) / n}
    hooks.remove()
    model = build_engine()
    specs = plan(model)
    many = Hooks(specs, Recorder([s for s, _ in specs], capacity=16), Faults())
    t0 = time.perf_counter()
    for _ in range(50):
        many.install()
        many.remove()
    out["install_and_remove_all_hooks_us"] = 1e6 * (time.perf_counter() - t0) / 50
    out["hooked_modules_engine"] = len(specs)
    del model
    torch.cuda.empty_cache()
    return out


def conversion_paths(prof, tmp: Path) -> dict:
    """Kineto results -> events columns directly, vs Chrome-trace export + hybridscope import."""
    from hybridscope.ingest import import_files
    from hybridscope.live.kernels import _convert

    t0 = time.perf_counter()
    cols = _convert(prof.profiler.kineto_results.events(), 0)
    direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = tmp / "trace.json"
    prof.export_chrome_trace(str(path))
    export = time.perf_counter() - t0
    t0 = time.perf_counter()
    import_files(tmp / "conv.duckdb", [path])
    imported = time.perf_counter() - t0
    return {"events": len(cols["name"]), "direct_s": direct, "export_s": export, "import_s": imported}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop adding rounds after this")
    ap.add_argument("--hf-share", type=float, default=0.55, help="share of the budget for workload (a)")
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--variants", default="", help="comma-separated subset of the variants (more rounds each)")
    ap.add_argument("--with-cpu-profiler", action="store_true", help="add torch.profiler CPU + CUDA")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--cores", type=int, default=2,
                    help="pin the process to this many cores (fewer migrations, steadier launch-bound runs); 0: no pinning")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.cores and len(cores) > args.cores:
        os.sched_setaffinity(0, cores[-args.cores:])
    if args.with_cpu_profiler:
        VARIANTS["torch_profiler_cpu_cuda"] = _torch_profiler(cpu=True)
    if args.variants:
        keep = set(args.variants.split(","))
        for k in [k for k in VARIANTS if k not in keep]:
            del VARIANTS[k]
    start = time.monotonic()
    deadline = start + args.budget_s
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "workloads": [],
               "cores": sorted(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "micro": {} if args.skip_micro else micro()}
    print("micro:", results["micro"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = build_hf()
        results["workloads"].append(measure("hf_nemotron_h generate bs8 p512 n32", model, hf_workload(model),
                                            args.rounds, tmp / "hf.duckdb", start + args.hf_share * args.budget_s))
        if "torch_profiler_cuda" in VARIANTS:
            results["conversion"] = conversion_paths(VARIANTS["torch_profiler_cuda"].last, tmp)
        args.out.write_text(json.dumps(results, indent=1))  # kept if the engine part runs out of time
        report(results)
        del model
        torch.cuda.empty_cache()
        if not args.skip_engine and time.monotonic() < deadline - 20:
            model = build_engine()
            results["workloads"].append(measure("engine nemotron3-nano-mini[:13] 8 req p512 n32", model,
                                                engine_workload(model), args.rounds, tmp / "engine.duckdb",
                                                deadline))
    args.out.write_text(json.dumps(results, indent=1))
    report(results)


def report(results: dict) -> None:
    for w in results["workloads"]:
        if "exporter_over_layers" in w:
            e = w["exporter_over_layers"]
            print(f"\n{w['workload']}: Prometheus exporter over layers mode, paired per round: median "
                  f"{e['overhead_pct']:+.2f}%  IQR [{e['overhead_q'][0]:+.2f}, {e['overhead_q'][1]:+.2f}]  "
                  f"CI90 [{e['overhead_ci90'][0]:+.2f}, {e['overhead_ci90'][1]:+.2f}]")
        u = w["untraced"]
        print(f"\n{w['workload']} ({w['rounds']} rounds); untraced median {u['in_run_s']:.3f} s over {u['n']} runs, "
              f"spread {u['spread_pct']:.0f} %")
        for k, v in w["variants"].items():
            q, ci = v["overhead_q"], v["overhead_ci90"]
            print(f"  {k:24s} in-run {v['in_run_s']:7.3f} s  {v['tokens_per_s']:7.1f} tok/s  paired overhead "
                  f"median {v['overhead_pct']:+6.1f}%  IQR [{q[0]:+.1f}, {q[1]:+.1f}]  CI90 [{ci[0]:+.1f}, {ci[1]:+.1f}]"
                  f"  stop {v['stop_s']:5.2f} s")
            q, ci = v["after_first_step_q"], v["after_first_step_ci90"]
            print(f"  {'':24s} after the first step: median {v['after_first_step_overhead_pct']:+6.1f}%  "
                  f"IQR [{q[0]:+.1f}, {q[1]:+.1f}]  CI90 [{ci[0]:+.1f}, {ci[1]:+.1f}]")
        if "layers_vs_kernels" in w:
            lk = w["layers_vs_kernels"]
            print("  layers/kernels per layer:", {i: round(r, 2) for i, r in lk["ratio"].items()},
                  "scoped share", lk["scoped_share"])
    print("conversion:", results.get("conversion"))


if __name__ == "__main__":
    main()
