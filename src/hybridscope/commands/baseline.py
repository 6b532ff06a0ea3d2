"""`hybridscope baseline save|list`: keep a run's per-layer-type distributions to check against."""

from __future__ import annotations

from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, RunOption, err, out

baseline_app = typer.Typer(help="Save and list baselines (per-layer-type duration distributions).",
                           no_args_is_help=True)


@baseline_app.command("save")
def save(
    db: DbOption,
    name: Annotated[str, typer.Option("--name", help="Name to save the baseline under.")],
    run: RunOption = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Only this rank (default: all pooled).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a baseline of the same name.")] = False,
) -> None:
    """Keep run RUN's durations per layer type, per layer and per kernel as baseline NAME."""
    from hybridscope.analyze.compare import baseline_of
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    con = store.open_store(db, create=False)
    try:
        run_id = store.resolve_run(con, run)
        per, label = baseline_of(con, run_id, rank=rank)
        info = baselines.save(con, name, run_id, per, rank=rank, force=force, label=label)
    finally:
        con.close()
    err.print(f"Saved baseline {info['name']!r} from run {info['run_id']}: "
              f"{info['groups']} layer types, {info['samples']:,} samples")


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
    t = RichTable("name", "run", "rank", "label", "created", "layer types", "throughput")
    for name, run_id, rank, label, created, groups, thr, unit in rows:
        t.add_row(name, str(run_id), "all" if rank is None else str(rank), label or "",
                  f"{created:%Y-%m-%d %H:%M}", str(groups), f"{thr:,.1f} {unit}" if thr else "—")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")
