"""`hybridscope advise --emit`: advice -> engine knobs (analyze/fixes.py, present/fixes.py), read back
by the engine (engine.config.load_fixes)."""

from __future__ import annotations

import pytest
import report_scenario

from hybridscope.analyze.fixes import fixes_from_advice
from hybridscope.cli import main
from hybridscope.present.fixes import render_toml
from hybridscope.table import Column, Table


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def _advice(rows, numbers) -> Table:
    cols = (Column("rank", "int"), Column("rule", "str"), Column("recommendation", "str"),
            Column("evidence", "str"), Column("at_stake_ns", "ns"), Column("at_stake_pct", "pct"))
    return Table("advice", cols, rows, {"numbers": numbers})


def test_fixes_from_advice_hand_made():
    t = _advice([(1, "routing_penalty", "Penalize.", "ev1", 5e6, 2.0),
                 (2, "stream_pairing", "Pair.", "ev2", 1e6, 0.4),
                 (3, "cuda_graphs", "Graphs.", "ev3", 3e5, 0.1),
                 (4, "capacity_factor", "Raise.", "ev4", None, None)],
                {"routing_penalty": {"threshold": 1.734}, "stream_pairing": {},
                 "cuda_graphs": {}, "capacity_factor": {"capacity_factors": {"3/0": 2.5, "5/7": 1.75}}})
    fx = fixes_from_advice(t)
    assert [(f.rule, f.knob, f.value) for f in fx] == [
        ("routing_penalty", "route_imbalance_cap", 1.73),
        ("stream_pairing", "a2a_separate_streams", True),
        ("cuda_graphs", None, None),
        ("capacity_factor", "capacity_overrides", {"3/0": 2.5, "5/7": 1.75}),
    ]
    # a threshold below an even share is raised to 1 (the cap cannot ask for less than even)
    low = fixes_from_advice(_advice([(1, "routing_penalty", "P.", "e", 1.0, 1.0)],
                                    {"routing_penalty": {"threshold": 0.8}}))
    assert low[0].value == 1.0


def test_emitted_file_is_what_the_engine_reads(tmp_path):
    pytest.importorskip("torch")
    from hybridscope.engine.config import EngineConfig, load_fixes

    t = _advice([(1, "routing_penalty", "Penalize.", "moe_comm p99 9 ms vs 1 ms", 5e6, 2.0),
                 (2, "capacity_factor", "Raise.", "worst 2.5×", None, None)],
                {"routing_penalty": {"threshold": 1.5}, "capacity_factor": {"capacity_factors": {"3/0": 2.5}}})
    f = tmp_path / "fixes.toml"
    f.write_text(render_toml(fixes_from_advice(t), ["test"]))
    text = f.read_text()
    assert "# [routing_penalty] Penalize. Evidence: moe_comm p99 9 ms vs 1 ms; at stake: 5.00 ms." in text
    fx = load_fixes(f)
    assert fx == {"route_imbalance_cap": 1.5, "capacity_overrides": {(3, 0): 2.5}}
    assert EngineConfig.from_preset("tiny", **fx).capacity_for_layer(3) == {0: 2.5}


def test_advise_cli_emits_the_scenarios_fixes(tmp_path, capsys):
    db = tmp_path / "run.duckdb"
    con, _ = report_scenario.build(db)
    con.close()
    out = tmp_path / "fixes.toml"
    assert _cli(["advise", "--db", str(db), "--emit", str(out), "--format", "json"]) == 0
    got = capsys.readouterr()
    assert f"Wrote {out}" in got.err
    text = out.read_text()
    # every 5th step of the scenario routes skewed and its all-to-all runs 8x longer: the routing rule
    # fires and its knob is written with the evidence above it
    assert "route_imbalance_cap = " in text and "# [routing_penalty]" in text
    # a second --emit refuses to overwrite
    assert _cli(["advise", "--db", str(db), "--emit", str(out)]) == 2
    assert "will not overwrite without --force" in capsys.readouterr().err
    assert _cli(["advise", "--db", str(db), "--emit", str(out), "--force"]) == 0


def test_advise_prints_each_item_with_its_gain_in_80_columns(tmp_path, capsys, monkeypatch):
    db = tmp_path / "run.duckdb"
    con, _ = report_scenario.build(db)
    con.close()
    monkeypatch.setenv("COLUMNS", "80")
    assert _cli(["advise", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    items = [line for line in lines if "[routing_penalty]" in line or "[capacity_factor]" in line]
    assert items  # one paragraph per item, each naming its expected gain in words
    assert text.count("expected gain up to") == text.count("evidence:") >= len(items)
