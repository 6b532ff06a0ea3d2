"""Start-up cost of `hybridscope trace`'s arming hook in a process that never builds a model.

    python benchmarks/bench_trace_hook.py [--rounds 40] [--torch-rounds 12] [--out bench_trace_hook.json]

Under `trace`, every Python child starts with HYBRIDSCOPE_TRACE set and the bootstrap folder first
on PYTHONPATH (hybridscope.live.family.armed_environment): `site` imports its sitecustomize, which
imports hybridscope.live.follow, writes the process's start marker and puts the torch watcher on
sys.meta_path. This measures what that adds to a child's wall time, start to exit (including the
record written at exit), for three children that never build a model:

  bare    python -c pass
  torch   python -c "import torch"                          (the watcher fires: one global pre-hook)
  module  python -c "import torch; torch.nn.Linear(4, 4)(torch.ones(4))"
          (a module runs; it holds no ModuleList, so it cannot be a decoder stack: nothing is built)
  stack   a module holding a ModuleList runs (its forward fails; the child's exit code is ignored):
          the capture and the Finder are built, nothing is recognized, no store (the worst case)

Each round runs the child plain and armed, in alternating order, from this process (so the
difference is the hook, not fork/exec or machine drift); reported for wall time and for the child's
CPU time (user + system, from rusage: far less disturbed by other load on the machine): the median
of the armed - plain differences [quartiles], and the median plain time. hybridscope's bytecode is
compiled first, as an installed package has it. The load average before
and after is recorded. Results go to stdout and --out.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hybridscope.live import family

CHILDREN = {
    "bare": "pass",
    "torch": "import torch",
    "module": "import torch; torch.nn.Linear(4, 4)(torch.ones(4))",
    "stack": "import torch; m = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(4, 4)])); m(torch.ones(4))",
}


def _time(code: str, env: dict) -> tuple[float, float]:
    """(wall s, CPU s user+system) of one child, start to exit."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=False, stderr=subprocess.DEVNULL)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    return t1 - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def measure(code: str, rounds: int, work: Path) -> dict:
    plain_env = dict(os.environ)
    opts = family.Options(dir=str(work))
    with family.armed_environment(opts):
        armed_env = dict(os.environ)
    _time(code, plain_env), _time(code, armed_env)  # warm the page cache for both
    plain, wall, cpu = [], [], []
    for i in range(rounds):
        if i % 2:
            a, p = _time(code, armed_env), _time(code, plain_env)
        else:
            p, a = _time(code, plain_env), _time(code, armed_env)
        plain.append(p)
        wall.append(a[0] - p[0])
        cpu.append(a[1] - p[1])
    out = {"rounds": rounds, "plain_wall_ms": 1e3 * statistics.median(x[0] for x in plain),
           "plain_cpu_ms": 1e3 * statistics.median(x[1] for x in plain),
           "records": len(list(work.glob("proc-*.json")))}
    for name, diffs in (("wall", wall), ("cpu", cpu)):
        q1, med, q3 = statistics.quantiles(diffs, n=4, method="inclusive")
        out.update({f"added_{name}_ms": 1e3 * med, f"added_{name}_ms_q1": 1e3 * q1, f"added_{name}_ms_q3": 1e3 * q3})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--torch-rounds", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import torch

    # the bytecode an installed package has (pip compiles it at install); this machine may set
    # PYTHONDONTWRITEBYTECODE, and compiling follow.py at every start would be measured instead
    src = Path(family.__file__).resolve().parents[1]
    compileall.compile_dir(str(src), quiet=1)
    results = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "load_before": os.getloadavg(),
               "children": {}}
    for name, code in CHILDREN.items():
        with tempfile.TemporaryDirectory() as d:
            r = measure(code, a.rounds if name == "bare" else a.torch_rounds, Path(d))
        results["children"][name] = r
        print(f"{name:7s} plain {r['plain_wall_ms']:7.1f} ms wall {r['plain_cpu_ms']:7.1f} ms CPU | armed adds "
              f"wall {r['added_wall_ms']:+6.2f} ms [{r['added_wall_ms_q1']:+.2f}, {r['added_wall_ms_q3']:+.2f}], "
              f"CPU {r['added_cpu_ms']:+6.2f} ms [{r['added_cpu_ms_q1']:+.2f}, {r['added_cpu_ms_q3']:+.2f}] "
              f"({r['rounds']} rounds, {r['records']} records)")
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f}")
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
