"""`hybridscope ranks`: the per-rank view of a multi-rank run: waits, stragglers, all-to-all traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import FormatOption, RunOption, check_format, print_tables


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
    from hybridscope import api
    from hybridscope.errors import UsageError

    views = {"waits": "rank_waits", "stragglers": "stragglers", "traffic": "traffic", "load": "rank_expert_load",
             "imbalance": "imbalance_vs_wait", "collectives": "collectives"}
    chosen = list(views) if show == "all" else [show]
    if chosen == ["all"] or any(c not in views for c in chosen):
        raise UsageError(f"--show must be one of {', '.join(views)} or all, not {show!r}")
    if show == "all":
        chosen.remove("collectives")  # one row per (collective, rank): ask for it explicitly
    if (db is None) == (parquet is None):
        raise UsageError("give exactly one of --db FILE or --parquet DIR")
    with api.open(db if db is not None else parquet) as store:
        run_id = store.run_id(run)
        tables = {name: store.analyze(views[name], run=run_id) for name in chosen}
    print_tables(tables, fmt)


def register(app: typer.Typer) -> None:
    app.command("ranks")(ranks)
