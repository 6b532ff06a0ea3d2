"""Capture overhead on a GPU: throughput traced / untraced, side by side in one process.

    python benchmarks/bench_capture.py --out bench_capture.json [--reps 3] [--budget-s 330]

Workloads:
  (a) HF transformers NemotronH, random init, the Nemotron-3-Nano-like layout of
      shared/traces/make_hf_models.py (config copied below), bf16, eager `generate`:
      batch 8, prompt 512, 32 new tokens, greedy;
  (b) the project's engine (`hybridscope.engine`), preset nemotron3-nano-mini with the first 13
      layers of its pattern, 8 requests of 512 prompt tokens and 32 new tokens, continuous
      batching, no CUDA graphs (module hooks do not run inside a graph replay).
Variants, interleaved within each repetition so clocks and thermals hit all alike:
  untraced; hybridscope layers; the same without its CUDA events (hooks, scopes, routing only);
  hybridscope kernels; hybridscope kernels 1 step in 16; torch.profiler CUDA only; torch.profiler
  CPU + CUDA. The order rotates from one repetition to the next; gc.collect() before each.
Per variant: in-run time (the workload call, synchronized, capture armed around it), overhead =
median in-run / median untraced in-run - 1 (per-repetition ratios kept too), and the stop time
(hybridscope: disarm + readback + conversion + DuckDB write + attribution; torch.profiler: its
__exit__) apart. Also: Kineto results -> columns directly vs export_chrome_trace + import.
Warm-up runs of every variant come first and are not counted (first CUPTI init, allocator).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import hybridscope

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
def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def variant_untraced(model, run, db):
    return _timed(run), 0.0, {}


def _hybridscope(mode, **kw):
    def variant(model, run, db):
        cap = hybridscope.capture(db=db, model=model, mode=mode, quiet=True, **kw)
        cap.__enter__()
        in_run = _timed(run)
        t0 = time.perf_counter()
        cap.__exit__(None, None, None)
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


class _NoTimer:
    """Stands in for the CUDA-event timer: what the hooks, scopes and routing cost without it."""

    def __init__(self, *a, **k):
        pass

    def room(self):
        return True

    def mark(self, inst, is_start):
        pass

    def step_boundary(self):
        pass

    def resolve(self, parents, final, faults=None):
        from hybridscope.capture.layers import Resolved

        return Resolved()


def _hooks_only(model, run, db):
    from hybridscope.capture import arm

    saved, arm.CudaTimer = arm.CudaTimer, _NoTimer
    try:
        return _hybridscope("layers")(model, run, db)
    finally:
        arm.CudaTimer = saved


VARIANTS = {
    "untraced": variant_untraced,
    "layers": _hybridscope("layers"),
    "hooks_scopes_routing_only": _hooks_only,
    "kernels": _hybridscope("kernels"),
    "kernels_1_in_16": _hybridscope("kernels", sample_every=16, sample_steps=1),
    "torch_profiler_cuda": _torch_profiler(cpu=False),
    "torch_profiler_cpu_cuda": _torch_profiler(cpu=True),
}


def measure(name, model, workload, reps, db, deadline) -> dict:
    run, tokens = workload
    for v in VARIANTS.values():  # warm-up, not counted
        v(model, run, db)
    table = {k: [] for k in VARIANTS}
    names = list(VARIANTS)
    for rep in range(reps):
        if time.monotonic() > deadline and rep > 0:
            break
        for k in names[rep % len(names):] + names[:rep % len(names)]:  # rotate: no variant always first
            gc.collect()
            table[k].append(VARIANTS[k](model, run, db))
    base = [r[0] for r in table["untraced"]]
    out = {"workload": name, "tokens": tokens, "reps": len(base), "variants": {}}
    for k, results in table.items():
        in_run = [r[0] for r in results]
        # throughput ratio of medians (robust to one slow repetition) and per-repetition ratios
        over = [100.0 * (t / b - 1.0) for t, b in zip(in_run, base)]
        out["variants"][k] = {
            "in_run_s": statistics.median(in_run), "tokens_per_s": tokens / statistics.median(in_run),
            "overhead_pct": 100.0 * (statistics.median(in_run) / statistics.median(base) - 1.0),
            "overhead_pct_all": over, "in_run_all": in_run,
            "stop_s": statistics.median(r[1] for r in results), "info": results[-1][2]}
    out["layers_vs_kernels"] = per_layer_agreement(db)
    return out


def per_layer_agreement(db) -> dict:
    """Per layer index: layers-mode exclusive time / kernels-mode kernel time (latest runs of each)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = {"layers": con.execute("SELECT max(run_id) FROM events WHERE source = 'layer'").fetchall()[0][0],
                "kernels": con.execute(
                    "SELECT max(run_id) FROM runs WHERE notes->>'$.ranks.\"0\".mode' = 'kernels' "
                    "AND notes->>'$.ranks.\"0\".window' IS NULL").fetchall()[0][0]}
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
    lin.register_forward_pre_hook(lambda m, a: None)
    lin.register_forward_hook(lambda m, a, o: None)
    out["module_call_with_2_noop_hooks_us"] = per_call(lambda: lin(x), 20000)
    return out


def conversion_paths(prof, tmp: Path) -> dict:
    """Kineto results -> events columns directly, vs Chrome-trace export + hybridscope import."""
    from hybridscope.capture.kernels import _convert
    from hybridscope.ingest import import_files

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
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop adding repetitions after this")
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()
    deadline = time.monotonic() + args.budget_s
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "workloads": [],
               "micro": micro()}
    print("micro:", results["micro"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = build_hf()
        results["workloads"].append(measure("hf_nemotron_h generate bs8 p512 n32", model,
                                            hf_workload(model), args.reps, tmp / "hf.duckdb", deadline))
        results["conversion"] = conversion_paths(VARIANTS["torch_profiler_cuda"].last, tmp)
        args.out.write_text(json.dumps(results, indent=1))  # kept if the engine part runs out of time
        report(results)
        del model
        torch.cuda.empty_cache()
        if not args.skip_engine and time.monotonic() < deadline - 60:
            model = build_engine()
            results["workloads"].append(measure("engine nemotron3-nano-mini[:13] 8 req p512 n32", model,
                                                engine_workload(model), args.reps, tmp / "engine.duckdb",
                                                deadline + 60))
    args.out.write_text(json.dumps(results, indent=1))
    report(results)


def report(results: dict) -> None:
    for w in results["workloads"]:
        print(f"\n{w['workload']} ({w['reps']} reps)")
        for k, v in w["variants"].items():
            print(f"  {k:26s} in-run {v['in_run_s']:7.3f} s  {v['tokens_per_s']:8.1f} tok/s  "
                  f"overhead {v['overhead_pct']:+6.1f}%  stop {v['stop_s']:6.2f} s")
        print("  layers/kernels per layer:", {i: round(r, 2) for i, r in w["layers_vs_kernels"]["ratio"].items()},
              "scoped share", w["layers_vs_kernels"]["scoped_share"])
    print("conversion:", results.get("conversion"))


if __name__ == "__main__":
    main()
