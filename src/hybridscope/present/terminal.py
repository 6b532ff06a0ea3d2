"""The terminal report: a `Report` (analyze/report.py) rendered with rich. Formatting only.

Order: run header, the contrast (dashboard vs decomposition), the decomposition, the per-rank view
(runs with several ranks), steps, experts, overlap and gaps, stream conflicts, advice. Long tables
are cut to their first rows (the analyses sort them most-important first) with a note saying so.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table as RichTable
from rich.text import Text

from hybridscope.analyze.report import Report
from hybridscope.present.table import to_rich
from hybridscope.table import Table
from hybridscope.units import format_ns, format_value


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
    if lt and "tail_ratio" in x:
        dec.append(f"{lt} p99 = {x['tail_ratio']:.0f}× its p50 ({format_ns(x['p50_ns'])} → {format_ns(x['p99_ns'])})")
        dec.append(f"{x['wall_pct']:.0f}% of wall time, {x['gpu_pct']:.0f}% of GPU time, "
                   f"with {calls_fraction(x['calls_pct'])} of the calls")
    if "all_tail_ratio" in x:
        dec.append(f"all kernels pooled: p99/p50 = {x['all_tail_ratio']:.1f}× (what one aggregate shows)")
    return dash, dec


def calls_fraction(pct: float) -> str:
    """42.0 -> '42%'; 11.1 -> '1/9' (a share under a third reads better as one in N)."""
    if 0 < pct < 100 / 3:
        return f"1/{round(100 / pct)}"
    return f"{pct:.0f}%"


def render(report: Report, console: Console, *, max_rows: int = 12) -> None:
    """Print the whole report on `console`."""
    info = report.run
    ranks = info.get("ranks") or []
    console.print(Text(f"hybridscope report · run {report.run_id} · {info.get('label') or ''} · "
                       f"{info.get('source')} · {len(ranks)} rank{'s' if len(ranks) != 1 else ''} · "
                       f"{info.get('device_name') or 'device unknown'}", style="bold"))
    dash, dec = contrast_lines(report["contrast"])
    grid = RichTable.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(Panel("\n".join(dash) or "no dashboard data", title="dashboard", border_style="green"),
                 Panel("\n".join(dec) or "no GPU kernels", title="decomposition", border_style="red"))
    console.print(grid)
    for name in SECTIONS:
        table = report.get(name)
        if table is not None and len(table):
            console.print(_cut(table, max_rows))
            extra = _after(name, table)
            if extra:
                console.print(Text(extra, style="italic"))
    _advice(report["advice"], console)


# The tables the report prints, in order (each only when present and not empty).
SECTIONS: tuple[str, ...] = (
    "decompose_layer_type", "per_rank", "rank_waits", "stragglers", "traffic", "phases", "slow_steps",
    "expert_correlation", "overlap", "gap_summary", "gap_sites", "launch_bound", "conflict_pairs",
)


def _after(name: str, table: Table) -> str | None:
    if name == "slow_steps" and table.meta.get("dominant"):
        return (f"  the slowest {table.meta['n_slow']} of {table.meta['n_steps']} steps (≥ "
                f"{format_ns(table.meta['threshold_ns'])}) are dominated by {table.meta['dominant']}; "
                f"{table.meta['grew_most']} grew the most")
    if name == "conflict_pairs":
        return f"  at most {table.meta.get('max_in_flight')} MoE collectives in flight at once on one device"
    return None


def _cut(table: Table, max_rows: int):
    if len(table) <= max_rows:
        return to_rich(table)
    notes = list(table.meta.get("notes") or []) + [f"first {max_rows} of {len(table)} rows"]
    return to_rich(table.with_rows(table.rows[:max_rows], notes=notes))


def _advice(table: Table, console: Console) -> None:
    if not len(table):
        console.print(Panel("No rule fired: no recommendation has data behind it in this run.",
                            title="advice", border_style="blue"))
        return
    parts = []
    for r in table.to_records():
        stake = (f" — at stake {format_ns(r['at_stake_ns'])} ({format_value(r['at_stake_pct'], 'pct')} of wall)"
                 if r["at_stake_ns"] is not None else "")
        parts.append(Text.assemble((f"{r['rank']}. [{r['rule']}] ", "bold"), r["recommendation"], stake))
        parts.append(Text(f"   evidence: {r['evidence']}", style="dim"))
    console.print(Panel(Group(*parts), title="advice", border_style="blue"))
