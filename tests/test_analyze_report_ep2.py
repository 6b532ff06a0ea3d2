"""The report on the real 2-rank expert-parallel traces (../shared/traces/ep2_bal_rank{0,1}):
moe_comm is its own row, there is a per-rank view, and the HTML and Perfetto outputs hold up."""

import json

import pytest
import report_scenario
from test_present_perfetto import check_trace

from hybridscope.analyze.report import build_report
from hybridscope.cli import main
from hybridscope.present import html
from hybridscope.store import db


@pytest.fixture(scope="module")
def ep2(tmp_path_factory):
    from paths import TRACES

    paths = [TRACES / f"ep2_bal_rank{r}.pt.trace.json.gz" for r in (0, 1)]
    if not all(p.exists() for p in paths):
        pytest.skip(f"{paths[0].parent} not present")
    path = tmp_path_factory.mktemp("ep2") / "ep2.duckdb"
    with pytest.raises(SystemExit) as e:
        main(["import", *map(str, paths), "--db", str(path)])
    assert e.value.code == 0
    con = db.open_readonly(path)
    rep = build_report(con, db.resolve_run(con, None))
    con.close()
    return path, rep


def test_moe_comm_row_and_per_rank_view(ep2):
    _, rep = ep2
    dec = rep["decompose_layer_type"]
    comm = dec.record(layer_type="moe_comm")
    per_rank = rep["per_rank"]
    assert sorted({r["rank"] for r in per_rank.to_records()}) == [0, 1]
    by_rank = [per_rank.record(rank=rank, layer_type="moe_comm")["n"] for rank in (0, 1)]
    assert comm["n"] == sum(by_rank)
    # the warm-up apart (rank 0: steps 0-6, rank 1: step 0 with NCCL's 40.8 ms first all-to-all)
    warm = [per_rank.record(rank=rank, layer_type="warm-up")["n"] for rank in (0, 1)]
    assert warm[0] > warm[1] > 0 and per_rank.record(rank=1, layer_type="warm-up")["max_ns"] > 40_000_000
    # with it kept: every GPU event inside moe.dispatch / moe.combine (the 80 all-to-all kernels of
    # each rank among them)
    con = db.open_readonly(ep2[0])
    kept = build_report(con, 1, warmup=0)["per_rank"]
    con.close()
    assert min(kept.record(rank=rank, layer_type="moe_comm")["n"] for rank in (0, 1)) >= 80
    # moe_comm's long tail here was its warm-up: without it (p99/p50 4.9x) moe_experts' (6.1x) is longer
    assert rep["contrast"].meta["tail_layer_type"] == "moe_experts"
    con = db.open_readonly(ep2[0])
    assert build_report(con, 1, warmup=0)["contrast"].meta["tail_layer_type"] == "moe_comm"
    con.close()
    assert len(rep["steps"]) == 40  # step#0..19 on each rank


def test_terminal_report(ep2, capsys):
    path, _ = ep2
    with pytest.raises(SystemExit) as e:
        main(["report", "--db", str(path)])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "moe_experts p99 = " in out and "Per rank" in out and "warm-up left out (auto)" in out
    assert any(line.split()[:1] == ["moe_comm"] for line in out.splitlines())


def test_html_and_perfetto(ep2, tmp_path, capsys):
    path, rep = ep2
    marks = report_scenario.plot_marks(html.render(rep))
    assert marks["cdf"]["path.series"] == len(set(rep["latency_cdf"].column("layer_type")))
    assert marks["steps"]["rect.bar"] > 0
    # no layer indices in this toy: one bar per module (moe.router, .dispatch, .experts, .combine)
    assert marks["layers"]["rect.bar"] == report_scenario.expected_marks(rep)["layers"][1] == 4
    with pytest.raises(SystemExit) as e:
        main(["export", "--db", str(path), "--perfetto", str(tmp_path / "ep2.json")])
    assert e.value.code == 0
    xs = check_trace(json.loads((tmp_path / "ep2.json").read_text()))
    assert {e["pid"] for e in xs} == {0, 1}
    assert any(e["cat"] == "moe_comm" and e["name"].startswith("ncclDevKernel_SendRecv") for e in xs)
