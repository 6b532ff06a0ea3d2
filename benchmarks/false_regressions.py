"""False regressions of `check` on identical runs: N CPU demo runs with one seed and config, each
checked against baselines pooled from other runs of the same set (and, for contrast, against
one-run baselines). Any 'regressed' row is a false regression: nothing changed between the runs.

    python benchmarks/false_regressions.py --out /tmp/fr --runs 20 --requests 6
    python benchmarks/false_regressions.py --out /tmp/fr --analyze-only   # re-check a store already made

Per (group, statistic) it prints the false-regression rate over the checks, and the worst of
them; docs/benchmarks.md records a run. Baselines, for run i (indices cyclic over the N runs):
- spread: k = 5 runs spread over the session, i+1, i+5, i+9, i+13, i+17 (then i+2, i+6, ... and
  i+3, i+7, ...: three checks per run): a baseline saved from runs made at different times;
- adjacent: k = 3 consecutive runs i+1..i+3 (then i+4..i+6, i+7..i+9): saved in one sitting;
- single: one run, i+1 (then i+2, i+3): what `check` had before multi-run baselines.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path


def make_runs(out: Path, n: int, requests: int, seed: int) -> tuple[Path, list[int]]:
    from hybridscope.demo import default_options, run_demo

    opts = default_options(device="cpu", requests=requests, seed=seed)
    ids, db = [], out / "run.duckdb"
    for i in range(n):
        t0 = time.perf_counter()
        db, run = run_demo(out, opts)
        ids.append(run)
        print(f"run {run} ({i + 1}/{n}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return db, ids


SCHEMES = {  # name -> the offsets (from the run checked) of each baseline it is checked against
    "spread": ((1, 5, 9, 13, 17), (2, 6, 10, 14, 18), (3, 7, 11, 15, 19)),
    "adjacent": ((1, 2, 3), (4, 5, 6), (7, 8, 9)),
    "single": ((1,), (2,), (3,)),
}


def check_all(db: Path, ids: list[int], limits: dict[str, float]) -> dict:
    from hybridscope.analyze.compare import baseline_of, check_run
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    per_run = {i: baseline_of(con, i)[0]["layer_type"] for i in ids}
    out = {}
    for label, offsets in SCHEMES.items():
        kk = len(offsets[0])
        trials, fails, groups = 0, Counter(), Counter()
        for pos, i in enumerate(ids):
            for offs in offsets:
                members = [ids[(pos + o) % len(ids)] for o in offs]
                base = baselines.pool([per_run[m] for m in members])
                table = check_run(con, i, base, limits=limits, meta={})
                trials += 1
                for r in table.to_records():
                    if r["status"] in ("regressed", "ok", "improved"):
                        groups[(r["group"], r["stat"])] += 1
                    if r["status"] == "regressed":
                        fails[(r["group"], r["stat"])] += 1
        out[label] = {"baseline_runs": kk, "checks": trials,
                      "pairs": {f"{g}/{s}": {"tested": groups[(g, s)], "regressed": fails[(g, s)]}
                                for g, s in sorted(groups)}}
    con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=6, help="requests per rank of each demo run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analyze-only", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.analyze_only:
        from hybridscope.store import db as store

        db = a.out / "run.duckdb"
        con = store.open_readonly(db)
        ids = [r for (r,) in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
        con.close()
    else:
        db, ids = make_runs(a.out, a.runs, a.requests, a.seed)
    limits = {"p50": 0.05, "p99": 0.10}
    t0 = time.perf_counter()
    res = check_all(db, ids, limits)
    import torch

    res["meta"] = {"runs": len(ids), "requests_per_rank": a.requests, "seed": a.seed, "limits": limits,
                   "python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()
                   or platform.machine(), "date": time.strftime("%Y-%m-%d"), "check_s": time.perf_counter() - t0}
    (a.out / "false_regressions.json").write_text(json.dumps(res, indent=1))
    for label in SCHEMES:
        r = res[label]
        worst = max(r["pairs"].items(), key=lambda kv: kv[1]["regressed"] / max(kv[1]["tested"], 1))
        total = sum(p["regressed"] for p in r["pairs"].values())
        tested = sum(p["tested"] for p in r["pairs"].values())
        print(f"{label} baselines ({r['baseline_runs']} run(s) each), {r['checks']} checks: "
              f"{total} false regressions in {tested} (group, statistic) tests; worst {worst[0]}: "
              f"{worst[1]['regressed']}/{worst[1]['tested']}")
        for key, p in r["pairs"].items():
            if p["regressed"]:
                print(f"  {key}: {p['regressed']}/{p['tested']}")
    print(f"Wrote {a.out / 'false_regressions.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
