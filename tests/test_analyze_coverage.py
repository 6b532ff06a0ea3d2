"""Coverage is never silent: below 90 % attributed GPU time, decompose and the report (terminal and
HTML) say so first, with the share and the fix that fits the run (real HF traces of ../shared)."""

from __future__ import annotations

import pytest
from factories import add_events, add_run, add_scopes, new_store
from paths import TRACES

from hybridscope.analyze.coverage import coverage, coverage_warning
from hybridscope.analyze.decompose import decompose
from hybridscope.cli import main
from hybridscope.store import db

# attributed share of GPU time (scope or a known kernel family's name rule), measured on the traces
SHARE = {"jamba": "2.6%", "granitemoehybrid": "1.5%"}


@pytest.fixture(scope="module", params=sorted(SHARE))
def hf_trace_store(tmp_path_factory, request):
    from hybridscope.ingest import import_files

    trace = TRACES / f"{request.param}.pt.trace.json.gz"
    if not trace.exists():
        pytest.skip(f"{trace} not present")
    path = tmp_path_factory.mktemp(request.param) / "s.duckdb"
    import_files(path, [trace], progress=False)
    return request.param, path


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    assert e.value.code == 0
    return capsys.readouterr().out


def test_low_coverage_is_said_first_with_the_share_and_the_fix(hf_trace_store, capsys, tmp_path, monkeypatch):
    name, path = hf_trace_store
    con = db.open_readonly(path)
    try:
        pct = coverage(con, 1).meta["attributed_pct"]
        warning = coverage_warning(con, 1)
        table = decompose(con, 1)
    finally:
        con.close()
    assert f"{pct:.1f}%" == SHARE[name]
    assert warning.startswith(f"only {SHARE[name]} of this run's GPU time is attributed")
    assert "with_stack=True" in warning and "hybridscope trace" in warning  # no module scopes in these
    assert table.meta["warnings"] == [warning]

    monkeypatch.setenv("COLUMNS", "100")
    out = _cli(["decompose", "--db", str(path)], capsys)
    assert out.splitlines()[0].startswith(f"warning: only {SHARE[name]} of this run's GPU time")
    html = tmp_path / "r.html"
    out = _cli(["report", "--db", str(path), "--html", str(html)], capsys)
    lines = out.splitlines()
    assert lines[1].startswith(f"warning: only {SHARE[name]}")  # right under the report's header line
    assert sum("warning: only" in ln for ln in lines) == 1  # said once, not again over every table
    page = html.read_text()
    said = page.index(f'<p class="warning">warning: only {SHARE[name]}')
    assert said < page.index("<h2>")  # before the first section


def test_well_attributed_runs_say_nothing():
    con = new_store(":memory:")
    run = add_run(con)
    add_events(con, run, [90, 5], layer_type="mamba", attr_method="scope")
    add_events(con, run, [5], layer_type="other", attr_method="none")  # 5 % other: fine
    assert coverage_warning(con, run) is None
    assert decompose(con, run).meta["warnings"] == []
    empty = add_run(con)
    assert coverage_warning(con, empty) is None  # no GPU time: nothing to attribute


def test_the_fix_fits_the_run():
    con = new_store(":memory:")
    run = add_run(con)
    add_scopes(con, run, [(0, 1_000_000)])
    add_events(con, run, [20], layer_type="mamba", attr_method="scope")
    add_events(con, run, [80], layer_type="other", attr_method="none")
    warning = coverage_warning(con, run)
    assert warning.startswith("only 20.0% of this run's GPU time") and "--rules" in warning
    replayed = add_run(con)
    add_scopes(con, replayed, [(0, 1_000_000)])
    add_events(con, replayed, [50], layer_type="mamba", attr_method="scope")
    add_events(con, replayed, [50], layer_type="other", attr_method="graph")  # replays no rule typed
    assert "--pattern" in coverage_warning(con, replayed)
