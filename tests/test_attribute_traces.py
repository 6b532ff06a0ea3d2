"""Attribution on real traces: the EP all-to-all traces of ../shared and the HF with_stack fixture."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from paths import FIXTURES

from hybridscope.cli import main
from hybridscope.store import db

HF_TRACE = FIXTURES / "nemotronh_with_stack.pt.trace.json.gz"
PATTERN = "MEM*E"  # what scripts/make_hf_trace.py built: see tests/fixtures/README.md
EXPECTED = {"M": "mamba", "*": "attention"}


def _import(path, files):
    from hybridscope.ingest import import_files

    return import_files(path, files, progress=False)


@pytest.fixture(scope="module")
def ep_store(tmp_path_factory, request):
    from paths import TRACES

    files = [TRACES / f"ep2_bal_rank{r}.pt.trace.json.gz" for r in (0, 1)]
    if not all(f.exists() for f in files):
        pytest.skip("../shared/traces not present")
    path = tmp_path_factory.mktemp("ep") / "ep.duckdb"
    _import(path, files)
    return path


@pytest.fixture(scope="module")
def hf_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "hf.duckdb"
    _import(path, [HF_TRACE])
    return path


@pytest.mark.parametrize("rank", [0, 1])
def test_ep_all_to_all_is_moe_comm_and_expert_gemms_are_moe_experts(ep_store, rank):
    con = db.open_readonly(ep_store)
    rows = con.execute(
        "SELECT e.name, e.layer_type, e.attr_method, s.name, e.step FROM events e"
        " LEFT JOIN scopes s ON s.run_id = e.run_id AND s.rank = e.rank AND s.scope_id = e.scope_id"
        " WHERE e.rank = ? AND e.source = 'cuda' AND e.kind = 'kernel'", [rank]).fetchall()
    con.close()
    a2a = [r for r in rows if r[0].startswith("ncclDevKernel_SendRecv")]
    assert len(a2a) == 80  # 20 steps x (2 dispatch + 2 combine all_to_all_single)
    assert {(r[1], r[2]) for r in a2a} == {("moe_comm", "scope")}
    assert {r[3] for r in a2a} == {"moe.dispatch", "moe.combine"}
    gemms = [r for r in rows if r[0].startswith("nvjet_") and r[3] == "moe.experts"]
    assert len(gemms) == 640 and {r[1] for r in gemms} == {"moe_experts"}
    assert {r[4] for r in rows} == set(range(20))  # every kernel inside its step#i


def test_hf_mamba_kernels_come_out_as_mamba_with_the_pattern_layer_indices(hf_store):
    con = db.open_readonly(hf_store)
    got = con.execute(
        "SELECT layer_index, layer_type, attr_method, count(*) FROM events"
        " WHERE source = 'cuda' AND layer_type IN ('mamba', 'attention', 'moe_router', 'moe_experts')"
        " GROUP BY ALL").fetchall()
    generic = con.execute(
        "SELECT count(*) FROM events WHERE layer_type = 'mamba'"
        " AND (name LIKE '%elementwise_kernel%' OR name LIKE 'nvjet_%' OR name LIKE '%reduce_kernel%')").fetchall()[0][0]
    con.close()
    by_index: dict[int, set[str]] = {}
    for index, layer_type, method, _n in got:
        assert method == "scope"  # no name rule can tell these generic kernels apart
        by_index.setdefault(index, set()).add(layer_type)
    expected = {i: ({EXPECTED[c]} if c in EXPECTED else {"moe_router", "moe_experts"}) for i, c in enumerate(PATTERN)}
    assert by_index == expected
    assert generic > 100  # the Mamba mixer's kernels have generic names: only the scope knows


def test_hf_every_gpu_event_attributed_and_coverage_cli(hf_store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["attribution", "--db", str(hf_store), "--format", "json", "--top", "3"])
    assert e.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in doc["coverage"]["rows"]}
    assert rows["unattributed"]["n"] == 0
    assert sum(r["gpu_pct"] for r in rows.values()) == pytest.approx(100.0)
    assert rows["scope"]["gpu_pct"] > 80.0
    assert len(doc["unattributed"]["rows"]) == 3


def test_cli_bad_rules_file_one_line_and_store_unchanged(hf_store, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\npattern = 'x'\nlayer_type = 'not_a_type'\n")
    before = hf_store.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "attribution", "--db", str(hf_store),
                           "--rules", str(bad)], check=False, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "layer_type 'not_a_type'" in proc.stderr
    assert hf_store.read_bytes() == before


def test_cli_rules_reattribute_the_run(hf_store, tmp_path):
    rules = tmp_path / "mine.toml"
    rules.write_text("[[rule]]\npattern = 'CompareEqFunctor'\nlayer_type = 'sampling'\n")
    with pytest.raises(SystemExit) as e:
        main(["attribution", "--db", str(hf_store), "--rules", str(rules), "--format", "csv"])
    assert e.value.code == 0
    con = db.open_readonly(hf_store)
    got = con.execute("SELECT DISTINCT layer_type, attr_method FROM events"
                      " WHERE name LIKE '%CompareEqFunctor%' AND scope_id IS NULL AND layer_index IS NULL").fetchall()
    con.close()
    assert got == [("sampling", "name")]


def test_cli_unknown_rank_and_run(hf_store, capsys):
    for args in (["--rank", "5"], ["--run", "99"]):
        with pytest.raises(SystemExit) as e:
            main(["attribution", "--db", str(hf_store), *args])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("hybridscope: error: ") and err.count("\n") == 1


def test_vllm_gpt_oss_lm_head_is_the_logits_projection_only(tmp_path):
    """vLLM serving gpt-oss (TraceLens' B200 eager trace): blocks and norms called from the
    `GptOssForCausalLM` frame are not its LM head; the vocabulary GEMM under `LogitsProcessor` is."""
    from paths import TRACES

    trace = TRACES / "external" / "tracelens_b200_vllm_gptoss_eager.pt.trace.json.gz"
    if not trace.exists():
        pytest.skip("../shared/traces/external not present")
    path = tmp_path / "g.duckdb"
    _import(path, [trace])
    con = db.open_readonly(path)
    heads = con.execute(
        "SELECT s.name, e.name, e.attr_method FROM events e JOIN scopes s ON s.run_id = e.run_id AND s.rank = e.rank"
        " AND s.scope_id = e.scope_id WHERE e.layer_type = 'lm_head'").fetchall()
    blocks = con.execute(
        "SELECT count(*) FROM events e JOIN scopes s ON s.run_id = e.run_id AND s.rank = e.rank"
        " AND s.scope_id = e.scope_id WHERE e.source = 'cuda' AND s.name LIKE 'nn.Module: TransformerBlock%'"
        " AND e.layer_type = 'lm_head'").fetchall()[0][0]
    con.close()
    assert blocks == 0
    assert [(s, m) for s, _, m in heads] == [("nn.Module: LogitsProcessor_0", "scope")]
    assert heads[0][1].startswith("nvjet_")
