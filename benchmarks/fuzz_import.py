"""The long run of the importers' fuzz harness (tests/fuzzing.py): N structure-aware cases over the
three formats, seeded from ../shared/traces; every import is decomposed and reported.

    python benchmarks/fuzz_import.py --cases 5000 [--start 0] [--jobs 2] [--json out.json]

Prints, per format, how many cases imported, were refused with one line, or ended in a traceback
(any exception that is not a one-line HybridscopeError, a refused file that changed the store, or
an analysis that failed on an import), then the most common refusals and every traceback with the
mutations that caused it. Exits 1 when there was a traceback. Cases are numbered: `--start` and
`--cases` replay any range. Results: docs/benchmarks.md ("Fuzzing the importers").
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _work(span: tuple[int, int, str | None]) -> list[tuple[str, str, str, str, list[str]]]:
    """Run cases [start, start + n) in one store; (format, seed, result, detail, mutations) each,
    also appended as JSON lines to `log` (when given) as they finish."""
    from fuzzing import Seeds, run_case

    from hybridscope.store.db import open_store

    start, n, log = span
    sink = open(log, "a") if log else None  # noqa: SIM115 - closed below
    seeds = Seeds()
    out = []
    with tempfile.TemporaryDirectory(prefix="hybridscope-fuzz-") as tmp:
        con = open_store(Path(tmp) / "s.duckdb")
        try:
            for case in seeds.cases(n, start):
                o = run_case(con, seeds, case, Path(tmp))
                out.append((case.fmt, case.seed, o.result, o.detail, list(o.mutations)))
                if sink:
                    sink.write(json.dumps([case.number, *out[-1]]) + "\n")
                    sink.flush()
        finally:
            con.close()
            if sink:
                sink.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each with its own store)")
    ap.add_argument("--json", type=Path, help="write every outcome here")
    ap.add_argument("--log", help="append each outcome as a JSON line as it finishes (PART-<start>.jsonl per worker)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    per = -(-args.cases // args.jobs)
    spans = [(args.start + i * per, min(per, args.cases - i * per),
              f"{args.log}-{args.start + i * per}.jsonl" if args.log else None)
             for i in range(args.jobs) if args.cases > i * per]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            parts = pool.map(_work, spans)
    else:
        parts = [_work(s) for s in spans]
    rows = [r for part in parts for r in part]
    seconds = time.perf_counter() - t0
    table = collections.Counter((fmt, result) for fmt, _, result, _, _ in rows)
    import duckdb

    print(f"{len(rows)} cases in {seconds:.0f} s ({platform.node()}, Python {platform.python_version()}, "
          f"duckdb {duckdb.__version__})")
    print(f"{'format':8} {'cases':>7} {'imported':>9} {'refused':>8} {'traceback':>10}")
    for fmt in ("kineto", "nsys", "ingero"):
        n = sum(v for (f, _), v in table.items() if f == fmt)
        print(f"{fmt:8} {n:7} {table[(fmt, 'imported')]:9} {table[(fmt, 'refused')]:8} {table[(fmt, 'traceback')]:10}")
    refusals = collections.Counter(re.sub(r"^/\S+ ?", "", d)[:90] for _, _, r, d, _ in rows if r == "refused")
    print("most common refusals:")
    for text, n in refusals.most_common(12):
        print(f"  {n:5}  {text}")
    bad = [r for r in rows if r[2] == "traceback"]
    for fmt, seed, _, detail, mutations in bad:
        print(f"TRACEBACK {fmt} {seed}: {detail} after {mutations}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
