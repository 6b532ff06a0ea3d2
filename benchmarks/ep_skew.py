"""Expert parallel across GPUs: balanced vs skewed routing in two regimes, every rank captured, merged, analysed.

    python benchmarks/ep_skew.py --out DIR [--scenario decode,prefill] [--ranks 2] [--skew 3]
                                 [--requests N] [--prefill-requests N] [--preset P] [--device cpu|cuda]

Each scenario is one spawn of `--ranks` processes (NCCL on GPUs, gloo on CPU) running the reference
engine expert-parallel on one model, serving the same request stream twice under `kernels`-mode
capture (every step), each rank into its own store: with balanced routing, then with routing skewed
by --skew (logit-std units, Router.set_skew) toward hot experts that all live on rank 0. Each
(scenario, routing) is merged into one run of DIR/ep.duckdb.

- decode (the demo's workload): Poisson arrivals, prompts of 1/2..1 x prompt_len tokens, 1/2..1 x
  gen_len new tokens (GPU: 256 and 32), hot experts 0 and 1. Most steps decode a few tokens per
  rank: the expert GEMMs are weight-bandwidth bound, so fewer distinct experts make a rank faster.
- prefill (compute bound): every request at t=0, every prompt exactly prompt_len tokens (GPU:
  1024), one new token each (the one that ends its prefill), STEP_TOKENS prompt tokens per step
  (the engine's max_prefill_tokens, GPU: 4096 = its default): every step prefills the same number
  of prompts on every rank, so only the routing differs between ranks. Thousands of rows per expert
  and step: the expert GEMMs are compute bound. Hot experts 0-3 (top-6 of 32 on the GPU preset:
  79% of the rows went to rank 0 on 2x H200, 3.8x its peer's); no capacity factor, so nothing is dropped and the
  skewed rank computes every row routed to it. On CPU (preset tiny) the experts are widened
  (d_expert 512) so that their GEMMs weigh in the step as they do on the GPU.

Beside the capture, a forward hook on each dispatch module sums the rows the engine itself sent to
every peer (ground truth for the traffic matrix). Per run: moe_comm p50/p99/tail ratio (on CPU,
which has no device timeline, the gloo all-to-alls' own durations), per rank the routed-expert rows
and GFLOP, its wait share of step time and the steps it was the straggler of, the straggler of each
step, the median step wait share, throughput, the traffic matrix vs the dispatch counts; and `diff`
balanced -> skewed. Waits and stragglers count steps 1.. (step 0 holds the ranks' capture start-up).
Results: DIR/ep_skew.json and a table per scenario on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hybridscope import demo
from hybridscope.analyze.stats import quantile_cont

SCENARIOS = ("decode", "prefill")
# prefill geometry per device: (prompt tokens, prompt tokens per step, requests per rank, EngineConfig overrides)
PREFILL = {"cuda": (1024, 4096, 128, {}), "cpu": (64, 512, 48, {"d_expert": 512})}
PREFILL_HOT = (0, 1, 2, 3)


def scenario_options(name: str, base: demo.DemoOptions, requests: int | None) -> dict:
    """The options one scenario's ranks run with (balanced: skew 0), plus its step budget."""
    if name == "decode":
        return {**asdict(replace(base, requests=requests or base.requests)), "scenario": name,
                "step_tokens": 4096, "warm_requests": 2}
    prompt, step_tokens, n, overrides = PREFILL[base.device]
    o = replace(base, requests=requests or n, prompt_len=prompt, gen_len=1, rate=0.0, jitter=False,
                skew_experts=PREFILL_HOT, overrides={**overrides, **base.overrides})
    return {**asdict(o), "scenario": name, "step_tokens": step_tokens, "warm_requests": step_tokens // prompt}


def rank_main(rank: int, world: int, port: int, work: str, o: dict, skews: list[float]) -> None:
    """One rank: one model, then per routing: skew set, warm-up of the run's shape, the run captured."""
    import torch.distributed as dist

    from hybridscope.engine.ep import AllToAllDispatch
    from hybridscope.engine.moe import Router

    model, cfg = demo.prepare_rank(rank, world, port, o)
    sent = [0] * world  # rows this rank's engine sent to each peer, summed over layers and steps
    counting = {"on": False}

    def count(module, args, output):
        if counting["on"]:
            for peer, n in enumerate(module.last_send_counts):
                sent[peer] += int(n)

    for m in model.modules():
        if isinstance(m, AllToAllDispatch):
            m.register_forward_hook(count)
    routers = [m for m in model.modules() if isinstance(m, Router)]
    for i, skew in enumerate(skews):
        for r in routers:
            r.set_skew(skew, o["skew_experts"])
        sent[:] = [0] * world
        out = Path(work) / f"run{i}"
        out.mkdir(exist_ok=True)
        info = _serve(model, cfg, rank, {**o, "skew": skew}, out, counting)
        (out / f"rank{rank}.json").write_text(json.dumps({**info, "sent": sent}))
    dist.destroy_process_group()


def _serve(model, cfg, rank: int, o: dict, out: Path, counting: dict) -> dict:
    """Warm up on the run's own shapes (the skew kernels, a full prefill step), then serve under capture
    into `out`; returns the engine's token count and serving window."""
    from hybridscope.engine.scheduler import Engine
    from hybridscope.live.session import capture

    warm = demo.requests_for({**o, "requests": o["warm_requests"], "rate": 0.0}, rank + 10_000, cfg.vocab_size)
    Engine(model, cuda_graphs=False, seed=o["seed"], max_prefill_tokens=o["step_tokens"]).run(warm)
    engine = Engine(model, cuda_graphs=False, seed=o["seed"] + rank, max_prefill_tokens=o["step_tokens"])
    requests = demo.requests_for(o, rank, cfg.vocab_size)
    with capture(db=out / "ep.duckdb", model=model, mode="kernels", label=f"{o['scenario']} skew {o['skew']:g}",
                 sample_every=1, quiet=True) as cap:  # every step: the run is short, the waits are the point
        counting["on"] = True
        done = engine.run(requests)
        counting["on"] = False
    if rank == 0:
        demo.write_requests(Path(cap.summary.db), cap.summary.run_id, engine.t0, done)
    steps = engine.steps
    return {"tokens": sum(s.prefill_tokens + s.decode_tokens for s in steps),
            "start_s": engine.t0 + steps[0].start, "end_s": engine.t0 + steps[-1].end,  # perf_counter: one host clock
            "kinds": sorted({s.kind for s in steps}), "steps": len(steps)}


def run_scenario(o: dict, skews: list[float], db: Path) -> list[tuple[int, dict]]:
    """One spawn serving every routing; each merged into `db`: [(run id, {rank: its rank json})]."""
    import torch.multiprocessing as mp

    from hybridscope.store import db as store
    from hybridscope.store import merge

    work = Path(tempfile.mkdtemp(prefix="ep-skew-"))
    try:
        mp.start_processes(rank_main, args=(o["world"], demo.free_port(), str(work), o, skews),
                           nprocs=o["world"], join=True, start_method="spawn")
        out = []
        for i, skew in enumerate(skews):
            run = work / f"run{i}"
            con = store.open_store(db)
            try:
                run_id = merge.merge(con, [merge.inspect(p) for p in sorted(run.glob("ep*.duckdb"))],
                                     label=f"ep{o['world']} {o['scenario']} skew {skew:g}")
            finally:
                con.close()
            out.append((run_id, {r: json.loads((run / f"rank{r}.json").read_text()) for r in range(o["world"])}))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def flop_per_row(o: dict) -> int:
    """FLOPs of one (token, expert) row through a routed expert: up [I or 2I, d] and down [d, I]."""
    from hybridscope.engine.config import EngineConfig

    cfg = EngineConfig.from_preset(o["preset"], **o["overrides"])
    up = cfg.d_expert * (2 if cfg.activation == "swiglu" else 1)
    return 2 * cfg.d_model * (up + cfg.d_expert)


def _quantiles(ns: list[int]) -> dict | None:
    if not ns:
        return None
    x = np.sort(np.asarray(ns, dtype=np.float64))
    p50, p99 = (quantile_cont(x, q) for q in (0.5, 0.99))  # decompose's definition (DuckDB quantile_cont)
    return {"n": len(ns), "p50_ns": p50, "p99_ns": p99, "tail_ratio": p99 / p50 if p50 else None}


def summarize(con, run_id: int, info: dict, row_flop: int) -> dict:
    """One run's numbers (module doc); `info` holds each rank's engine counts and serving window."""
    from hybridscope.analyze import collectives as col
    from hybridscope.analyze import timeline
    from hybridscope.analyze.compare import throughput
    from hybridscope.analyze.decompose import decompose

    ranks = sorted(info)
    comm = next((r for r in decompose(con, run_id).to_records() if r["layer_type"] == "moe_comm"), None)
    calls = [c for c in col.collectives(con, run_id).to_records() if c["step"] is not None and c["step"] >= 1]
    if comm:
        comm = {**{k: comm[k] for k in ("n", "p50_ns", "p99_ns", "tail_ratio", "gpu_pct")}, "measure": "kernels"}
    else:  # CPU: no device timeline; the all-to-alls' own durations (gloo ranges, enqueue to completion)
        comm = _quantiles([c["end_ns"] - c["start_ns"] for c in calls if c["name"] == "gloo:all_to_all"])
        comm = comm and {**comm, "measure": "gloo all_to_all ranges, steps 1.."}
    steps = [s for s in col.stragglers(con, run_id).to_records() if s["step"] >= 1]
    step_ns = {r: 0 for r in ranks}
    for w in timeline.step_windows(con, run_id):
        if w["step"] >= 1:
            step_ns[w["rank"]] += w["end_ns"] - w["ts_ns"]
    traffic = {f"{t['src_rank']}->{t['dst_rank']}": t["rows"]
               for t in col.traffic(con, run_id, payload_only=True).to_records()}
    sent = {f"{r}->{p}": n for r in ranks for p, n in enumerate(info[r]["sent"])}
    per_rank = {}
    for r in ranks:
        rows = sum(info[s]["sent"][r] for s in ranks)  # rows its experts computed
        wait = sum(c["wait_ns"] for c in calls if c["rank"] == r)
        experts = next((g["gpu_ns"] for g in decompose(con, run_id, rank=r).to_records()
                        if g["layer_type"] == "moe_experts"), None) if comm and comm["measure"] == "kernels" else None
        per_rank[r] = {"expert_rows": rows, "expert_rows_traffic": sum(v for k, v in traffic.items()
                                                                       if k.endswith(f"->{r}")),
                       "expert_gflop": rows * row_flop / 1e9, "experts_gpu_ms": experts and experts / 1e6,
                       "wait_ms": wait / 1e6, "step_ms": step_ns[r] / 1e6,
                       "wait_share_pct": 100.0 * wait / step_ns[r] if step_ns[r] else None,
                       "straggler_steps": sum(s["straggler"] == r for s in steps),
                       "caused_wait_ms": sum(s["caused_ns"] for s in steps if s["straggler"] == r) / 1e6,
                       "last_arrivals": sum(c["straggler"] == "yes" for c in calls if c["rank"] == r)}
    shares = [s["wait_share_pct"] for s in steps if s["wait_share_pct"] is not None]
    thr, unit = throughput(con, run_id)
    window = max(i["end_s"] for i in info.values()) - min(i["start_s"] for i in info.values())
    return {"run_id": run_id, "moe_comm": comm, "per_rank": per_rank,
            "step_straggler": [s["straggler"] for s in steps],
            "step_wait_share_pct": shares, "step_wait_share_pct_median": float(np.median(shares)) if shares else None,
            "traffic_rows": traffic, "engine_sent_rows": sent, "traffic_matches_dispatch": traffic == sent,
            "throughput": thr, "throughput_unit": unit,
            "tokens_per_s_all_ranks": sum(i["tokens"] for i in info.values()) / window if window > 0 else None,
            "step_kinds": sorted({k for i in info.values() for k in i["kinds"]})}


def measure(o: dict, skews: list[float], db: Path) -> dict:
    """Serve and analyse one scenario: {'skew S': summary, ..., 'diff': verdict, 'options': o}."""
    from hybridscope.analyze.compare import diff_table, run_samples
    from hybridscope.store import db as store

    runs = run_scenario(o, skews, db)
    row_flop = flop_per_row(o)
    con = store.open_readonly(db)
    try:
        out = {f"skew {s:g}": summarize(con, run_id, info, row_flop) for s, (run_id, info) in zip(skews, runs)}
        ids = [run_id for run_id, _ in runs]
        verdict = diff_table(run_samples(con, ids[0]), run_samples(con, ids[-1]), meta={}).meta["verdict"]
        if o["device"] == "cpu":
            verdict += " (on CPU the diff has no device timeline to compare; see moe_comm above)"
    finally:
        con.close()
    return {**out, "diff": verdict, "options": {**o, "skews": skews}}


def render(name: str, res: dict) -> str:
    """The scenario's table: one column per routing."""
    o = res["options"]
    runs = {k: v for k, v in res.items() if k.startswith("skew ")}
    lens = (f"prompts {o['prompt_len'] // 2}-{o['prompt_len']} tokens, {max(1, o['gen_len'] // 2)}-{o['gen_len']} new"
            if o["jitter"] else f"prompts of {o['prompt_len']} tokens, {o['gen_len']} new")
    arrive = f"arrivals {o['rate']:g}/s" if o["rate"] else "all at t=0"
    head = (f"{name}: {o['world']} ranks, {o['preset']}, {o['requests']} requests/rank ({arrive}), {lens}, "
            f"<= {o['step_tokens']} prompt tokens/step, hot experts {','.join(map(str, o['skew_experts']))}")

    def ranks(r: dict, key: str, fmt: str) -> str:
        return " / ".join("-" if v[key] is None else format(v[key], fmt) for v in r["per_rank"].values())

    def comm(r: dict, key: str, scale: float, fmt: str) -> str:
        m = r["moe_comm"]
        return "-" if not m or m[key] is None else format(m[key] / scale, fmt)

    lines = [
        ("moe_comm p50 / p99 (us)", lambda r: f"{comm(r, 'p50_ns', 1e3, '.1f')} / {comm(r, 'p99_ns', 1e3, '.1f')}"),
        ("moe_comm tail p99/p50", lambda r: comm(r, "tail_ratio", 1, ".1f") + "x"),
        ("expert rows per rank", lambda r: ranks(r, "expert_rows", ",d")),
        ("expert GFLOP per rank", lambda r: ranks(r, "expert_gflop", ",.1f")),
        ("moe_experts GPU ms per rank", lambda r: ranks(r, "experts_gpu_ms", ",.1f")),
        ("wait share of step time per rank %", lambda r: ranks(r, "wait_share_pct", ".1f")),
        ("steps as straggler per rank", lambda r: ranks(r, "straggler_steps", "d")),
        ("wait caused as straggler, ms per rank", lambda r: ranks(r, "caused_wait_ms", ",.1f")),
        ("step wait share, median %", lambda r: format(r["step_wait_share_pct_median"] or 0.0, ".1f")),
        ("tokens/s, all ranks", lambda r: format(r["tokens_per_s_all_ranks"] or 0.0, ".0f")),
        ("traffic == engine dispatch", lambda r: "yes" if r["traffic_matches_dispatch"] else "NO"),
    ]
    width = max(len(k) for k, _ in lines) + 2
    cells = [[fn(r) for r in runs.values()] for _, fn in lines]
    col = max(24, *(len(c) + 2 for row in cells for c in row))  # 4 and 8 ranks widen the per-rank cells
    out = [head, " " * width + "".join(f"{k:>{col}}" for k in runs)]
    out += [f"{label:<{width}}" + "".join(f"{c:>{col}}" for c in row) for (label, _), row in zip(lines, cells, strict=True)]
    for k, r in runs.items():
        out.append(f"{k}, steps 1..: straggler {''.join(map(str, r['step_straggler']))}")
    out.append(f"diff balanced -> skewed: {res['diff']}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scenario", default=",".join(SCENARIOS), help="comma-separated: decode, prefill")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--skew", type=float, default=3.0)
    p.add_argument("--requests", type=int, default=None, help="decode: requests per rank")
    p.add_argument("--prefill-requests", type=int, default=None, help="prefill: requests per rank")
    p.add_argument("--preset", default=None)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    names = [s.strip() for s in a.scenario.split(",") if s.strip()]
    if not names or any(s not in SCENARIOS for s in names):
        p.error(f"--scenario: choose from {', '.join(SCENARIOS)}")
    base = demo.default_options(device=a.device, ranks=a.ranks, skew=0.0, mode="kernels")
    if a.preset:
        base = replace(base, preset=a.preset)
    a.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        o = scenario_options(name, base, a.requests if name == "decode" else a.prefill_requests)
        results[name] = measure(o, [0.0, a.skew], a.out / "ep.duckdb")
        print(render(name, results[name]), flush=True)
        # after each scenario: a run stopped by its time limit keeps what it finished
        (a.out / "ep_skew.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"Wrote {a.out / 'ep_skew.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
