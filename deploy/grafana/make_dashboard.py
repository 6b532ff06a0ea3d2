"""Writes deploy/grafana/hybridscope.json, the Grafana dashboard (run after editing the panels here).

    python deploy/grafana/make_dashboard.py

Every panel's queries are PromQL over hybridscope's metrics (docs/capture.md, "Watch it live");
tests/test_deploy.py asks a real Prometheus to parse each one.
"""

import json
from pathlib import Path

LAYER = "sum by (le, layer_type) (rate(hybridscope_layer_seconds_bucket{rank=~\"$rank\"}[$__rate_interval]))"
PANELS = [
    ("Layer-type latency p99", "s", [(f"histogram_quantile(0.99, {LAYER})", "{{layer_type}} p99")]),
    ("Layer-type latency p50", "s", [(f"histogram_quantile(0.5, {LAYER})", "{{layer_type}} p50")]),
    ("Tail ratio p99/p50 per layer type", "x", [
        (f"histogram_quantile(0.99, {LAYER}) / histogram_quantile(0.5, {LAYER})", "{{layer_type}}")]),
    ("What the dashboard shows: GPU utilization vs SM active", "percentunit", [
        ("avg by (gpu) (hybridscope_gpu_utilization_ratio{rank=~\"$rank\"})", "GPU {{gpu}} utilization (NVML)"),
        ("avg by (gpu) (hybridscope_gpu_sm_active_ratio{rank=~\"$rank\"})", "GPU {{gpu}} SM active (GPM)"),
        ("avg(hybridscope_cpu_utilization_ratio{rank=~\"$rank\"})", "CPU utilization (no NVML)")]),
    ("Step latency p50 / p99", "s", [
        ("histogram_quantile(0.5, sum by (le) (rate(hybridscope_step_seconds_bucket{rank=~\"$rank\"}[$__rate_interval])))", "p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(hybridscope_step_seconds_bucket{rank=~\"$rank\"}[$__rate_interval])))", "p99")]),
    ("Tokens per second", "short", [("sum(rate(hybridscope_tokens_total{rank=~\"$rank\"}[$__rate_interval]))", "tokens/s")]),
    ("moe_comm wait share of step time", "percentunit", [
        ("hybridscope_moe_comm_wait_ratio{rank=~\"$rank\"}", "rank {{rank}}")]),
    ("Routing imbalance (max/mean tokens per expert)", "x", [
        ("max by (layer) (hybridscope_routing_imbalance_ratio{rank=~\"$rank\"})", "layer {{layer}}")]),
    ("Hottest experts (tokens, latest routed step)", "short", [
        ("sum by (layer, expert) (hybridscope_hot_expert_tokens{rank=~\"$rank\"})", "L{{layer}} E{{expert}}")]),
    ("Capture health: faults and drops", "short", [
        ("sum by (place) (increase(hybridscope_capture_faults_total[$__rate_interval]))", "fault {{place}}"),
        ("sum by (place) (increase(hybridscope_capture_drops_total[$__rate_interval]))", "drop {{place}}")]),
]


def panel(i: int, title: str, unit: str, targets: list) -> dict:
    return {
        "id": i + 1, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]}},
        "targets": [{"refId": chr(65 + j), "expr": e, "legendFormat": leg,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}} for j, (e, leg) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "title": "hybridscope: per-layer-type latency", "uid": "hybridscope", "schemaVersion": 39,
        "tags": ["hybridscope", "inference"], "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "rank", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(hybridscope_step_seconds_count, rank)", "includeAll": True, "multi": True,
             "current": {"text": "All", "value": "$__all"}, "allValue": ".*", "refresh": 2}]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("hybridscope.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"Wrote {out}")
