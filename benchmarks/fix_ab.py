"""Close the loop: skewed workload -> capture -> advice -> the engine fixes -> the same workload -> diff.

    python benchmarks/fix_ab.py --out DIR [--ranks 2] [--device cpu|cuda] [--repeat 3] [--seed 0]

One repetition:
  A. `--ranks` expert-parallel ranks (gloo on CPU, NCCL on GPUs) serve a workload whose routing hot
     spots come and go: each step, with probability --burst, routing is skewed by --skew toward
     experts 0-3 (all on rank 0), drawn from one seeded sequence so every rank and both runs see the
     same steps skewed. Every rank is captured (`layers` mode, every step, the demo's capture) and
     merged into run A of DIR/fix_ab.duckdb.
  advise. The advice of run A (the report's rules) is written as engine knobs: DIR/fixes.<i>.toml
     (`hybridscope advise --emit`).
  B. The same workload, same seeds, served with those knobs (`EngineConfig` overrides) -> run B.
  diff. `hybridscope diff A B --format json`: per layer type the p50/p99 change with its interval
     and significance, throughput change, and the verdict line.
Printed per repetition: moe_comm p50/p99 and tail ratio in A and B, diff's verdict on moe_comm p99,
throughput change, the share of (token, expert) rows the routing fix re-routed. The workload is
compute-bound prefill with some decode (CPU: the tiny preset with experts widened to 512 so that
their GEMMs weigh in the step as on a GPU), so the rank holding the hot experts is the straggler of
the skewed steps and its peers wait in the all-to-all (moe_comm).
Results: DIR/fix_ab.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hybridscope import demo

HOT = (0, 1, 2, 3)
# per device: (prompt tokens, new tokens, prompt tokens per step, requests per rank, overrides)
GEOMETRY = {"cpu": (64, 1, 512, 192, {"d_expert": 1024}), "cuda": (1024, 1, 4096, 256, {})}


def workload(device: str, ranks: int, skew: float, seed: int, requests: int | None) -> dict:
    base = demo.default_options(device=device, ranks=ranks, skew=skew, seed=seed)
    prompt, gen, step_tokens, n, overrides = GEOMETRY[device]
    o = replace(base, requests=requests or n, prompt_len=prompt, gen_len=gen, rate=0.0, jitter=False,
                skew_experts=HOT, overrides=overrides)
    return {**asdict(o), "step_tokens": step_tokens}


def rank_main(rank: int, world: int, port: int, work: str, o: dict, burst: float) -> None:
    """One rank: the model (with o's overrides: the fixes in run B), the bursty skew, served under capture."""
    import numpy as np
    import torch.distributed as dist

    from hybridscope.engine.moe import Router
    from hybridscope.engine.scheduler import Engine
    from hybridscope.live.session import capture

    model, cfg = demo.prepare_rank(rank, world, port, {**o, "skew": 0.0})
    routers = [m for m in model.modules() if isinstance(m, Router)]
    skewed = np.random.default_rng(o["seed"]).random(100_000) < burst  # step i skewed? same on every rank
    calls = {"n": 0}

    def set_skew(module, args):  # one model call = one engine step (ranks run them in lockstep)
        s = o["skew"] if skewed[calls["n"] % skewed.size] else 0.0
        for r in routers:
            r.set_skew(s, o["skew_experts"])
        calls["n"] += 1

    model.register_forward_pre_hook(set_skew)
    warm = demo.requests_for({**o, "requests": o["step_tokens"] // o["prompt_len"], "rate": 0.0}, rank + 10_000,
                             cfg.vocab_size)
    Engine(model, cuda_graphs=False, seed=o["seed"], max_prefill_tokens=o["step_tokens"]).run(warm)
    calls["n"] = 0
    demo.reset_fix_counters(model)
    engine = Engine(model, cuda_graphs=False, seed=o["seed"] + rank, max_prefill_tokens=o["step_tokens"])
    requests = demo.requests_for(o, rank, cfg.vocab_size)
    db = Path(work) / "fix_ab.duckdb"
    with capture(db=db, model=model, mode="layers", label=f"fix_ab rank {rank}", sample_every=1, quiet=True) as cap:
        done = engine.run(requests)
    (Path(work) / f"engine.rank{rank}.json").write_text(json.dumps(demo.fix_counters(model)))
    if rank == 0:
        demo.write_requests(Path(cap.summary.db), cap.summary.run_id, engine.t0, done)
    dist.destroy_process_group()


def serve(o: dict, burst: float, db: Path, label: str) -> int:
    """One spawn of the ranks; their stores merged into a new run of `db`; returns its id."""
    import torch.multiprocessing as mp

    from hybridscope.store import db as store
    from hybridscope.store import merge

    work = Path(tempfile.mkdtemp(prefix="fix-ab-"))
    try:
        mp.start_processes(rank_main, args=(o["world"], demo.free_port(), str(work), o, burst),
                           nprocs=o["world"], join=True, start_method="spawn")
        con = store.open_store(db)
        try:
            run_id = merge.merge(con, [merge.inspect(p) for p in sorted(work.glob("fix_ab*.duckdb"))], label=label)
            demo.write_engine_notes(con, run_id, demo.DemoOptions(**{k: v for k, v in o.items()
                                                                    if k in demo.DemoOptions.__dataclass_fields__}),
                                    sorted(work.glob("engine.rank*.json")))
        finally:
            con.close()
        return run_id
    finally:
        shutil.rmtree(work, ignore_errors=True)


def advise(db: Path, run_id: int, out: Path) -> dict:
    """`hybridscope advise --emit` for run A, in process; returns the knobs as EngineConfig overrides."""
    from hybridscope.analyze.fixes import fixes_from_advice
    from hybridscope.analyze.report import build_report
    from hybridscope.engine.config import load_fixes
    from hybridscope.present.fixes import render_toml
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        report = build_report(con, run_id)
    finally:
        con.close()
    out.write_text(render_toml(fixes_from_advice(report["advice"]), [f"fix_ab: advice of run {run_id} of {db}"]))
    return load_fixes(out)


def diff(db: Path, a: int, b: int) -> dict:
    """`hybridscope diff A B --format json`, run as a user would."""
    got = subprocess.run([sys.executable, "-m", "hybridscope", "diff", str(a), str(b), "--db", str(db),
                          "--format", "json"], capture_output=True, text=True, check=False)
    if got.returncode not in (0, 3):
        raise SystemExit(f"hybridscope diff failed ({got.returncode}): {got.stderr.strip()}")
    return json.loads(got.stdout)


def notes(db: Path, run_id: int) -> dict:
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        (n,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    finally:
        con.close()
    return json.loads(n or "{}").get("engine", {})


def one(o: dict, burst: float, db: Path, out: Path, i: int) -> dict:
    a = serve(o, burst, db, f"fix_ab {i} A skewed")
    knobs = advise(db, a, out / f"fixes.{i}.toml")
    b = serve({**o, "overrides": {**o["overrides"], **knobs}}, burst, db, f"fix_ab {i} B +fixes")
    d = diff(db, a, b)
    return {"rep": i, "seed": o["seed"], "run_a": a, "run_b": b, "knobs": {k: str(v) for k, v in knobs.items()},
            "diff": d, "rerouted_share": notes(db, b).get("rerouted_share")}


def moe_comm_row(d: dict) -> dict | None:
    return next((r for r in d["rows"] if r.get("group") == "moe_comm"), None)


def summary(r: dict) -> dict:
    """The numbers of one repetition that docs/benchmarks.md quotes."""
    row, meta = moe_comm_row(r["diff"]), r["diff"]["meta"]
    out = {"rep": r["rep"], "knobs": r["knobs"], "rerouted_share": r["rerouted_share"],
           "throughput_change_pct": meta.get("throughput_change_pct"), "verdict": meta.get("verdict")}
    if row:
        sig = row.get("significant") or ""
        out.update(p99_a_ns=row["p99_a_ns"], p99_b_ns=row["p99_b_ns"], p99_change_pct=row["p99_change_pct"],
                   ci=(row.get("p99_ci_lo_pct"), row.get("p99_ci_hi_pct")), p50_a_ns=row["p50_a_ns"],
                   p50_b_ns=row["p50_b_ns"], p99_significant="p99" in sig)
    return out


def render(results: list[dict]) -> str:
    def ms(ns):
        return "-" if ns is None else f"{ns / 1e6:.2f} ms"

    def pct(x):
        return "-" if x is None else f"{x:+.1f}%"

    lines = [(f"{'rep':>3}  {'moe_comm p99 A':>14}  {'p99 B':>9}  {'Δp99 [CI]':>28}  {'signif.':>7}  "
             f"{'tput Δ':>7}  {'re-routed':>9}")]
    for r in map(summary, results):
        if "p99_a_ns" not in r:
            lines.append(f"{r['rep']:>3}  no moe_comm in the diff: {r['verdict']}")
            continue
        lo, hi = r["ci"]
        ci = f"{pct(r['p99_change_pct'])} [{pct(lo)}, {pct(hi)}]"
        share = "-" if r["rerouted_share"] is None else f"{100 * r['rerouted_share']:.1f}%"
        lines.append(f"{r['rep']:>3}  {ms(r['p99_a_ns']):>14}  {ms(r['p99_b_ns']):>9}  {ci:>28}  "
                     f"{'yes' if r['p99_significant'] else 'no':>7}  {pct(r['throughput_change_pct']):>7}  {share:>9}")
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items()) or "none (no advice fired)"
        lines.append(f"     knobs: {knobs}")
        lines.append(f"     diff: {r['verdict']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skew", type=float, default=10.0, help="skew of a hot step, logit-std units")
    p.add_argument("--burst", type=float, default=0.3, help="share of steps whose routing is skewed")
    p.add_argument("--requests", type=int, default=None, help="requests per rank (default per device)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / "fix_ab.duckdb"
    results = []
    for i in range(args.repeat):
        o = workload(args.device, args.ranks, args.skew, args.seed + i, args.requests)
        results.append(one(o, args.burst, db, args.out, i))
        print(render(results[-1:]), flush=True)
    (args.out / "fix_ab.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "summary": [summary(r) for r in results],
                                                      "results": results}, indent=1, default=str))
    print("\n" + render(results))
    print(f"Wrote {args.out / 'fix_ab.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
