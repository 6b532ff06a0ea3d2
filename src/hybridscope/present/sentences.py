"""The report's sentences, shared by the terminal and HTML renderers: the contrast header and the
one-line notes under some tables (`sentence` views of analyze/report.py SECTIONS). Formatting only:
every number comes from a Table.
"""

from __future__ import annotations

from hybridscope.table import Table
from hybridscope.units import format_ns


def contrast_lines(contrast: Table) -> tuple[list[str], list[str]]:
    """The two sides of the contrast header as sentences: (dashboard lines, decomposition lines)."""
    d = {r["item"]: r["value"] for r in contrast.to_records() if r["side"] == "dashboard"}
    x = {r["item"]: r["value"] for r in contrast.to_records() if r["side"] == "decomposition"}
    dash = []
    if "nvml_util_pct" in d:
        dash.append(f"GPU {d['nvml_util_pct']:.0f}% utilized (NVML mean)")
    if "cpu_util_pct" in d:
        dash.append(f"CPU {d['cpu_util_pct']:.0f}% utilized (no NVML)")
    if "duty_cycle_pct" in d:
        dash.append(f"a kernel running {d['duty_cycle_pct']:.0f}% of the time (duty cycle)")
    if "step_p50_ns" in d:
        dash.append(f"step latency p50 {format_ns(d['step_p50_ns'])}, p99 {format_ns(d['step_p99_ns'])}")
    if "ttft_p50_ns" in d:
        dash.append(f"TTFT p50 {format_ns(d['ttft_p50_ns'])}, p99 {format_ns(d['ttft_p99_ns'])}")
    if "itl_p50_ns" in d:
        dash.append(f"ITL p50 {format_ns(d['itl_p50_ns'])}, p99 {format_ns(d['itl_p99_ns'])}")
    if "tokens_per_s" in d:
        dash.append(f"{d['tokens_per_s']:,.0f} tokens/s")
    dec = []
    lt = contrast.meta.get("tail_layer_type")
    host = contrast.meta.get("measure") == "host_api"  # Ingero: host-side API call timings, no kernels
    if lt and "tail_ratio" in x:
        what = f"host API call {lt}" if host else lt
        dec.append(f"{what} p99 = {x['tail_ratio']:.0f}× its p50 ({format_ns(x['p50_ns'])} → {format_ns(x['p99_ns'])})")
        time_of = "of host API time" if host else "of GPU time"
        dec.append(f"{x['wall_pct']:.0f}% of wall time, {x['gpu_pct']:.0f}% {time_of}, "
                   f"with {calls_fraction(x['calls_pct'])} of the calls")
    if "all_tail_ratio" in x:
        pooled = "all host API calls" if host else "all kernels"
        dec.append(f"{pooled} pooled: p99/p50 = {x['all_tail_ratio']:.1f}× (what one aggregate shows)")
    return dash, dec


def calls_fraction(pct: float) -> str:
    """42.0 -> '42%'; 11.1 -> '1/9' (a share under a third reads better as one in N)."""
    if 0 < pct < 100 / 3:
        return f"1/{round(100 / pct)}"
    return f"{pct:.0f}%"


def slow_steps(table: Table) -> str | None:
    m = table.meta
    if not m.get("dominant"):
        return None
    return (f"the slowest {m['n_slow']} of {m['n_steps']} steps (≥ {format_ns(m['threshold_ns'])}) are "
            f"dominated by {m['dominant']}; {m['grew_most']} grew the most")


def conflict_pairs(table: Table) -> str:
    most = table.meta.get("max_in_flight", 0)
    if not len(table):
        return ("No two MoE collectives were in flight together or queued back to back on one stream "
                f"(at most {most} in flight at once).")
    return f"at most {most} MoE collectives in flight at once on one device"


SENTENCES = {"slow_steps": slow_steps, "conflict_pairs": conflict_pairs}


def sentence(name: str, table: Table | None) -> str | None:
    """The line shown under table `name`, or None (no table, or nothing to say)."""
    return SENTENCES[name](table) if table is not None else None
