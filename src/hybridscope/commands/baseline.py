"""`hybridscope baseline save|list`: keep a run's per-layer-type distributions to check against."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, WarmupOption, err, out, wrote

baseline_app = typer.Typer(help="Save and list baselines (per-layer-type duration distributions).",
                           no_args_is_help=True)


@baseline_app.command("save")
def save(
    db: DbOption,
    name: Annotated[str, typer.Option("--name", help="Name to save the baseline under.")],
    run: Annotated[list[int] | None, typer.Option(
        "--run", help="Run id; repeat it to pool several runs of one config (default: the latest run).")] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Only this rank (default: all pooled).")] = None,
    warmup: WarmupOption = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace a baseline of the same name; pool runs that "
                                                        "measured different things.")] = False,
) -> None:
    """Keep the durations of the runs RUN per layer type, per layer and per kernel as baseline NAME,
    their warm-up left out. With several runs, `check` takes its run-to-run noise floor from them."""
    from hybridscope.analyze import warmup as warmup_mod
    from hybridscope.analyze.compare import baseline_of
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    n_warm = warmup_mod.parse(warmup)
    con = store.open_store(db, create=False)
    try:
        ids = [store.resolve_run(con, r) for r in (run or [None])]
        per, label = baseline_of(con, ids, rank=rank, warmup=n_warm, force=force)
        info = baselines.save(con, name, ids[0], per, rank=rank, force=force, label=label)
    finally:
        con.close()
    runs = f"run {ids[0]}" if len(ids) == 1 else f"{len(ids)} runs ({', '.join(map(str, ids))})"
    left = sum(w["events"] for w in per["layer_type"].info.get("warmup") or [])
    err.print(f"Saved baseline {info['name']!r} from {runs}: {info['groups']} layer types, "
              f"{info['samples']:,} samples; warm-up left out: {left:,} events"
              + ("" if len(ids) > 1 else "; one run: run-to-run noise unknown (pool several with --run A --run B)"))


@baseline_app.command("list")
def list_(db: DbOption) -> None:
    """List the baselines in a database."""
    from rich.table import Table as RichTable

    from hybridscope.store import baselines
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        rows = baselines.listing(con)
    finally:
        con.close()
    t = RichTable("name", "runs", "rank", "label", "created", "layer types", "throughput")
    for name, run_ids, rank, label, created, groups, thr, unit in rows:
        t.add_row(name, ", ".join(map(str, run_ids)), "all" if rank is None else str(rank), label or "",
                  f"{created:%Y-%m-%d %H:%M}", str(groups), f"{thr:,.1f} {unit}" if thr else "—")
    out.print(t)


@baseline_app.command("export-rules")
def export_rules(
    name: Annotated[str, typer.Argument(help="The baseline (see `baseline list`).")],
    db: DbOption,
    out_file: Annotated[Path, typer.Option("--out", help="The rules file to write (YAML).")] = Path("baseline-alerts.yml"),
    margin_text: Annotated[str, typer.Option("--margin", help="Alert above the baseline p99 plus this (at least 10%).")] = "25%",
    for_: Annotated[str, typer.Option("--for", help="How long the p99 must stay above before the alert fires.")] = "5m",
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Write Prometheus alert rules from baseline NAME: per layer type, fire when the live p99
    (hybridscope_layer_seconds, `hybridscope trace --metrics-port`) stays above the baseline's p99 plus
    --margin for --for."""
    from hybridscope.analyze.alerts import baseline_bounds
    from hybridscope.analyze.compare import margin
    from hybridscope.errors import UsageError
    from hybridscope.present.alerts import render_rules
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    if out_file.exists() and not force:
        raise UsageError(f"{out_file} exists; will not overwrite without --force")
    if not re.fullmatch(r"\d+[smh]", for_):
        raise UsageError(f"--for takes a Prometheus duration like 5m or 30s, not {for_!r}")
    m = margin(margin_text, "--margin")
    con = store.open_readonly(db)
    try:
        base = baselines.load(con, name, by="layer_type")
    finally:
        con.close()
    bounds = baseline_bounds(base.groups, margin=m, name=name)
    out_file.write_text(render_rules(bounds, for_=for_))
    for r in bounds.to_records():
        err.print(f"  {r['layer_type']:<12} p99 {r['p99_ns'] / 1e6:10.3f} ms -> alert above {r['bound_s'] * 1e3:10.3f} ms",
                  markup=False)
    wrote(out_file)


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")
