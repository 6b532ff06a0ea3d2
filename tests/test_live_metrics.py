"""Live metrics (live/metrics.py, live/observers.py): hand-computed buckets, the exporter's numbers
from hand-made observations, and an end-to-end scrape of the engine under capture compared with the
store it writes."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

from hybridscope.demo import free_port
from hybridscope.live.metrics import BUCKETS_S, Hist, PrometheusExporter
from hybridscope.live.observers import LayerTimes, RoutingCounts, StepTiming


def parse(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (labels as printed)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def scrape_text(exp: PrometheusExporter) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(exp)
    return generate_latest(reg).decode()


def test_buckets_double_from_one_microsecond():
    assert BUCKETS_S[0] == 1e-6 and BUCKETS_S[1] == 2e-6 and len(BUCKETS_S) == 24
    assert BUCKETS_S[-1] == pytest.approx(8.388608)


def test_hist_counts_are_cumulative_and_le():
    h = Hist()
    h.add(np.array([500, 1000, 3000, 1_000_000_000, 20_000_000_000]))  # 0.5 µs, 1 µs, 3 µs, 1 s, 20 s
    b = dict(h.buckets())
    assert b["1e-06"] == 2  # 0.5 µs and exactly 1 µs (le)
    assert b["2e-06"] == 2 and b["4e-06"] == 3
    assert b[repr(BUCKETS_S[-1])] == 4 and b["+Inf"] == 5
    assert h.sum_s == pytest.approx(21.0000045)


def test_exporter_numbers_from_hand_made_observations():
    exp = PrometheusExporter(rank=1, hot_experts=2)
    exp.on_step(StepTiming(1, 0, 0, 10_000_000, "prefill", 32, 2, True))
    exp.on_step(StepTiming(1, 1, 0, 30_000_000, "decode", 2, 2, False))
    exp.on_layers(LayerTimes(1, np.array([0, 0, 0, 0]),
                             np.array(["mamba", "moe_comm", "moe_comm", None], dtype=object),
                             np.array([0, 1, 1, 2]), np.array([2_000_000, 1_000_000, 3_000_000, 500_000])))
    exp.on_routing(RoutingCounts(1, np.array([0, 0, 0, 0, 3, 3, 3, 3]), np.array([5] * 8),
                                 np.array([0, 1, 2, 3] * 2), np.array([1, 1, 1, 1, 6, 1, 1, 0])))
    m = parse(scrape_text(exp))
    assert m['hybridscope_step_seconds_count{rank="1"}'] == 2
    assert m['hybridscope_step_seconds_sum{rank="1"}'] == pytest.approx(0.04)
    assert m['hybridscope_tokens_total{rank="1"}'] == 34
    assert m['hybridscope_layer_seconds_count{layer_type="moe_comm",rank="1"}'] == 2
    assert m['hybridscope_layer_seconds_sum{layer_type="mamba",rank="1"}'] == pytest.approx(0.002)
    assert 'hybridscope_layer_seconds_count{layer_type="None",rank="1"}' not in m  # untyped rows are left out
    # moe_comm 4 ms of the sampled step's 10 ms
    assert m['hybridscope_moe_comm_wait_ratio{rank="1"}'] == pytest.approx(0.4)
    # latest routed step (3): tokens 6, 1, 1, 0 -> max/mean = 6 / 2
    assert m['hybridscope_routing_imbalance_ratio{layer="5",rank="1"}'] == pytest.approx(3.0)
    hot = {k: v for k, v in m.items() if k.startswith("hybridscope_hot_expert_tokens")}
    assert hot == {'hybridscope_hot_expert_tokens{expert="0",layer="5",rank="1"}': 6.0,
                   'hybridscope_hot_expert_tokens{expert="1",layer="5",rank="1"}': 1.0}



def test_engine_under_capture_serves_what_the_store_holds(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import hybridscope
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request
    from hybridscope.live import arm
    from hybridscope.store import db as store

    monkeypatch.setattr(arm, "LIVE_INTERVAL_NS", 0)  # read back at every step boundary
    torch.manual_seed(0)
    model = build_model(EngineConfig.from_preset("tiny"))
    reqs = [Request(i, list(range(1, 12)), max_new_tokens=6, arrival=0.0) for i in range(4)]
    port = free_port()
    db = tmp_path / "run.duckdb"
    with hybridscope.capture(db=db, model=model, sample_every=1, metrics_port=port, quiet=True) as cap:
        Engine(model, cuda_graphs=False).run(reqs)
        m = parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    with pytest.raises(OSError):  # the endpoint went down with the capture
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    con = store.open_readonly(db)
    try:
        last = con.execute("SELECT max(step) FROM events WHERE source = 'layer'").fetchone()[0]
        want = dict(con.execute("SELECT layer_type, count(*) FROM events WHERE source = 'layer' AND step < ? "
                                "GROUP BY ALL", [last]).fetchall())
        n_steps = con.execute("SELECT count(*) FROM steps").fetchone()[0]
    finally:
        con.close()
    got = {k.split('"')[1]: v for k, v in m.items() if k.startswith("hybridscope_layer_seconds_count")}
    assert got == want  # every closed step's layer rows, typed as the store types them
    assert m['hybridscope_step_seconds_count{rank="0"}'] == n_steps - 1  # the last step is still open
    assert cap.summary.faults == {}


@pytest.mark.gpu
def test_sampler_reads_sm_activity_beside_utilization_on_gpu():
    """NVML GPM on a GPU that has it (Hopper: H100/H200): sm_active_pct rows in 0..100."""
    pynvml = pytest.importorskip("pynvml")
    from hybridscope.live.faults import Faults
    from hybridscope.live.sampler import GpmSmActive, Sampler

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        if not GpmSmActive(pynvml, [(0, h)]).handles:
            pytest.skip("this GPU / driver has no NVML GPM")
    finally:
        pynvml.nvmlShutdown()
    s = Sampler(0.05, Faults())
    s.start()
    time.sleep(0.5)
    s.stop()
    sm = [v for _d, _t, m, v in s.rows if m == "sm_active_pct"]
    assert sm and all(0.0 <= v <= 100.0 for v in sm)


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_utilization_is_a_reading_over_a_real_span():
    """psutil's cpu_percent(None) is utilization since the calling thread's previous call: the first
    call only sets the reference (it reads 0.0) and a span of microseconds reads 0 or 100. Neither
    gives a row; a reading over a busy span of this process reads more than 0."""
    pytest.importorskip("psutil")
    from hybridscope.live.faults import Faults
    from hybridscope.live.sampler import MIN_CPU_SPAN_S, Sampler

    s = Sampler(0.05, Faults())
    read = s._open_psutil()
    assert [m for _d, m, _v in read()] == ["proc_rss_mib"]  # the reference
    assert [m for _d, m, _v in read()] == ["proc_rss_mib"]  # microseconds after it
    _busy(MIN_CPU_SPAN_S + 0.1)
    cpu = [v for _d, m, v in read() if m == "cpu_util_pct"]
    assert len(cpu) == 1 and 0.0 < cpu[0] <= 100.0  # this thread kept a core busy


def test_the_sampler_thread_reads_cpu_utilization_of_a_busy_span():
    """The same through the sampler's own thread (psutil's reference is per thread: a reference
    taken on another thread made the first reading 0.0)."""
    pytest.importorskip("psutil")
    from hybridscope.live.faults import Faults
    from hybridscope.live.sampler import Sampler

    s = Sampler(0.3, Faults())
    s.start()
    _busy(1.0)
    s.stop()
    if s.source != "psutil":
        pytest.skip(f"this machine samples {s.source}, not psutil")
    cpu = [v for _d, _t, m, v in s.rows if m == "cpu_util_pct"]
    assert cpu and all(v > 0.0 for v in cpu), cpu
    short = Sampler(5.0, Faults())  # a window shorter than one interval: the reading at stop
    short.start()
    _busy(0.3)
    short.stop()
    assert [m for _d, _t, m, _v in short.rows].count("cpu_util_pct") == 1
