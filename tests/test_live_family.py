"""`hybridscope trace` follows a workload's processes: spawn, subprocess, torchrun, fork (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from capture_models import ENGINE_PATTERN, HF_PATTERN, latest_run, rows

WORKERS = Path(__file__).parent / "workers"
TYPES = {"M": {"mamba"}, "E": {"moe_router", "moe_experts"}, "*": {"attention"}, "P": {"mamba", "attention"},
         "-": {"mlp"}}
STRONG = {"mamba", "attention", "moe_router", "moe_experts"}


def _trace(db: Path, *command: str, timeout: int = 150, options: tuple = ()) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "trace", *options, "--db", str(db), "--", *command],
                          check=False, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _types_by_rank(con, run) -> dict[int, dict[int, set[str]]]:
    got = rows(con, "SELECT rank, layer_index, list(DISTINCT layer_type) FROM events WHERE run_id = ? "
                    "AND source = 'layer' AND layer_index IS NOT NULL GROUP BY 1, 2", [run])
    out: dict[int, dict[int, set[str]]] = {}
    for rank, index, types in got:
        out.setdefault(rank, {})[index] = set(types)
    return out


def _assert_pattern(found: dict[int, set[str]], pattern: str) -> None:
    assert sorted(found) == list(range(len(pattern)))
    for i, ch in enumerate(pattern):
        assert TYPES[ch] <= found[i], (i, ch, found[i])
        assert not (found[i] & STRONG) - TYPES[ch], (i, found[i])


def _notes(con, run) -> dict:
    return json.loads(rows(con, "SELECT notes FROM runs WHERE run_id = ?", [run])[0][0])


def test_spawned_and_subprocess_workers_are_one_run_a_rank_each(tmp_path):
    pytest.importorskip("transformers")
    db = tmp_path / "server.duckdb"
    proc = _trace(db, "python", str(WORKERS / "trace_server.py"), "3")
    assert "engine worker 0: [3, 3]" in proc.stdout and "engine worker 1: [3, 3]" in proc.stdout
    assert "hf worker: 3" in proc.stdout and "no torch here" in proc.stdout
    con, run = latest_run(db)
    assert rows(con, "SELECT count(*) FROM runs") == [(1,)]
    notes = _notes(con, run)
    models = {int(r): n["model"] for r, n in notes["ranks"].items()}
    assert sorted(models.values()) == ["HybridModel", "HybridModel", "NemotronHForCausalLM"]
    assert sorted(models) == [0, 1, 2]
    by_rank = _types_by_rank(con, run)
    for rank, model in models.items():
        _assert_pattern(by_rank[rank], HF_PATTERN if model == "NemotronHForCausalLM" else ENGINE_PATTERN)
    # one process per rank, and every process seen is listed: the server, its workers, the torch-less child
    pids = rows(con, "SELECT rank, list(DISTINCT pid) FROM events WHERE run_id = ? GROUP BY 1 ORDER BY 1", [run])
    assert [len(p) for _, p in pids] == [1, 1, 1]
    procs = {p["pid"]: p for p in notes["processes"]}
    assert {procs[p[0]]["rank"] for _, p in pids} == {0, 1, 2}
    assert sum(p["how"] == "trace" for p in procs.values()) == 1
    assert any("torch never imported" in p["summary"] for p in procs.values())
    # the server, the HF worker, multiprocessing's resource tracker, two engine workers, the torch-less child
    assert "6 process(es) seen, 3 captured" in proc.stderr
    (label,), = rows(con, "SELECT label FROM runs WHERE run_id = ?", [run])
    assert sorted(label.split(" + ")) == ["HybridModel", "NemotronHForCausalLM"]
    assert not list(tmp_path.glob("server.trace-*"))  # the per-process stores are gone once merged


def test_torchrun_expert_parallel_ranks_keep_their_distributed_rank(tmp_path):
    db = tmp_path / "ep.duckdb"
    proc = _trace(db, "torchrun", "--standalone", "--nproc-per-node", "2", str(WORKERS / "trace_ep.py"), "3",
                  options=("--steps", "2", "--label", "ep2"))
    assert "rank 0: [3, 3]" in proc.stdout and "rank 1: [3, 3]" in proc.stdout  # the workload ran on past --steps
    assert "rank 1 of 2 in its process group" in proc.stderr
    con, run = latest_run(db)
    assert rows(con, "SELECT world_size, label FROM runs WHERE run_id = ?", [run]) == [(2, "ep2")]
    # the options reached both ranks: 3 steps served, 2 recorded in each
    assert rows(con, "SELECT rank, count(*) FROM steps WHERE run_id = ? GROUP BY 1 ORDER BY 1", [run]) == [(0, 2), (1, 2)]
    by_rank = _types_by_rank(con, run)
    assert sorted(by_rank) == [0, 1]
    for rank in (0, 1):
        _assert_pattern(by_rank[rank], ENGINE_PATTERN)
    # expert parallel: both ranks' MoE layers exchanged tokens (dispatch / combine modules timed)
    comm = rows(con, "SELECT DISTINCT rank FROM events WHERE run_id = ? AND source = 'layer' "
                     "AND layer_type = 'moe_comm'", [run])
    assert sorted(comm) == [(0,), (1,)]
    procs = _notes(con, run)["processes"]
    assert sorted(p["rank"] for p in procs if p["rank"] is not None) == [0, 1]
    assert any("torchrun" in (p["name"] or "") and p["rank"] is None for p in procs)  # the launcher: no model


FORK_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)  # OpenMP worker threads do not survive a fork: a forked child would hang in them
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request

    model = build_model(EngineConfig.from_preset("tiny"))
    def serve(new):
        reqs = [Request(rid=i, prompt=[1 + i, 2, 3, 4], max_new_tokens=new) for i in range(2)]
        return sorted(len(r.tokens) for r in Engine(model, cuda_graphs=False).run(reqs))
    print("parent", serve(2), flush=True)           # the tracer's process: armed on the model here
    if sys.argv[1:] == ["--as-if-cuda"]:            # CPU stand-in for a parent that initialized CUDA
        torch.cuda._initialized = True
    pid = os.fork()
    if pid == 0:
        print("child", serve(4), flush=True)        # the same model object, in the forked child
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("parent again", serve(2), "child status", status, flush=True)
""")


@pytest.mark.parametrize("mode, as_if_cuda", [("layers", False), ("kernels", False), ("kernels", True)])
def test_fork_after_the_parent_armed_gives_the_child_its_own_rank(tmp_path, mode, as_if_cuda):
    """kernels: the parent's profiler is running at the fork; as_if_cuda: the parent says it
    initialized CUDA (torch.cuda._initialized, what the fork handler reads), so the child says so
    and runs layers mode (the GPU test does it for real: test_live_family_gpu.py)."""
    script = tmp_path / "forks.py"
    script.write_text(FORK_SCRIPT)
    db = tmp_path / "fork.duckdb"
    proc = _trace(db, "python", str(script), *(["--as-if-cuda"] if as_if_cuda else []),
                  options=("--mode", mode, "--sample-every", "1"))
    assert "child [4, 4]" in proc.stdout and "child status 0" in proc.stdout
    con, run = latest_run(db)
    notes = _notes(con, run)
    procs = {p["how"]: p for p in notes["processes"]}
    assert procs["trace"]["rank"] == 0 and procs["fork"]["rank"] == 1
    # the parent recorded its own steps only (2 serves of 2 tokens: 2 prefill+decode rounds each), the child its own
    steps = dict(rows(con, "SELECT rank, count(*) FROM steps WHERE run_id = ? GROUP BY 1", [run]))
    assert steps[1] == 4 and steps[0] == 4
    if as_if_cuda:
        assert "after it initialized CUDA: CUDA cannot be used in this process" in proc.stderr
        assert "kernels mode asked; layers here" in proc.stderr
    if mode == "layers" or as_if_cuda:
        _assert_pattern(_types_by_rank(con, run)[1], ENGINE_PATTERN)
    else:  # the child's own profiler session: its CPU operators typed by the child's own scopes
        typed = {t for (t,) in rows(con, "SELECT DISTINCT layer_type FROM events WHERE run_id = ? AND rank = 1 "
                                         "AND source = 'cpu' AND layer_type IS NOT NULL", [run])}
        assert {"mamba", "attention", "moe_router", "moe_experts", "mlp"} <= typed
    assert "forked from pid" in proc.stderr and "the parent's capture stays the parent's" in proc.stderr


def test_a_daemon_worker_stopped_by_sigterm_still_writes_its_rank(tmp_path):
    """forkserver + daemon: the server exits, multiprocessing terminates the worker (SIGTERM)."""
    db = tmp_path / "daemon.duckdb"
    proc = _trace(db, "python", str(WORKERS / "trace_daemon.py"), "3")
    assert "daemon served [3, 3]" in proc.stdout
    con, run = latest_run(db)
    procs = _notes(con, run)["processes"]
    (worker,) = [p for p in procs if p["rank"] is not None]
    assert worker["how"] == "fork" and worker["model"] == "HybridModel" and worker["rank"] == 0
    assert rows(con, "SELECT count(*) FROM steps WHERE run_id = ?", [run]) == [(3,)]
    _assert_pattern(_types_by_rank(con, run)[0], ENGINE_PATTERN)
