"""The report verb and the HTML report: data first, then structure (golden-ish) checks."""

import re

import pytest
import report_scenario

from hybridscope.analyze import steps
from hybridscope.analyze.report import build_report
from hybridscope.cli import main
from hybridscope.present import html
from hybridscope.store import db


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "run.duckdb"
    con, run = report_scenario.build(path)
    rep = build_report(con, run)
    con.close()
    return path, rep


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_report_data(scenario):
    _, rep = scenario
    assert rep["contrast"].meta["tail_layer_type"] == "moe_comm"
    assert rep["per_rank"].meta["ranks"] == [0, 1]
    assert set(rep["advice"].column("rule")) >= {"routing_penalty", "comm_overlap", "capacity_factor"}
    assert rep["slow_steps"].meta["dominant"] == "moe_comm"


def test_report_cli_terminal_and_html(scenario, capsys, tmp_path):
    path, _ = scenario
    out_html = tmp_path / "r.html"
    code, out, err = run_cli(["report", "--db", str(path), "--html", str(out_html)], capsys)
    assert code == 0 and f"Wrote {out_html}" in err
    assert "moe_comm p99 = 9× its p50" in out and "GPU 96% utilized (NVML mean)" in out
    assert re.search(r"^\s+moe_comm\s+360\s", out, re.MULTILINE)  # its own row in the decomposition
    assert "Per rank" in out and "[routing_penalty]" in out
    assert out_html.stat().st_size > 20_000


def test_report_errors_are_one_line(scenario, capsys, tmp_path):
    path, _ = scenario
    code, out, err = run_cli(["report", "--db", str(tmp_path / "none.duckdb")], capsys)
    assert code == 1 and err.count("\n") == 1 and "no database" in err
    code, out, err = run_cli(["report", "--db", str(path), "--html", str(tmp_path / "no" / "r.html")], capsys)
    assert code == 1 and out == "" and "cannot write" in err
    code, out, err = run_cli(["report", "--db", str(path), "--run", "9"], capsys)
    assert code == 1 and "no run 9" in err


def test_html_is_self_contained(scenario):
    _, rep = scenario
    doc = html.render(rep)
    assert doc.startswith("<!DOCTYPE html>") and doc.count("<html") == 1
    # nothing fetched from anywhere: no external scripts, styles, images or fonts
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", doc)
    assert not re.search(r"(https?:)?//(?!www\.w3\.org/2000/svg)", doc.replace("xmlns=\"http://www.w3.org/2000/svg\"", ""))
    assert len(doc) < 2_000_000


def test_every_plot_draws_its_data(scenario):
    _, rep = scenario
    marks = report_scenario.plot_marks(html.render(rep))
    for plot, (mark, n) in report_scenario.expected_marks(rep).items():
        assert n > 0, plot
        assert marks[plot].get(mark) == n, (plot, mark, marks[plot])
        assert marks[plot]["svg"] == 1


def test_html_sections_and_advice(scenario):
    _, rep = scenario
    doc = html.render(rep)
    for heading in ("Decomposition", "Latency per layer type and per layer", "Steps", "Experts",
                    "Overlap and gaps", "Stream conflicts", "Advice"):
        assert f"<h2>{heading}</h2>" in doc
    assert doc.count("<li data-rule=") == len(rep["advice"])
    assert "moe_comm p99 = 9× its p50" in doc and 'data-table="per_rank"' in doc


def test_html_escapes_names(scenario):
    _, rep = scenario
    t = rep["top_gaps"]
    tampered = t.with_rows([(*r[:7], "<script>alert(1)</script>", r[8]) for r in t.rows])
    doc = html.table_html(tampered)
    assert "<script>" not in doc and "&lt;script&gt;" in doc


def test_overlap_parts_add_up(scenario):
    _, rep = scenario
    for r in rep["overlap"].to_records():
        assert r["busy_ns"] + r["idle_ns"] == r["window_ns"]
        assert r["compute_only_ns"] + r["overlapped_ns"] + r["exposed_ns"] == r["busy_ns"]
        assert r["overlapped_ns"] + r["exposed_ns"] == r["comm_ns"]
    duty = {r["rank"]: r["busy_ns"] for r in rep["duty_cycle"].to_records()}
    assert duty == {r["rank"]: r["busy_ns"] for r in rep["overlap"].to_records()}


def test_step_stack_adds_up_to_step_gpu_time(scenario):
    path, rep = scenario
    con = db.open_readonly(path)
    stack = steps.step_stack(con, rep.run_id)  # an analysis of its own: a row per (rank, step, layer type)
    con.close()
    assert "step_stack" not in rep.tables  # the report charts its bins instead
    total: dict = {}
    for r in stack.to_records():
        total[(r["rank"], r["step"])] = total.get((r["rank"], r["step"]), 0) + r["gpu_ns"]
    assert total == {(r["rank"], r["step"]): r["gpu_ns"] for r in rep["steps"].to_records()}


def test_report_json(scenario, capsys, tmp_path):
    import json

    path, rep = scenario
    code, _, err = run_cli(["report", "--db", str(path), "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0 and "Wrote" in err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc["tables"]) == set(rep.tables)
    adv = doc["tables"]["advice"]
    assert [r["rule"] for r in adv["rows"]] == rep["advice"].column("rule")
    assert doc["tables"]["contrast"]["meta"]["tail_layer_type"] == "moe_comm"


def test_one_rank_says_why_there_is_no_per_rank_view(tmp_path, capsys):
    """A single rank has no all-to-all and no waits: the report says so in one line (terminal, HTML)."""
    con, run = report_scenario.build(tmp_path / "one.duckdb", n_steps=10, ranks=(0,))
    rep = build_report(con, run)
    con.close()
    assert rep.why("per_rank") == rep.why("traffic") and rep.why("per_rank").startswith("one rank: no all-to-all")
    assert rep.why("decompose_layer_type") is None and rep.why("overlap") is None  # it has them
    page = html.render(rep)
    assert page.count('<p class="why"') == 1 and "one rank: no all-to-all" in page
    code, out, _ = run_cli(["report", "--db", str(tmp_path / "one.duckdb")], capsys)
    assert code == 0 and out.count("one rank: no all-to-all") == 1
