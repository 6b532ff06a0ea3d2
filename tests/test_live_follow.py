"""The pieces of following a traced workload's processes: the bootstrap, ranks, ports, records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hybridscope
from hybridscope.live import family, follow


def _child(code: str, env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", follow.ENV)}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=True)


def test_bootstrap_arms_with_the_tracers_hybridscope_and_runs_the_shadowed_sitecustomize(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("print('user sitecustomize ran')\n")
    trace = tmp_path / "trace"
    trace.mkdir()
    path = os.pathsep.join([str(family.BOOTSTRAP), str(user)])
    code = "import sys, hybridscope; print(hybridscope.__file__); print('armed', 'hybridscope.live.follow' in sys.modules)"
    armed = _child(code, {"PYTHONPATH": path, follow.ENV: str(trace)}, tmp_path)
    lines = armed.stdout.splitlines()
    assert lines[0] == "user sitecustomize ran"
    assert lines[1] == hybridscope.__file__  # the tracer's package, not whatever the child's path holds
    assert lines[2] == "armed True" and armed.stderr == ""
    (record,) = [json.loads(p.read_text()) for p in trace.glob("proc-*.json")]
    assert record["how"] == "exec" and record["torch"] is False and record["store"] is None
    assert (trace / f"proc-{record['pid']}.start").exists() and not list(trace.glob("*.armed"))
    # without HYBRIDSCOPE_TRACE the bootstrap only chains
    plain = _child(code, {"PYTHONPATH": path}, tmp_path)
    assert plain.stdout.splitlines()[0] == "user sitecustomize ran" and plain.stdout.endswith("armed False\n")


def _proc(pid, how, t, rank=None, world=None, store=True) -> family.Process:
    rec = {"rank": rank if rank is not None else 0, "world_size": world or 1, "store": "x.duckdb" if store else None,
           "model": "M"}
    return family.Process(pid, {"pid": pid, "how": how, "t": t}, rec)


def test_ranks_keep_distributed_ones_then_follow_start_order():
    procs = [_proc(10, "exec", 3.0), _proc(11, "exec", 1.0, rank=1, world=2), _proc(12, "exec", 2.0, rank=0, world=2),
             _proc(13, "exec", 2.5, rank=1, world=2),  # a second group's rank 1: already taken
             _proc(1, "trace", 9.0), _proc(14, "exec", 0.5, store=False)]
    family.assign_ranks(procs)
    got = {p.pid: p.rank for p in procs}
    # distributed ranks 0 and 1 kept; then the tracer's own process, then by start time: 13 (2.5), 10 (3.0)
    assert got == {12: 0, 11: 1, 1: 2, 13: 3, 10: 4, 14: None}


def test_metrics_ports_are_one_per_process_local_rank_first(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert follow.metrics_port(9400, str(tmp_path)) == 9400
    assert follow.metrics_port(9400, str(tmp_path)) == 9401
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert follow.metrics_port(9400, str(tmp_path)) == 9403
    monkeypatch.setenv("LOCAL_RANK", "1")  # taken: the lowest free slot
    assert follow.metrics_port(9400, str(tmp_path)) == 9402


@pytest.mark.parametrize("value", [{"a": 'q"uo\\te\n', "b": [1, 2.5, None, True, False], "c": {"d": "é"}}, [], {}])
def test_records_written_without_json_read_back_with_json(value):
    json_module = sys.modules.pop("json")
    try:
        text = follow._dumps(value)
    finally:
        sys.modules["json"] = json_module
    assert json.loads(text) == value


GATE = """
import os, torch
armed = os.path.join(os.environ["HYBRIDSCOPE_TRACE"], f"proc-{os.getpid()}.armed")
torch.nn.Linear(4, 4)(torch.ones(4))
print("after a Linear:", os.path.exists(armed), "hybridscope.live.session" in __import__("sys").modules)
stack = torch.nn.Module()
stack.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
stack.forward = lambda x: stack.layers[0](x)
stack(torch.ones(4))
print("after a stack:", os.path.exists(armed))
"""


def test_capture_is_built_only_when_a_module_could_be_a_model(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    opts = family.Options(dir=str(trace))
    with family.armed_environment(opts):
        env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", GATE], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.splitlines() == ["after a Linear: False False", "after a stack: True"]
    (record,) = [json.loads(p.read_text()) for p in trace.glob("proc-*.json")]
    assert record["torch"] is True and record["model"] is None and record["store"] is None


def test_a_store_that_cannot_be_read_is_listed_not_raised(tmp_path):
    """A process killed while writing leaves a broken store: the trace lists it and merges the rest."""
    (tmp_path / "pid7-rank0.duckdb").write_bytes(b"not a database")
    (tmp_path / "proc-7.start").write_text(json.dumps({"pid": 7, "ppid": 1, "how": "exec", "t": 1.0}))
    (tmp_path / "proc-7.json").write_text(json.dumps({
        "pid": 7, "name": "worker", "torch": True, "model": "HybridModel", "rank": 0, "world_size": 1,
        "store": str(tmp_path / "pid7-rank0.duckdb"), "run_id": 1, "lines": [], "notes": [], "errors": []}))
    result = family.gather(tmp_path, tmp_path / "out.duckdb", None)
    assert result.run_id is None and not (tmp_path / "out.duckdb").exists()
    (proc,) = result.processes
    assert proc.rank is None and "its store could not be read" in proc.record["errors"][0]
    assert any("error: its store could not be read" in line for line in result.lines("layers"))
