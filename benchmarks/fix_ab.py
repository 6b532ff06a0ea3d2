"""Close the loop: skewed workload -> capture -> advice -> the engine fixes -> the same workload -> diff.

    python benchmarks/fix_ab.py --out DIR [--ranks 2] [--device cpu|cuda] [--repeat 3] [--seed 0] [--skew 10]
                                          [--requests N] [--control]

One repetition is the README's five commands ("Close the loop"), in process:
  A. `hybridscope demo --workload hotspots`: expert-parallel ranks (gloo on CPU, NCCL on GPUs) prefill
     a fixed number of prompt tokens per step; in 30% of the steps (one seeded sequence: the same
     steps on every rank and in both runs) routing is skewed by --skew toward experts 0-3, all on
     rank 0, so rank 0 is the straggler of those steps and its peers wait in the all-to-all
     (moe_comm). Every rank captured (`layers` mode, every step), merged into run A of
     DIR/run.duckdb.
  advise. `hybridscope advise --emit DIR/fixes.<i>.toml`: the report's advice as engine knobs.
  B. The same workload and seeds, served with those knobs (`demo --fixes`) -> run B.
  diff. `hybridscope diff A B --format json` (run as a user runs it): per layer type the p50/p99
     change with its interval and significance, the throughput change, the verdict line.
  control (--control). Run A again, unchanged, after B, and `diff A A'`: what two runs of one
     workload differ by on this machine (identical runs' throughput differed by -8% ... +28% on the
     2-core VM), so that the fix's change is read beside the noise.
Printed per repetition: moe_comm p99 of A and B, diff's interval and significance, the throughput
change, the share of (token, expert) rows the routing fix re-routed, the knobs. Results:
DIR/fix_ab.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hybridscope import demo


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


def engine_notes(db: Path, run_id: int) -> dict:
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        (n,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    finally:
        con.close()
    return json.loads(n or "{}").get("engine", {})


def one(opts: demo.DemoOptions, out: Path, i: int, control: bool = False) -> dict:
    db, a = demo.run_demo(out, opts)
    knobs = advise(db, a, out / f"fixes.{i}.toml")
    _, b = demo.run_demo(out, replace(opts, overrides={**opts.overrides, **knobs}))
    got = {"rep": i, "seed": opts.seed, "run_a": a, "run_b": b, "knobs": {k: str(v) for k, v in knobs.items()},
           "diff": diff(db, a, b), "rerouted_share": engine_notes(db, b).get("rerouted_share")}
    if control:
        _, a2 = demo.run_demo(out, opts)
        got.update(run_control=a2, control=diff(db, a, a2))
    return got


def summary(r: dict) -> dict:
    """The numbers of one repetition that docs/benchmarks.md quotes (`control`: the same of A vs A')."""
    out = {"rep": r["rep"], "knobs": r["knobs"], "rerouted_share": r["rerouted_share"], **moe_comm_change(r["diff"])}
    if "control" in r:
        out["control"] = moe_comm_change(r["control"])
    return out


def moe_comm_change(d: dict) -> dict:
    """moe_comm's p50/p99 change, interval and significance, and the throughput change, of one diff."""
    row = next((x for x in d["rows"] if x.get("group") == "moe_comm"), None)
    meta = d["meta"]
    out = {"throughput_change_pct": meta.get("throughput_change_pct"), "verdict": meta.get("verdict")}
    if row:
        out.update(p99_a_ns=row["p99_a_ns"], p99_b_ns=row["p99_b_ns"], p99_change_pct=row["p99_change_pct"],
                   ci=(row.get("p99_ci_lo_pct"), row.get("p99_ci_hi_pct")), p50_a_ns=row["p50_a_ns"],
                   p50_b_ns=row["p50_b_ns"], p99_significant="p99" in (row.get("significant") or ""))
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
        if "control" in r:
            lines.append(f"     control, A again: {r['control']['verdict']}")
    if len(results) > 1:
        lines += medians(results)
    return "\n".join(lines)


def medians(results: list[dict]) -> list[str]:
    """Median over the repetitions of the fix's changes, and of the control's."""
    import statistics

    out = []
    for label, key in (("fix (A -> B)", None), ("control (A -> A')", "control")):
        rows = [s[key] if key else s for s in map(summary, results) if not key or key in s]
        p99 = [x["p99_change_pct"] for x in rows if x.get("p99_change_pct") is not None]
        thr = [x["throughput_change_pct"] for x in rows if x.get("throughput_change_pct") is not None]
        if p99 and thr:
            sig = sum(bool(x.get("p99_significant")) for x in rows)
            out.append(f"median of {len(rows)}, {label}: moe_comm p99 {statistics.median(p99):+.1f}% "
                       f"(significant in {sig}), throughput {statistics.median(thr):+.1f}% "
                       f"(range {min(thr):+.1f}% … {max(thr):+.1f}%)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skew", type=float, default=10.0, help="skew of a hot step, logit-std units")
    p.add_argument("--requests", type=int, default=None, help="requests per rank (default per device)")
    p.add_argument("--control", action="store_true", help="also run A again unchanged and diff A A' (the noise)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(args.repeat):
        opts = demo.default_options(device=args.device, ranks=args.ranks, requests=args.requests, skew=args.skew,
                                    seed=args.seed + i, workload="hotspots")
        results.append(one(opts, args.out, i, control=args.control))
        print(render(results[-1:]), flush=True)
    (args.out / "fix_ab.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "summary": [summary(r) for r in results],
                                                      "results": results}, indent=1, default=str))
    print("\n" + render(results))
    print(f"Wrote {args.out / 'fix_ab.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
