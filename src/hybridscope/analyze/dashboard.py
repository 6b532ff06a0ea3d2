"""What a dashboard would have shown for the run's window, and the contrast with the decomposition.

Definitions (docs/analyses.md, "dashboard"):
- `nvml_util_pct`: mean of the `gpu_util_pct` samples of a device (NVML's utilization: share of
  each sample period with at least one kernel running), when the run was sampled.
- `cpu_util_pct`: mean of the `cpu_util_pct` samples (what capture records without NVML).
- `duty_cycle_pct`: share of the rank's wall-time window with at least one GPU kernel running on
  the device: the length of the union of its kernel intervals over the window length.
- `step_p50_ns` / `step_p99_ns`: percentiles of step latency (timeline.step_windows).
- `ttft_*`: time to first token per request (first_token_ns - arrival_ns); `itl_*`: a request's
  mean inter-token latency, (finish_ns - first_token_ns) / (output_tokens - 1), for requests with
  at least two output tokens. Percentiles over requests.
- `tokens_per_s`: sum of the steps' n_tokens over the span from the first step's start to the
  last step's end, when steps record tokens.
Percentiles are continuous (linear interpolation between order statistics, like percentile_cont).
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze import timeline
from hybridscope.analyze.stats import quantile
from hybridscope.table import Column, Table

DASHBOARD_COLUMNS = (
    Column("metric", "str", "what the dashboard shows"),
    Column("rank", "int", "rank (None: the whole run)"),
    Column("device", "int", "GPU index (None: not per device)"),
    Column("value", "float", "the value, in the unit its `kind` names"),
    Column("kind", "str", "how to read `value`: pct, ns or float"),
    Column("n", "int", "samples / kernels / steps / requests behind the value"),
)


@timeline.once
@timeline.on_timeline
def duty_cycle(con, run_id: int) -> Table:
    """Per (rank, device): wall-time window, busy time (union of kernel intervals), duty cycle; of
    the whole run, warm-up included, as a dashboard's utilization counts it."""
    windows = timeline.rank_windows(con, run_id)
    rows = []
    # warm-up and steady state as one timeline: what the dashboard's utilization sees
    for rank, device, busy, n in con.execute(
            f"SELECT rank, device, sum(busy_all)::BIGINT, sum(n)::BIGINT FROM {timeline.tables(con, run_id).busy}"
            " GROUP BY rank, device ORDER BY rank, device").fetchall():
        lo, hi = windows[rank]
        wall = hi - lo
        rows.append((rank, None if device < 0 else device, wall, int(busy), 100.0 * busy / wall if wall else None,
                     int(n)))
    cols = (
        Column("rank", "int"), Column("device", "int"),
        Column("window_ns", "ns", "the rank's wall-time window", "window"),
        Column("busy_ns", "ns", "time with at least one kernel running", "busy"),
        Column("duty_cycle_pct", "pct", "busy / window", "duty cycle"),
        Column("n_kernels", "int", "kernels on the device", "kernels"),
    )
    return Table("duty_cycle", cols, rows, {"title": "GPU duty cycle", "run_id": run_id})


def dashboard(con, run_id: int) -> Table:
    """The dashboard's view of the run, one metric per row (module doc for each definition).

    meta['headline'] holds the run-wide numbers the contrast header shows: mean NVML utilization
    and mean duty cycle over devices, pooled step p50/p99, TTFT p50/p99 and ITL p50/p99.
    """
    rows: list[tuple] = []
    rows += _sample_rows(con, run_id)
    for r in duty_cycle(con, run_id).to_records():
        rows.append(("duty_cycle_pct", r["rank"], r["device"], r["duty_cycle_pct"], "pct", r["n_kernels"]))
    steps = timeline.step_windows(con, run_id)
    durations = {}
    for s in steps:
        durations.setdefault(s["rank"], []).append(s["end_ns"] - s["ts_ns"])
    for rank, d in durations.items():
        rows.append(("step_p50_ns", rank, None, quantile(d, 0.5), "ns", len(d)))
        rows.append(("step_p99_ns", rank, None, quantile(d, 0.99), "ns", len(d)))
    rows += _throughput_rows(steps)
    rows += _request_rows(con, run_id)
    return Table("dashboard", DASHBOARD_COLUMNS, rows,
                 {"title": "What a dashboard shows", "run_id": run_id, "headline": _headline(rows, durations)})


def _sample_rows(con, run_id: int) -> list[tuple]:
    got = con.execute(
        """
        SELECT metric, rank, device, avg(value), count(value) FROM samples
        WHERE run_id = $run AND metric IN ('gpu_util_pct', 'cpu_util_pct') AND value IS NOT NULL
        GROUP BY metric, rank, device ORDER BY metric DESC, rank, device
        """,
        {"run": run_id},
    ).fetchall()
    names = {"gpu_util_pct": "nvml_util_pct", "cpu_util_pct": "cpu_util_pct"}
    return [(names[m], r, d, float(v), "pct", int(n)) for m, r, d, v, n in got]


def _throughput_rows(steps: list[dict]) -> list[tuple]:
    with_tokens = [s for s in steps if s["n_tokens"] is not None]
    if not with_tokens:
        return []
    span = max(s["end_ns"] for s in with_tokens) - min(s["ts_ns"] for s in with_tokens)
    tokens = sum(s["n_tokens"] for s in with_tokens)
    return [("tokens_per_s", None, None, tokens / (span / 1e9) if span else None, "float", len(with_tokens))]


def _request_rows(con, run_id: int) -> list[tuple]:
    ttft, itl = con.execute(
        """
        SELECT list(first_token_ns - arrival_ns) FILTER (WHERE first_token_ns IS NOT NULL AND arrival_ns IS NOT NULL),
               list((finish_ns - first_token_ns) / (output_tokens - 1))
                   FILTER (WHERE finish_ns IS NOT NULL AND first_token_ns IS NOT NULL AND output_tokens >= 2)
        FROM requests WHERE run_id = $run
        """,
        {"run": run_id},
    ).fetchall()[0]
    rows = []
    for name, values in (("ttft", ttft), ("itl", itl)):
        if values:
            rows.append((f"{name}_p50_ns", None, None, quantile(values, 0.5), "ns", len(values)))
            rows.append((f"{name}_p99_ns", None, None, quantile(values, 0.99), "ns", len(values)))
    return rows


def _headline(rows: list[tuple], step_durations: dict[int, list[int]]) -> dict:
    def mean_of(metric: str):
        v = [r[3] for r in rows if r[0] == metric and r[3] is not None]
        return float(np.mean(v)) if v else None

    def one(metric: str):
        v = [r[3] for r in rows if r[0] == metric and r[1] is None]
        return v[0] if v else None

    pooled = [d for ds in step_durations.values() for d in ds]
    return {
        "nvml_util_pct": mean_of("nvml_util_pct"),
        "cpu_util_pct": mean_of("cpu_util_pct"),
        "duty_cycle_pct": mean_of("duty_cycle_pct"),
        "step_p50_ns": quantile(pooled, 0.5),
        "step_p99_ns": quantile(pooled, 0.99),
        "n_steps": len(pooled),
        "ttft_p50_ns": one("ttft_p50_ns"), "ttft_p99_ns": one("ttft_p99_ns"),
        "itl_p50_ns": one("itl_p50_ns"), "itl_p99_ns": one("itl_p99_ns"),
        "tokens_per_s": one("tokens_per_s"),
    }


def contrast(con, run_id: int, *, dash: Table | None = None, decomposition: Table | None = None,
             min_gpu_pct: float = 1.0) -> Table:
    """The contrast header: what the dashboard says beside what the decomposition says.

    Dashboard side: the run-wide headline numbers that exist (dashboard meta['headline']).
    Decomposition side (by operation when the run holds only host API timings): the layer type with the largest tail ratio (p99/p50) among those holding at
    least `min_gpu_pct` % of GPU time (any layer type if none does; 'other' and 'unattributed' only
    when nothing was attributed): its tail ratio, p50, p99, share of
    wall and GPU time, and its share of the calls (n / n of the `all` row); beside it the `all` row's
    tail ratio, the single aggregate a dashboard would show.
    """
    from hybridscope.analyze.decompose import WARMUP, decompose

    dash = dash if dash is not None else dashboard(con, run_id)
    dec = decomposition if decomposition is not None else decompose(con, run_id, by="layer_type")
    rows = [("dashboard", k, float(v), _KIND[k], None) for k, v in dash.meta["headline"].items()
            if v is not None and k in _KIND]
    # the decomposition's group: the layer type, or the operation when it measured host API calls
    key = dec.meta.get("keys", ["layer_type"])[-1]
    recs = dec.to_records()
    everything = next((r for r in recs if r[key] == "all"), None)
    groups = [r for r in recs if r[key] not in ("all", WARMUP) and r["tail_ratio"] is not None]
    named = [r for r in groups if r[key] not in ("other", "unattributed")] or groups
    big = [r for r in named if (r["gpu_pct"] or 0) >= min_gpu_pct] or named
    tail = max(big, key=lambda r: (r["tail_ratio"], r["gpu_ns"]), default=None)
    if tail is not None and everything is not None:
        lt = tail[key]
        rows += [("decomposition", "tail_ratio", tail["tail_ratio"], "ratio", lt),
                 ("decomposition", "p50_ns", tail["p50_ns"], "ns", lt),
                 ("decomposition", "p99_ns", tail["p99_ns"], "ns", lt),
                 ("decomposition", "wall_pct", tail["wall_pct"], "pct", lt),
                 ("decomposition", "gpu_pct", tail["gpu_pct"], "pct", lt),
                 ("decomposition", "calls_pct", 100.0 * tail["n"] / everything["n"], "pct", lt),
                 ("decomposition", "all_tail_ratio", everything["tail_ratio"], "ratio", "all")]
    cols = (Column("side", "str", "dashboard | decomposition"), Column("item", "str"),
            Column("value", "float"), Column("kind", "str", "how to read value: pct, ns, ratio, float"),
            Column("layer_type", "str", "the layer type the decomposition item describes", "layer type"))
    return Table("contrast", cols, [r for r in rows if r[2] is not None],
                 {"title": "Dashboard vs decomposition", "run_id": run_id,
                  "tail_layer_type": tail[key] if tail else None, "measure": dec.meta.get("measure")})


_KIND = {"nvml_util_pct": "pct", "cpu_util_pct": "pct", "duty_cycle_pct": "pct", "step_p50_ns": "ns",
         "step_p99_ns": "ns", "ttft_p50_ns": "ns", "ttft_p99_ns": "ns", "itl_p50_ns": "ns", "itl_p99_ns": "ns",
         "tokens_per_s": "float"}
