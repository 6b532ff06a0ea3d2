"""deploy/: the alert rules pass promtool, every Grafana panel query and every alert expression parses
in a real Prometheus, the dashboard JSON is the generator's output, and `baseline export-rules` writes
rules promtool accepts with bounds computed from the baseline by hand."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from factories import add_events, add_run, new_store

from hybridscope.analyze.stats import quantile_cont
from hybridscope.cli import main
from hybridscope.demo import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian 'prometheus')")


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def dashboard_queries() -> list[str]:
    d = json.loads((DEPLOY / "grafana" / "hybridscope.json").read_text())
    return [t["expr"] for p in d["panels"] for t in p["targets"]]


def test_dashboard_json_is_the_generators_output():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_dashboard", DEPLOY / "grafana" / "make_dashboard.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    d = json.loads((DEPLOY / "grafana" / "hybridscope.json").read_text())
    assert d == gen.dashboard()  # regenerate with: python deploy/grafana/make_dashboard.py
    assert len(d["panels"]) >= 8 and all(p["targets"] for p in d["panels"])
    assert {p["id"] for p in d["panels"]} == set(range(1, len(d["panels"]) + 1))


@needs_promtool
def test_promtool_checks_the_alert_rules():
    got = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                         capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "SUCCESS: 4 rules found" in got.stdout



@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus server (Debian 'prometheus')")
def test_every_dashboard_query_parses_in_prometheus(tmp_path):
    web = free_port()
    (tmp_path / "p.yml").write_text("global:\n  scrape_interval: 15s\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'p.yml'}", f"--storage.tsdb.path={tmp_path / 'db'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = f"http://127.0.0.1:{web}/api/v1/query?"
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(api + "query=1", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, "prometheus did not start"
                time.sleep(0.3)
        for expr in dashboard_queries():
            # Grafana's variables, as Grafana substitutes them
            q = expr.replace("$__rate_interval", "1m").replace("$rank", ".*")
            try:
                with urllib.request.urlopen(api + urllib.parse.urlencode({"query": q}), timeout=10) as r:
                    assert json.loads(r.read())["status"] == "success", expr
            except urllib.error.HTTPError as e:  # 400: a parse error, with Prometheus's reason
                pytest.fail(f"{expr}: {e.read().decode()}")
        bad = urllib.parse.urlencode({"query": "histogram_quantile(0.99, sum by (le) (rate(x[5m]))"})
        with pytest.raises(urllib.error.HTTPError):  # the check can fail: a broken query is refused
            urllib.request.urlopen(api + bad, timeout=10)
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def test_export_rules_bounds_by_hand(tmp_path, capsys):
    db = tmp_path / "run.duckdb"
    con = new_store(db)
    run = add_run(con)
    rng = np.random.default_rng(0)
    d = {"mamba": rng.integers(100_000, 200_000, 300), "moe_comm": rng.integers(1_000_000, 9_000_000, 300)}
    for lt, durs in d.items():
        add_events(con, run, durs.tolist(), name=f"k_{lt}", layer_type=lt)
    con.close()
    assert _cli(["baseline", "save", "--db", str(db), "--name", "main", "--warmup", "0"]) == 0
    out = tmp_path / "alerts.yml"
    assert _cli(["baseline", "export-rules", "main", "--db", str(db), "--out", str(out), "--margin", "20%"]) == 0
    text = out.read_text()
    for lt, durs in d.items():
        bound = quantile_cont(np.sort(durs.astype(np.float64)), 0.99) * 1.2 / 1e9
        m = re.search(rf'layer_type="{lt}"\}}\[5m\]\)\)\) > ([0-9.e-]+)', text)
        assert m and float(m.group(1)) == pytest.approx(bound, rel=1e-8), lt
    if shutil.which("promtool"):
        got = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True, check=False)
        assert got.returncode == 0 and "SUCCESS: 2 rules found" in got.stdout, got.stdout + got.stderr
    assert _cli(["baseline", "export-rules", "main", "--db", str(db), "--out", str(out)]) == 2  # no overwrite
    assert "will not overwrite" in capsys.readouterr().err
