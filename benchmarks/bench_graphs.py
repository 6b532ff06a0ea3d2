"""CUDA-graph decode under capture, on a GPU: attribution agreement, layer-time accuracy, overhead.

    python benchmarks/bench_graphs.py --out bench_graphs.json [--rounds 12] [--budget-s 300]

Model: the engine's `nemotron3-nano-mini` preset (52 layers, bf16), `cuda_graphs=True` (dense decode
replayed from one CUDA graph per batch bucket), greedy.
1. kernels mode (every step), the same 8 requests served eagerly and graphed: per decode step, the
   share of kernel time per (layer index, layer type), and per kernel name the share of its time per
   (layer index, layer type); agreement = sum of min(share eager, share graphed) (1.0: identical).
   Also the graphed run's GPU time per attribution method.
2. layers mode (graph_timing 'variant', graph_every 4), batch 1 and 8: per timed replay the sum of
   the layer rows' exclusive times, against the replay time of the instrumented variant and of the
   program's own graph (CUDA events around 50 replays each, after the run).
3. overhead, batch 1 and 8: decode-step latency (the engine's step records, steps past the first 8)
   of an uncaptured engine U and of captured ones: layers with the default graph_every (64; 16, then
   32 on 2026-12-05), with graph_every 8 or 32, and inline (every replay timed). Each round runs U V1 U V2 U V3 U (variant order
   rotated); a variant's paired overhead = its mean decode step / mean(mean step of the U runs just
   before and after) - 1 (the mean carries the timed replays: what throughput pays; the same from
   median steps, a typical untimed replay, is reported beside it); median over rounds with a
   bootstrap 90 % interval. `--variants` runs some of them; layers_metrics adds the Prometheus
   exporter (issue 21), its own cost paired round by round; layers_observer (a no-op observer) and
   layers_exporter (the exporter without its HTTP endpoint) bisect that cost.
   `--profile`: then one cProfile'd run of each variant (batch 1): hybridscope's host time per step.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import torch

import hybridscope
from hybridscope.demo import free_port

PRESET = "nemotron3-nano-mini"


def build():
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model

    return build_model(EngineConfig.from_preset(PRESET, max_batch=8, max_seq_len=1024), device="cuda")


def requests(n: int, prompt: int, gen: int):
    from hybridscope.engine.scheduler import Request

    return [Request(rid=i, prompt=[(7 * i + j) % 30000 + 10 for j in range(prompt)], max_new_tokens=gen)
            for i in range(n)]


def serve(model, reqs, graphs: bool = True):
    from hybridscope.engine.scheduler import Engine

    engine = Engine(model, cuda_graphs=graphs)
    engine.run(reqs)
    torch.cuda.synchronize()
    return engine


# ------------------------------------------------------------------------------------- agreement
def agreement(model, tmp: Path) -> dict:
    shares, methods = {}, {}
    for graphs in (False, True):
        db = tmp / f"agree_{graphs}.duckdb"
        with hybridscope.capture(db=db, model=model, mode="kernels", sample_every=1, quiet=True) as cap:
            serve(model, requests(8, 64, 12), graphs)
        con = duckdb.connect(str(db), read_only=True)
        run = cap.summary.run_id
        decode = ("run_id = $run AND source = 'cuda' AND kind IN ('kernel', 'memcpy', 'memset') AND step IN "
                  "(SELECT step FROM steps WHERE run_id = $run AND phase = 'decode')")
        rows = con.execute(f"SELECT name, layer_index, layer_type, attr_method, duration_ns FROM events WHERE {decode}",
                           {"run": run}).fetchall()
        con.close()
        shares[graphs] = rows
        by = {}
        for r in rows:
            by[r[3]] = by.get(r[3], 0) + r[4]
        total = sum(by.values()) or 1
        methods[graphs] = {k: round(v / total, 4) for k, v in by.items()}
        methods[f"faults_{graphs}"] = cap.summary.faults
    return {"per_layer": _layer_agreement(shares[False], shares[True]),
            "per_kernel_per_layer": _kernel_agreement(shares[False], shares[True]),
            "methods_eager": methods[False], "methods_graphed": methods[True],
            "faults": {"eager": methods["faults_False"], "graphed": methods["faults_True"]}}


def _layer_agreement(eager, graphed) -> float:
    def share(rows):
        tot = sum(r[4] for r in rows) or 1
        out = {}
        for r in rows:
            out[(r[1], r[2])] = out.get((r[1], r[2]), 0) + r[4] / tot
        return out

    e, g = share(eager), share(graphed)
    return round(sum(min(v, g.get(k, 0.0)) for k, v in e.items()), 5)


def _kernel_agreement(eager, graphed) -> float:
    """Per kernel name, the (layer, type) split of its time; weighted by the graphed time of each name."""
    def split(rows):
        out: dict = {}
        for name, i, t, _, ns in rows:
            out.setdefault(name, {}).setdefault((i, t), 0)
            out[name][(i, t)] += ns
        return out

    e, g = split(eager), split(graphed)
    total = sum(sum(v.values()) for v in g.values()) or 1
    agree = 0.0
    for name, parts in g.items():
        tg = sum(parts.values())
        te = sum(e.get(name, {}).values()) or 1
        agree += tg * sum(min(ns / tg, e.get(name, {}).get(k, 0) / te) for k, ns in parts.items())
    return round(agree / total, 5)


# ---------------------------------------------------------------------------------- layer times
def _replay_ms(graph, iters: int = 50) -> float:
    from bench_engine import replay_time  # this folder is on sys.path when run as a script

    return 1e3 * replay_time(graph, iters, warmup=3)


def layer_accuracy(model, tmp: Path, batch: int) -> dict:
    db = tmp / f"layers_b{batch}.duckdb"
    cap = hybridscope.capture(db=db, model=model, graph_every=4, quiet=True)
    cap.__enter__()
    engine = serve(model, requests(batch, 32, 64))
    infos = [i for i in cap._armed.graphs.graphs.values() if i.variant is not None]
    cap.__exit__(None, None, None)
    con = duckdb.connect(str(db), read_only=True)
    run = cap.summary.run_id
    sums = [r[0] for r in con.execute(
        "SELECT sum(duration_ns) FROM events WHERE run_id = ? AND source = 'layer' AND graph_id IS NOT NULL "
        "GROUP BY step", [run]).fetchall()]
    n_steps = con.execute("SELECT count(*), count(*) FILTER (WHERE graph_replay), count(*) FILTER (WHERE graph_replay "
                          "AND sampled) FROM steps WHERE run_id = ?", [run]).fetchall()[0]
    rows_per = con.execute("SELECT count(*) / count(DISTINCT step) FROM events WHERE run_id = ? AND source = 'layer' "
                           "AND graph_id IS NOT NULL", [run]).fetchall()[0][0]
    note = con.execute("SELECT notes->'$.ranks.\"0\".cuda_graphs' FROM runs WHERE run_id = ?", [run]).fetchall()
    con.close()
    out = {"batch": batch, "steps": n_steps[0], "replay_steps": n_steps[1], "timed_replays": n_steps[2],
           "layer_rows_per_timed_replay": rows_per, "graphs": len(infos),
           "events_per_variant": [len({id(m[0]) for m in i.marks}) for i in infos], "faults": cap.summary.faults,
           "cuda_graphs_note": json.loads(note[0][0]) if note and note[0][0] else None}
    if sums and infos:
        info = max(infos, key=lambda i: i.timed)
        med = statistics.median(sums) / 1e6
        plain, variant = _replay_ms(info.graph), _replay_ms(info.variant)
        out.update({"layer_sum_ms_median": round(med, 4), "variant_replay_ms": round(variant, 4),
                    "plain_replay_ms": round(plain, 4), "sum_vs_variant": round(med / variant, 4),
                    "sum_vs_plain": round(med / plain, 4),
                    "event_cost_us": round(1000 * (variant - plain) / max(1, len({id(m[0]) for m in info.marks})), 3)})
    del engine
    return out


# ------------------------------------------------------------------------------------- overhead
def _decode_stats(engine) -> tuple[float, float]:
    """(median, mean) decode-step latency past the first 8 steps: the median is a typical (untimed)
    replay, the mean carries the timed replays too (what throughput pays)."""
    lat = [s.latency for s in engine.steps if s.kind == "decode"][8:]
    return statistics.median(lat), statistics.fmean(lat)


def _run(model, batch, gen, variant, tmp, prof=None):
    reqs = requests(batch, 32, gen)
    gc.collect()
    if variant is None:
        return _decode_stats(serve(model, reqs))
    kw = dict(variant)
    observer = kw.pop("observer", None)
    if kw.get("metrics_port") == 0:  # the exporter on a free port of its own each run
        kw["metrics_port"] = free_port()
    cap = hybridscope.capture(db=tmp / "ovh.duckdb", quiet=True, **kw)
    if observer is not None:  # an observer without the HTTP endpoint (bisects the exporter's cost)
        from hybridscope.live.metrics import PrometheusExporter
        from hybridscope.live.observers import StepObserver

        cap.observers.append(StepObserver() if observer == "noop" else PrometheusExporter())
    with cap:
        cap.attach(model)
        if prof is not None:  # the serving only: not the capture's start and stop
            prof.enable()
        engine = serve(model, reqs)
        if prof is not None:
            prof.disable()
    return _decode_stats(engine)


def host_profile(model, tmp: Path, batch: int, names: tuple[str, ...], gen: int = 160, top: int = 25) -> dict:
    """Where the capture's host time goes on the model's thread: one run of each variant under
    cProfile (which slows Python calls: compare the variants, not the absolute times); per variant
    the `top` functions of hybridscope and prometheus_client by own time, in µs per decode step."""
    import cProfile
    import pstats

    out = {}
    for name in names:
        prof = cProfile.Profile()
        _run(model, batch, gen, VARIANTS[name], tmp, prof)
        stats = pstats.Stats(prof).stats
        rows = [(f"{Path(f).name}:{line}:{fn}", calls, tt) for (f, line, fn), (_cc, calls, tt, _ct, _) in stats.items()
                if "hybridscope" in f or "prometheus_client" in f]
        rows.sort(key=lambda r: -r[2])
        out[name] = {"own_us_per_step_total": round(1e6 * sum(r[2] for r in rows) / gen, 2),
                     "top": [[where, calls, round(1e6 * tt / gen, 2)] for where, calls, tt in rows[:top]]}
    return out


# layers_metrics: the Prometheus exporter (live.metrics) on top of layers_default, not scraped (a
# scrape every 15 s costs nothing per step); its own cost is metrics_over_layers (paired per round).
# layers_observer (a no-op step observer: the live read-back path alone) and layers_exporter (the
# exporter's observer without its HTTP endpoint) bisect that cost.
VARIANTS = {"layers_default": {}, "layers_every8": {"graph_every": 8}, "layers_every32": {"graph_every": 32},
            "layers_inline": {"graph_timing": "inline"},
            "layers_observer": {"observer": "noop"}, "layers_exporter": {"observer": "exporter"},
            "layers_metrics": {"metrics_port": 0}}
OVER_LAYERS = ("layers_observer", "layers_exporter", "layers_metrics")


def overhead(model, tmp: Path, batch: int, rounds: int, deadline: float, gen: int = 160,
             names: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    """Per variant, paired overhead of the mean decode step (`overhead_pct`: what throughput pays,
    timed replays included) and of the median step (`median_overhead_pct`: a typical replay)."""
    names = list(names)
    for v in [None, *(VARIANTS[k] for k in names)]:
        _run(model, batch, 24, v, tmp)  # warm-up, not counted
    paired = {k: {"mean": [], "median": []} for k in names}
    untraced = []
    for rnd in range(rounds):
        if time.monotonic() > deadline and rnd >= 3:
            break
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        before = _run(model, batch, gen, None, tmp)
        untraced.append(before)
        for k in order:
            t = _run(model, batch, gen, VARIANTS[k], tmp)
            after = _run(model, batch, gen, None, tmp)
            untraced.append(after)
            for i, stat in enumerate(("median", "mean")):
                paired[k][stat].append(100.0 * (t[i] / (0.5 * (before[i] + after[i])) - 1.0))
            before = after
    med = [u[0] for u in untraced]
    out = {"batch": batch, "rounds": len(paired[names[0]]["mean"]),
           "untraced_step_ms": round(1e3 * statistics.median(med), 4),
           "untraced_mean_step_ms": round(1e3 * statistics.median(u[1] for u in untraced), 4),
           "untraced_spread_pct": round(100 * (max(med) - min(med)) / statistics.median(med), 2)}
    for k, xs in paired.items():
        out[k] = {"overhead_pct": round(statistics.median(xs["mean"]), 3), "ci90": _ci(xs["mean"]),
                  "median_overhead_pct": round(statistics.median(xs["median"]), 3),
                  "median_ci90": _ci(xs["median"]), "all": [round(x, 3) for x in xs["mean"]]}
    for k in OVER_LAYERS:  # an observer's own cost over layers_default, round by round
        if "layers_default" in paired and k in paired:
            xs = [100.0 * ((1 + m / 100) / (1 + lay / 100) - 1)
                  for lay, m in zip(paired["layers_default"]["mean"], paired[k]["mean"])]
            out[f"{k.removeprefix('layers_')}_over_layers"] = {"overhead_pct": round(statistics.median(xs), 3),
                                                                "ci90": _ci(xs), "all": [round(x, 3) for x in xs]}
    return out


def _ci(xs, n=2000):
    rng = np.random.default_rng(0)
    a = np.asarray(xs)
    meds = np.median(a[rng.integers(0, len(a), (n, len(a)))], axis=1)
    return [round(float(v), 3) for v in np.percentile(meds, [5, 95])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_graphs.json")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--only", default="agreement,layers,overhead")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the overhead's capture variants (VARIANTS)")
    ap.add_argument("--profile", action="store_true",
                    help="after the overhead, one cProfile'd run of each variant at batch 1 (host_profile)")
    args = ap.parse_args()
    names = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    start = time.monotonic()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "date": time.strftime("%Y-%m-%d"), "preset": PRESET}
    model = build()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        tmp = Path(d)
        serve(model, requests(2, 16, 4))  # allocator, Triton autotuning
        if "agreement" in only:
            res["agreement"] = agreement(model, tmp)
            _dump(args.out, res)
        if "layers" in only:
            res["layers"] = [layer_accuracy(model, tmp, b) for b in (1, 8)]
            _dump(args.out, res)
        if "overhead" in only:
            left = args.budget_s - (time.monotonic() - start)
            res["overhead"] = []
            for b, deadline in ((1, time.monotonic() + left / 2), (8, start + args.budget_s)):
                res["overhead"].append(overhead(model, tmp, b, args.rounds, deadline, names=names))
                _dump(args.out, res)  # batch 1's rounds survive a kill during batch 8's
        if args.profile:
            res["host_profile"] = host_profile(model, tmp, 1, names)
            _dump(args.out, res)
    report(res)


def _dump(path, res) -> None:
    Path(path).write_text(json.dumps(res, indent=1, default=str))


def report(res: dict) -> None:
    print(f"\n{res['device']}, torch {res['torch']}, CUDA {res['cuda']}, {res['date']}, {res['preset']}")
    if "agreement" in res:
        a = res["agreement"]
        print(f"graphed vs eager decode (kernels mode): per-layer agreement {a['per_layer']:.4f}, "
              f"per kernel per layer {a['per_kernel_per_layer']:.4f}; methods graphed {a['methods_graphed']}")
    for r in res.get("layers", []):
        print(f"layers b{r['batch']}: {r['replay_steps']} replay steps, {r['timed_replays']} timed, "
              f"sum/variant {r.get('sum_vs_variant')}, sum/plain {r.get('sum_vs_plain')}, "
              f"event {r.get('event_cost_us')} us, faults {r['faults']}, note {r['cuda_graphs_note']}")
    for r in res.get("overhead", []):
        over = [f"{k.removeprefix('layers_')}_over_layers" for k in OVER_LAYERS]
        parts = ", ".join(f"{k} {r[k]['overhead_pct']:+.2f}% {r[k]['ci90']}"
                          + (f" (median step {r[k]['median_overhead_pct']:+.2f}%)" if "median_overhead_pct" in r[k] else "")
                          for k in (*VARIANTS, *over) if k in r)
        print(f"overhead b{r['batch']} ({r['rounds']} rounds, step {r['untraced_step_ms']} ms, mean "
              f"{r['untraced_mean_step_ms']} ms; mean-step overhead): {parts}")
    for name, p in res.get("host_profile", {}).items():
        print(f"host profile b1 {name}: {p['own_us_per_step_total']} us/step in hybridscope + prometheus_client; top: "
              + "; ".join(f"{w} {us}" for w, _n, us in p["top"][:6]))


if __name__ == "__main__":
    main()
