"""`hybridscope diff RUN_A RUN_B`: per layer type Δp50, Δp99, Δshare, Δthroughput, with significance."""

from __future__ import annotations

from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, FormatOption, check_format, print_table


def diff(
    run_a: Annotated[int, typer.Argument(help="Run A (before).")],
    run_b: Annotated[int, typer.Argument(help="Run B (after).")],
    db: DbOption,
    by: Annotated[str, typer.Option("--by", help="layer_type, layer or kernel.")] = "layer_type",
    fmt: FormatOption = "table",
) -> None:
    """Compare two runs of one database per group, ending with the verdict line.

    Changes are B relative to A; significance from bootstrap CIs at 95 % (Bonferroni over groups).
    """
    check_format(fmt)
    from hybridscope.analyze.compare import diff_table, require_samples, run_samples
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        a_id, b_id = store.resolve_run(con, run_a), store.resolve_run(con, run_b)
        a = require_samples(run_samples(con, a_id, by=by), f"run {a_id}")
        b = require_samples(run_samples(con, b_id, by=by), f"run {b_id}")
    finally:
        con.close()
    table = diff_table(a, b, meta={"title": f"run {a_id} → run {b_id} · by {by.replace('_', ' ')}",
                                   "run_a": a_id, "run_b": b_id})
    print_table(table, fmt)  # the verdict is the table's last note


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)
