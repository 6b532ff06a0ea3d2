"""Scale benchmark: decompose, report (terminal and HTML), check and export on stores of 1M, 10M,
50M kernels (benchmarks/scale_store.py: 8 ranks, steps, layers, routing, collectives), and import
of a synthetic Kineto trace; wall time, CPU time and peak RSS of each, with the growth exponent.

Each verb runs as `python -m hybridscope ...` in a child process; wall, CPU (user + sys, all
threads) and peak RSS are that child's own (os.wait4). Stores are cached under benchmarks/.cache
(keyed by size) and reused; `baseline save` (for check) writes into the cached store once.

    python benchmarks/bench_scale.py --kernels 1e6 1e7
    python benchmarks/bench_scale.py --kernels 1e6 --import-trace /tmp/synthetic_5000000.pt.trace.json.gz

Prints a markdown table (docs/benchmarks.md) and, between consecutive sizes, the exponent b of
time ~ N^b and RSS ~ N^b (1: linear; < 1: sub-linear).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SRC = HERE.parent / "src"

STEPS = ("decompose", "report", "report --html", "baseline save", "check", "export --parquet")


def run(args: list[str], env: dict) -> dict:
    """Run `python -m hybridscope ARGS`; its wall, CPU seconds and peak RSS (MiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "hybridscope", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace").strip().splitlines()
    p.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    out = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024, "code": code}
    if code not in (0, 3):  # check exits 3 on a regression: still a measurement
        out["error"] = (err or ["?"])[-1][:100]
    return out


def measure(n: int, work: Path, env: dict, steps: list[str]) -> dict[str, dict]:
    sys.path.insert(0, str(HERE))
    from scale_store import build

    CACHE.mkdir(exist_ok=True)
    db = CACHE / f"scale_{n}.duckdb"
    got: dict[str, dict] = {}
    if not db.exists():
        print(f"building {db.name} ...", file=sys.stderr, flush=True)
        got["build"] = {"wall": build(db, n), "cpu": None, "rss": None}
    d = ["--db", str(db)]
    if "baseline save" in steps or "check" in steps:
        got["baseline save"] = run(["baseline", "save", *d, "--name", "scale", "--run", "1", "--force"], env)
    commands = {"decompose": ["decompose", *d], "report": ["report", *d],
                "report --html": ["report", *d, "--html", str(work / "report.html")],
                "check": ["check", *d, "--baseline", "scale"],
                "export --parquet": ["export", *d, "--parquet", str(work / f"parquet_{n}")]}
    for name in steps:
        if name not in got:
            got[name] = run(commands[name], env)
        print(f"  {n:,} {name}: {_cell(got[name])}", file=sys.stderr, flush=True)
    return got


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return f"failed: {r['error']}"
    cpu = f" ({r['cpu']:.1f} CPU s)" if r.get("cpu") is not None else ""
    rss = f", {r['rss']:.0f} MiB" if r.get("rss") is not None else ""
    return f"{r['wall']:.1f} s{cpu}{rss}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--import-trace", type=Path, help="a Kineto trace to import (timed beside the first size)")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS, help="verbs to time (default: all)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(_machine())
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="hs-scale-") as tmp:
        work = Path(tmp)
        if args.import_trace:
            r = run(["import", str(args.import_trace), "--db", str(work / "import.duckdb")], env)
            print(f"import {args.import_trace.name}: {_cell(r)}")
        for n in (int(k) for k in args.kernels):
            results[n] = measure(n, work, env, args.steps)
    print("| kernels | " + " | ".join(STEPS) + " |")
    print("|---" * (len(STEPS) + 1) + "|")
    for n, got in results.items():
        print(f"| {n:,} | " + " | ".join(_cell(got.get(s)) for s in STEPS) + " |")
    sizes = sorted(results)
    for a, b in itertools.pairwise(sizes):
        ratio = math.log(b / a)
        parts = []
        for s in STEPS:
            ra, rb = results[a].get(s), results[b].get(s)
            if ra and rb and "error" not in ra and "error" not in rb:
                parts.append(f"{s}: time N^{math.log(rb['wall'] / ra['wall']) / ratio:.2f}, "
                             f"RSS N^{math.log(rb['rss'] / ra['rss']) / ratio:.2f}")
        print(f"growth {a:,} -> {b:,}: " + "; ".join(parts))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def _machine() -> str:
    sys.path.insert(0, str(HERE))
    from bench_import import machine

    return machine()

if __name__ == "__main__":
    main()
