"""Are two versions of hybridscope's report the same? Table by table, on the same stores.

Runs `python -m hybridscope report --db STORE --json OUT` once with each source tree first on
PYTHONPATH (each in its own child process) and compares the JSON of every table: rows, columns and
meta, exactly. A table that differs only in floats within a relative 1e-12 is listed apart
(`~`), with its first differing row; anything else is a difference (`DIFFERS`). Also prints each
side's wall time per store. Exit status 1 when any table differs beyond float rounding.

    git archive main src | tar -x -C /tmp/old     # the version to compare against
    python benchmarks/report_equal.py --old /tmp/old/src --new src STORE.duckdb ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def report(src: Path, store: Path, out: Path, warmup: str) -> float:
    """Write `store`'s report JSON to `out` with the code under `src`; the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    t0 = time.perf_counter()
    got = subprocess.run([sys.executable, "-m", "hybridscope", "report", "--db", str(store), "--json", str(out),
                          "--warmup", warmup], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         check=False)
    if got.returncode:
        sys.exit(f"report of {store} with {src} failed ({got.returncode}): {got.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def close(a, b) -> bool:
    """Equal, floats within a relative 1e-12."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def compare(old: dict, new: dict, label: str) -> int:
    """Print each table that differs; the number differing beyond float rounding."""
    bad = 0
    if old["run"] != new["run"]:
        print(f"{label}: run info DIFFERS")
        bad += 1
    for name in sorted(set(old["tables"]) | set(new["tables"])):
        a, b = old["tables"].get(name), new["tables"].get(name)
        if a is None or b is None:
            print(f"{label} {name}: only in {'new' if a is None else 'old'}")
            bad += 1
            continue
        if json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            continue
        near = close(a, b)
        bad += not near
        print(f"{label} {name}: {'~ equal within 1e-12' if near else 'DIFFERS'}"
              f" ({len(a['rows'])} vs {len(b['rows'])} rows)")
        for i, (x, y) in enumerate(zip(a["rows"], b["rows"])):
            if x != y:
                print(f"    row {i}: old {x}\n            new {y}")
                break
        for key in sorted(set(a["meta"]) | set(b["meta"])):
            if a["meta"].get(key) != b["meta"].get(key):
                print(f"    meta {key}: old {str(a['meta'].get(key))[:200]}\n"
                      f"               new {str(b['meta'].get(key))[:200]}")
        if a["columns"] != b["columns"]:
            print("    columns differ")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, required=True, help="source tree of the version to compare against (src/)")
    p.add_argument("--new", type=Path, required=True, help="source tree of the version under test (src/)")
    p.add_argument("--warmup", default="auto", help="--warmup for both reports (auto, N or 0)")
    p.add_argument("stores", type=Path, nargs="+")
    args = p.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            o, n = Path(tmp) / "old.json", Path(tmp) / "new.json"
            t_old, t_new = report(args.old, store, o, args.warmup), report(args.new, store, n, args.warmup)
            old, new = json.loads(o.read_text()), json.loads(n.read_text())
            got = compare(old, new, store.stem)
            print(f"{store.stem}: {len(old['tables'])} tables, {got} differing; "
                  f"old {t_old:.2f} s, new {t_new:.2f} s", flush=True)
            bad += got
    print(f"tables differing: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
