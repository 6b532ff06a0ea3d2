"""`hybridscope trace -- python script.py ARGS`: end to end, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from capture_models import latest_run, rows

from hybridscope.cli import main
from hybridscope.commands.trace import parse_duration

ENGINE_SCRIPT = textwrap.dedent("""
    import sys
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request

    model = build_model(EngineConfig.from_preset("tiny"))
    new = int(sys.argv[1])
    reqs = [Request(rid=i, prompt=[1 + i, 2, 3, 4], max_new_tokens=new) for i in range(2)]
    done = Engine(model, cuda_graphs=False).run(reqs)
    print("generated", sorted(len(r.tokens) for r in done))
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")


def _script(tmp_path, body: str, name: str = "script.py"):
    path = tmp_path / name
    path.write_text(body)
    return path


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_trace_end_to_end_in_a_fresh_process(tmp_path):
    script = _script(tmp_path, ENGINE_SCRIPT)
    db = tmp_path / "run.duckdb"
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "trace", "--db", str(db), "--", "python",
                           str(script), "3"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "generated [3, 3]" in proc.stdout  # the script's own output, untouched
    assert "hybridscope capture (layers): run 1" in proc.stderr and f"Wrote {db}" in proc.stderr
    con, run = latest_run(db)
    assert rows(con, "SELECT source, label FROM runs WHERE run_id = ?", [run]) == [("capture", "HybridModel")]
    assert rows(con, "SELECT count(*) FROM steps WHERE run_id = ?", [run]) == [(3,)]
    types = {t for (t,) in rows(con, "SELECT DISTINCT layer_type FROM events WHERE run_id = ? AND "
                                     "source = 'layer'", [run])}
    assert {"mamba", "attention", "moe_router", "moe_experts", "mlp"} <= types
    assert rows(con, "SELECT path FROM run_ranks WHERE run_id = ?", [run]) == [(str(script),)]


def test_exit_code_of_the_script_is_kept_and_the_run_written(tmp_path, capsys):
    script = _script(tmp_path, ENGINE_SCRIPT)
    db = tmp_path / "x.duckdb"
    code, out, err = _cli(["trace", "--steps", "2", "--model", "HybridModel", "--label", "mine", "--db", str(db),
                           "--", "python", str(script), "3", "7"], capsys)
    assert code == 7 and "generated [3, 3]" in out and f"Wrote {db}" in err
    con, run = latest_run(db)
    assert rows(con, "SELECT label FROM runs WHERE run_id = ?", [run]) == [("mine",)]
    assert rows(con, "SELECT count(*) FROM steps WHERE run_id = ?", [run]) == [(2,)]


def test_a_script_that_raises_shows_its_traceback_and_still_writes(tmp_path, capsys):
    body = ENGINE_SCRIPT.replace('print("generated"', 'raise ValueError("script bug") #')
    script = _script(tmp_path, body)
    code, _, err = _cli(["trace", "--db", str(tmp_path / "e.duckdb"), "--", str(script), "2"], capsys)
    assert code == 1
    assert "ValueError: script bug" in err and "Wrote" in err


@pytest.mark.parametrize("exit_code", [0, 5])
def test_no_model_in_the_script_is_one_line_and_the_scripts_exit_code(tmp_path, capsys, exit_code):
    script = _script(tmp_path, f"import sys\nprint('no torch here')\nsys.exit({exit_code})\n")
    code, out, err = _cli(["trace", "--db", str(tmp_path / "n.duckdb"), "--", "python", str(script)], capsys)
    assert code == exit_code and "no torch here" in out
    assert "no run was written" in err and "no recognized hybrid model" in err
    assert not (tmp_path / "n.duckdb").exists()


PURE_SSM_SCRIPT = """
import torch, transformers
cfg = transformers.MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=3, intermediate_size=64,
                               time_step_rank=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
model = transformers.MambaForCausalLM(cfg).eval()
ids = torch.tensor([[5, 6, 7, 8]])
out = model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
print("generated", out.shape[1] - ids.shape[1])
"""


def test_a_pure_ssm_model_is_found_without_a_name(tmp_path, capsys):
    pytest.importorskip("transformers")
    db = tmp_path / "ssm.duckdb"
    code, out, err = _cli(["trace", "--db", str(db), "--", "python", str(_script(tmp_path, PURE_SSM_SCRIPT))], capsys)
    assert code == 0 and "generated 2" in out and f"Wrote {db}" in err
    con, run = latest_run(db)
    got = rows(con, "SELECT layer_index, list(DISTINCT layer_type ORDER BY layer_type) FROM events WHERE run_id = ? "
                    "AND source = 'layer' AND layer_index IS NOT NULL GROUP BY 1 ORDER BY 1", [run])
    assert got == [(0, ["mamba"]), (1, ["mamba"]), (2, ["mamba"])]


@pytest.mark.parametrize("args, message", [
    ([], "give the script to run after `--`"),
    (["--", "python"], "give the script to run"),
    (["--", "python", "missing.py"], "no such script: missing.py"),
    (["--", "no-such-command-hs19"], "no such command: no-such-command-hs19"),
    (["--duration", "soon", "--", "python", "s.py"], "--duration takes a positive time"),
    (["--duration", "1s", "--steps", "3", "--", "python", "s.py"], "--duration or --steps, not both"),
    (["--mode", "deep", "--", "python", "s.py"], "capture mode must be one of layers, kernels"),
    (["--steps", "0", "--", "python", "s.py"], "steps must be a positive integer"),
    (["--mode", "kernels", "--sample-every", "2", "--sample-steps", "5", "--", "python", "s.py"],
     "sample_steps must be between 1 and sample_every"),
])
def test_bad_arguments_give_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.py").write_text("raise SystemExit('must not run')\n")
    code, _, err = _cli(["trace", "--db", "t.duckdb", *args], capsys)
    assert code in (1, 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "t.duckdb").exists()


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("2m", 120), ("500ms", 0.5), ("1.5", 1.5), ("1h", 3600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_kernels_mode_on_a_cpu_says_what_it_recorded_and_what_the_analyses_can_use(tmp_path, capsys):
    """On a CPU the profiler records CPU operators, not GPU kernels: the summary counts them apart and
    says the analyses have nothing to decompose; decompose's note says what the run holds instead."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU the profiler records kernels")
    script = _script(tmp_path, ENGINE_SCRIPT)
    db = tmp_path / "k.duckdb"
    code, _, err = _cli(["trace", "--mode", "kernels", "--sample-every", "1", "--db", str(db), "--", "python",
                         str(script), "2"], capsys)
    assert code == 0, err
    con, run = latest_run(db)
    (n_cpu,) = rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND source = 'cpu' AND kind = 'cpu_op'",
                    [run])[0]
    con.close()
    assert n_cpu > 100
    assert f"profiler: 0 GPU kernel/memcpy/memset, {n_cpu} CPU op" in err
    assert "recorded: no GPU kernels" in err and "CPU operators are not GPU kernels" in err
    assert "--mode layers" in err
    code, out, _ = _cli(["decompose", "--db", str(db)], capsys)
    assert code == 0 and f"the run holds {n_cpu:,} CPU operators, which are not GPU kernels" in " ".join(out.split())
