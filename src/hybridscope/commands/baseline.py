"""`hybridscope baseline save|list`: keep a run's per-layer-type distributions to check against."""

from __future__ import annotations

from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, WarmupOption, err, out

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


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")
