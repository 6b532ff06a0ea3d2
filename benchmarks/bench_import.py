"""Kineto import speed and memory: hybridscope vs Holistic Trace Analysis, side by side.

Each measurement runs in its own child process (so peak RSS is that loader's alone, read from
`resource.getrusage(RUSAGE_SELF)` in the child at the end) and times only the load, after the
imports. hybridscope is timed twice: `import` as the verb runs it (parse + store + attribution),
and `load` without the attribution pass. HTA is `TraceAnalysis(trace_dir=...)` on a folder
holding only that file (HTA's documented way to load a trace), under a memory cap.

    pip install -e '.[bench]'
    python benchmarks/bench_import.py --synthetic-events 5000000 --traces ../shared/traces --stages

With --stages, each file is also run through the pipeline's stages one after another on one
thread (read + gunzip + cut, DuckDB's read_json, mapping SQL to Arrow, the store INSERT), CPU
seconds per stage: where an import's time goes, and each stage's limit in events/s per core.
Prints a markdown table (paste into docs/benchmarks.md) and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import json, resource, sys, time
mode, path, work = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "hta":
    import logging
    from hta.trace_analysis import TraceAnalysis
    logging.disable(logging.CRITICAL)
    t = time.perf_counter()
    ta = TraceAnalysis(trace_dir=work)
    wall = time.perf_counter() - t
    rows = sum(len(df) for df in ta.t.traces.values())
    total = None
elif mode == "stages":  # the pipeline's stages one after another on one thread, CPU seconds each
    from pathlib import Path
    import duckdb
    from hybridscope.ingest import _kineto_parse as kp, kineto
    from hybridscope.ingest._jsonchunks import EventSlices
    from hybridscope.store import db
    cpu = dict.fromkeys(("read+gunzip+cut", "read_json", "mapping to Arrow", "insert"), 0.0)
    con = db.open_store(work + "/stages.duckdb")
    mem = duckdb.connect(config={"memory_limit": kp.PARSER_MEMORY_LIMIT, "threads": kp.PARSER_THREADS})
    con.execute("BEGIN TRANSACTION")
    slices, piece, base, total = iter(EventSlices(Path(path))), Path(work) / "slice.json", 0, 0
    t = time.perf_counter()
    while True:
        c = time.process_time()
        data = next(slices, None)
        if data is None:
            break
        piece.write_bytes(b"[" + bytes(data) + b"]")
        c, cpu["read+gunzip+cut"] = time.process_time(), cpu["read+gunzip+cut"] + time.process_time() - c
        mem.execute(kp.STAGE_SQL, [str(piece)])
        c, cpu["read_json"] = time.process_time(), cpu["read_json"] + time.process_time() - c
        slice_events = kp.events_table(mem)
        c, cpu["mapping to Arrow"] = time.process_time(), cpu["mapping to Arrow"] + time.process_time() - c
        kineto._insert(con, slice_events, (1, 0), base)
        cpu["insert"] += time.process_time() - c
        base += mem.execute("SELECT count(*) FROM _hs_stage").fetchall()[0][0]
    con.execute("COMMIT")
    wall, rows, total = time.perf_counter() - t, None, base
    print(json.dumps({"stages": cpu}))
else:
    import hybridscope.ingest as ingest
    if mode == "load":
        import hybridscope.attribute as attribute
        attribute.attribute_run = lambda *a, **k: None
    t = time.perf_counter()
    (res,) = ingest.import_files(work + "/bench.duckdb", [path], progress=False)
    wall = time.perf_counter() - t
    rows, total = res.n_events, res.n_events + sum(res.skipped.values())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall": wall, "rows": rows, "total": total, "peak": peak}))
"""


def measure(mode: str, path: Path, *, mem_cap: int, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as work:
        if mode == "hta":
            os.symlink(path.resolve(), Path(work) / path.name)

        def cap() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (mem_cap, mem_cap))

        try:
            p = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), work], capture_output=True, check=False,
                               text=True, timeout=timeout, preexec_fn=cap if mode == "hta" else None)
        except subprocess.TimeoutExpired:
            return {"error": f"over {timeout} s"}
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["?"])[-1]
            return {"error": f"failed: {last[:80]}"}
        lines = [json.loads(line) for line in p.stdout.strip().splitlines() if line.startswith("{")]
        return {k: v for line in lines for k, v in line.items()}


def synthetic(n: int, folder: Path) -> Path:
    path = folder / f"synthetic_{n}.pt.trace.json.gz"
    if not path.exists():
        sys.path.insert(0, str(HERE))
        from make_synthetic_trace import write

        write(path, n)
    return path


def _fmt_rate(r: dict) -> str:
    return f"{r['total'] / r['wall'] / 1e6:.2f} M/s" if r.get("total") else "-"


def _cell(r: dict, key: str) -> str:
    if "error" in r:
        return r["error"]
    if key == "wall":
        return f"{r['wall']:.2f} s"
    return f"{r['peak'] / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=HERE.parent.parent / "shared" / "traces")
    ap.add_argument("--synthetic-events", type=int, default=5_000_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hybridscope-bench")
    ap.add_argument("--no-hta", action="store_true")
    ap.add_argument("--hta-mem-gib", type=float, default=12)
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--stages", action="store_true",
                    help="also time the pipeline's stages one after another (CPU s per stage, one thread)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = sorted(args.traces.glob("*.json.gz")) if args.traces.exists() else []
    if args.synthetic_events:
        files.append(synthetic(args.synthetic_events, args.workdir))
    print(_machine())
    print("| trace | MB (gz) | trace events | rows stored | import | load only | events/s (import) "
          "| peak RSS | HTA load | HTA peak RSS | import vs HTA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in files:
        ours = measure("import", path, mem_cap=0, timeout=args.timeout)
        load = measure("load", path, mem_cap=0, timeout=args.timeout)
        hta = ({"error": "not run"} if args.no_hta else
               measure("hta", path, mem_cap=int(args.hta_mem_gib * 2**30), timeout=args.timeout))
        ratio = f"{hta['wall'] / ours['wall']:.1f}x" if "wall" in hta and "wall" in ours else "-"
        print(f"| {path.name} | {path.stat().st_size / 1e6:.1f} | {ours.get('total', 0):,} | {ours.get('rows', 0):,} "
              f"| {_cell(ours, 'wall')} | {_cell(load, 'wall')} | {_fmt_rate(ours)} | {_cell(ours, 'peak')} "
              f"| {_cell(hta, 'wall')} | {_cell(hta, 'peak')} | {ratio} |", flush=True)
    if args.stages:
        print("\n| trace | " + " | ".join(STAGES) + " | sum | (CPU s; events/s per core) |\n|---" * 1
              + "|---" * (len(STAGES) + 2) + "|")
        for path in files:
            r = measure("stages", path, mem_cap=0, timeout=args.timeout)
            if "stages" not in r:
                print(f"| {path.name} | {r.get('error', '?')} |")
                continue
            cpu = r["stages"]
            cells = [f"{cpu[s]:.2f} s ({r['total'] / cpu[s] / 1e6:.2f} M/s)" if cpu[s] else "-" for s in STAGES]
            print(f"| {path.name} | " + " | ".join(cells) + f" | {sum(cpu.values()):.2f} s | |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


STAGES = ("read+gunzip+cut", "read_json", "mapping to Arrow", "insert")


def _machine() -> str:
    try:
        from importlib.metadata import version

        hta = version("holistictraceanalysis")
    except Exception:  # noqa: BLE001 - only a label
        hta = "not installed"
    return machine(f", holistictraceanalysis {hta}")


def machine(extra: str = "") -> str:
    """One line naming the run: time, CPUs, load before, versions (`extra` appended); bench_scale uses it too."""
    import duckdb
    import numpy

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs ({cpu}); "
            f"load average before: {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, "
            f"duckdb {duckdb.__version__}, numpy {numpy.__version__}{extra}")

if __name__ == "__main__":
    main()
