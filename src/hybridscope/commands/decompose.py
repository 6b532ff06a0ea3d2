"""`hybridscope decompose`: the per-layer-type latency table of one run."""

from __future__ import annotations

from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    FormatOption,
    RunOption,
    WaitOption,
    WarmupOption,
    check_format,
    print_table,
)

RankOption = Annotated[int | None, typer.Option("--rank", help="Only this rank (default: all ranks pooled).")]
ByOption = Annotated[str, typer.Option("--by", help="layer_type, layer (index and type), module or kernel.")]
TopOption = Annotated[int | None, typer.Option("--top", help="Keep the N groups with the most GPU time.")]


def decompose(
    db: DbOption,
    run: RunOption = None,
    rank: RankOption = None,
    by: ByOption = "layer_type",
    top: TopOption = None,
    warmup: WarmupOption = "auto",
    fmt: FormatOption = "table",
    wait: WaitOption = 5.0,
) -> None:
    """Per layer type: n, p50, p90, p99, p99.9, max, p99/p50, GPU time, % of GPU time, % of wall time.

    The first row, `all`, is the aggregate a dashboard would show; the run's warm-up is left out of
    it and shown as the last row, `warm-up` (--warmup). Definitions: docs/analyses.md.
    """
    check_format(fmt)
    from hybridscope import api
    from hybridscope.analyze import warmup as warmup_mod

    n_warm = warmup_mod.parse(warmup)
    with api.open(db, wait=wait) as store:
        table = store.analyze("decompose", run=run, by=by, rank=rank, top=top, warmup=n_warm)
    print_table(table, fmt)


def register(app: typer.Typer) -> None:
    app.command("decompose")(decompose)
