"""`hybridscope trace` on a script that forks after touching CUDA (GPU): it says what it did, never
hangs, never crashes the workload. The lead runs it on the GPU machine:

    PYTHONPATH=$PWD/src python -m pytest tests/test_live_family_gpu.py -q -m gpu
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from capture_models import latest_run, rows

SCRIPT = textwrap.dedent("""
    import os
    import torch
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request

    torch.set_num_threads(1)  # OpenMP worker threads do not survive a fork
    def serve(model, new):
        reqs = [Request(rid=i, prompt=[1 + i, 2, 3, 4], max_new_tokens=new) for i in range(2)]
        return sorted(len(r.tokens) for r in Engine(model, cuda_graphs=False).run(reqs))

    gpu_model = build_model(EngineConfig.from_preset("tiny"), device="cuda")
    print("parent", serve(gpu_model, 3), flush=True)        # CUDA initialized, capture armed on it
    pid = os.fork()
    if pid == 0:
        try:
            serve(gpu_model, 2)                               # CUDA in a forked child: torch refuses
            print("child used cuda", flush=True)
        except RuntimeError as e:
            print("child refused:", "forked subprocess" in str(e), flush=True)
        print("child cpu", serve(build_model(EngineConfig.from_preset("tiny")), 2), flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("parent again", serve(gpu_model, 3), "child status", status, flush=True)
""")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["layers", "kernels"])
def test_fork_after_cuda_says_what_it_did(tmp_path, mode):
    script = tmp_path / "fork_cuda.py"
    script.write_text(SCRIPT)
    db = tmp_path / "run.duckdb"
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "trace", "--mode", mode, "--sample-every", "1",
                           "--db", str(db), "--", "python", str(script)],
                          check=False, capture_output=True, text=True, timeout=300)  # a hang fails here
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "parent [3, 3]" in out and "child refused: True" in out and "child cpu [2, 2]" in out
    assert "parent again [3, 3] child status 0" in out
    assert "after it initialized CUDA: CUDA cannot be used in this process" in proc.stderr
    con, run = latest_run(db)
    notes = json.loads(rows(con, "SELECT notes FROM runs WHERE run_id = ?", [run])[0][0])
    by_how = {p["how"]: p for p in notes["processes"]}
    assert by_how["trace"]["rank"] == 0 and by_how["fork"]["rank"] == 1
    # the parent's rank timed on the GPU, the child's on the host; both typed their layers
    timing = {r: n.get("layer_timing") for r, n in notes["ranks"].items()}
    # the child runs layers mode whatever was asked: the profiler's CUDA state is the parent's
    assert timing == {"0": "cuda_events" if mode == "layers" else None, "1": "perf_counter"}
    if mode == "kernels":
        assert "kernels mode asked; layers here" in proc.stderr
    steps = dict(rows(con, "SELECT rank, count(*) FROM steps WHERE run_id = ? GROUP BY 1", [run]))
    assert steps[0] == 6  # 2 serves x (prefill + 2 decodes), the child's failed call is no step of the parent
    typed = rows(con, "SELECT rank, count(DISTINCT layer_type) FROM events WHERE run_id = ? AND layer_type "
                      "IN ('mamba', 'attention', 'moe_experts') GROUP BY 1 ORDER BY 1", [run])
    assert typed == [(0, 3), (1, 3)]
