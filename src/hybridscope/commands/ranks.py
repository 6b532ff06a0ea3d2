"""`hybridscope ranks`: the per-rank view of a multi-rank run: waits, stragglers, all-to-all traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import FormatOption, RunOption, check_format, print_table


def ranks(
    db: Annotated[Path | None, typer.Option("--db", help="The hybridscope DuckDB file.", show_default=False)] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="A Parquet set (`hybridscope export --parquet`) instead of --db.")] = None,
    run: RunOption = None,
    show: Annotated[str, typer.Option("--show", help="waits, stragglers, traffic, load, imbalance, collectives or all.")] = "all",
    fmt: FormatOption = "table",
) -> None:
    """Per rank: time in collectives and waiting for peers; per step: the straggler; rank x rank bytes;
    the tokens per expert behind each rank's traffic; whether routing imbalance tracks the waits.

    Definitions: docs/analyses.md, "collectives". With --parquet the same analyses run as SQL over
    the per-rank files, streamed, never loaded whole.
    """
    check_format(fmt)
    from hybridscope.analyze import collectives as col
    from hybridscope.errors import UsageError
    from hybridscope.store import db as store
    from hybridscope.store import parquet as pq

    views = {"waits": col.rank_waits, "stragglers": col.stragglers, "traffic": col.traffic,
             "load": col.rank_expert_load, "imbalance": col.imbalance_vs_wait, "collectives": col.collectives}
    chosen = list(views) if show == "all" else [show]
    if chosen == ["all"] or any(c not in views for c in chosen):
        raise UsageError(f"--show must be one of {', '.join(views)} or all, not {show!r}")
    if show == "all":
        chosen.remove("collectives")  # one row per (collective, rank): ask for it explicitly
    if (db is None) == (parquet is None):
        raise UsageError("give exactly one of --db FILE or --parquet DIR")
    con = store.open_readonly(db) if db is not None else pq.open_set(parquet)
    try:
        run_id = store.resolve_run(con, run)
        tables = [views[name](con, run_id) for name in chosen]
    finally:
        con.close()
    for t in tables:
        print_table(t, fmt)


def register(app: typer.Typer) -> None:
    app.command("ranks")(ranks)
