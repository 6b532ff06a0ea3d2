"""A real Prometheus server scrapes the exporter while the engine's tiny preset serves on CPU; its
`histogram_quantile(0.99, ...)` per layer type agrees with the p99 the store computes for the same
window, within the bucket width (buckets double: a factor of 2 at most). Needs Debian's
`prometheus` package (installed by .ci/run); skipped without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request

import numpy as np
import pytest

from hybridscope.demo import free_port

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs the prometheus server (Debian package 'prometheus')")

SERVE = textwrap.dedent("""
    import sys, time
    import torch
    import hybridscope
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request

    db, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(EngineConfig.from_preset("tiny", skew=2.0, skew_experts=(0, 1)))
    with hybridscope.capture(db=db, model=model, sample_every=1, metrics_port=port, quiet=True) as cap:
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            reqs = [Request(j, [1 + (i + j) % 200] * (8 + j), max_new_tokens=6, arrival=0.0) for j in range(4)]
            Engine(model, cuda_graphs=False, seed=i).run(reqs)
            i += 1
        time.sleep(1.1)
        cap.step()            # a step boundary past the live interval: every closed step is read back
        print("SERVED", time.time(), flush=True)
        time.sleep(4.0)       # scrapes see the final counts (after the endpoint goes, the series go stale)
    """)



def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_prometheus_p99_by_layer_type_matches_the_store(tmp_path):
    pytest.importorskip("torch")
    from hybridscope.analyze.stats import quantile_cont
    from hybridscope.store import db as store

    exporter, web = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hybridscope\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{exporter}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        script = tmp_path / "serve.py"
        script.write_text(SERVE)
        db = tmp_path / "run.duckdb"
        served = subprocess.run([sys.executable, str(script), str(db), str(exporter), "6"],
                                capture_output=True, text=True, timeout=300, check=False)
        assert served.returncode == 0, served.stderr[-2000:]
        at = float(served.stdout.split("SERVED")[1].split()[0]) + 3.0  # scraped after the final read-back
        api = f"http://127.0.0.1:{web}/api/v1"

        def query(q: str) -> dict[str, float]:
            res = _get(f"{api}/query?" + urllib.parse.urlencode({"query": q, "time": at}))
            return {r["metric"]["layer_type"]: float(r["value"][1]) for r in res["data"]["result"]}

        got = query("histogram_quantile(0.99, sum by (le, layer_type) (hybridscope_layer_seconds_bucket))")
        n_prom = {k: int(v) for k, v in query("sum by (layer_type) (hybridscope_layer_seconds_count)").items()}
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    con = store.open_readonly(db)
    try:
        # every layer row: the script's last cap.step() closed the last serving step, and no module ran after
        rows = con.execute("SELECT layer_type, list(duration_ns ORDER BY duration_ns) FROM events "
                           "WHERE source = 'layer' GROUP BY ALL").fetchall()
    finally:
        con.close()
    want = {lt: (len(d), quantile_cont(np.asarray(d, np.float64), 0.99) / 1e9) for lt, d in rows}
    assert set(got) == set(want) and len(want) >= 5  # mamba, attention, moe_router, moe_experts, ...
    for lt, (n, p99) in want.items():
        assert n_prom[lt] == n, lt  # the same window: every row of the run
        assert abs(np.log2(got[lt] / p99)) <= 1.0, (lt, got[lt], p99)  # within one doubling bucket
