"""`hybridscope diff RUN_A RUN_B`: per layer type Δp50, Δp99, Δshare, Δthroughput, with significance."""

from __future__ import annotations

from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, FormatOption, WarmupOption, check_format, print_table


def diff(
    run_a: Annotated[int, typer.Argument(help="Run A (before).")],
    run_b: Annotated[int, typer.Argument(help="Run B (after).")],
    db: DbOption,
    by: Annotated[str, typer.Option("--by", help="layer_type, layer or kernel.")] = "layer_type",
    warmup: WarmupOption = "auto",
    force: Annotated[bool, typer.Option("--force", help="Compare although measure, device or model differ.")] = False,
    fmt: FormatOption = "table",
) -> None:
    """Compare two runs of one database per group, ending with the verdict line.

    Changes are B relative to A; significance from bootstrap CIs of whole steps at 95 % (Bonferroni
    over groups). Warm-up is left out of both (--warmup). Runs of another measure, device or model
    are refused (exit 1) unless --force.
    """
    check_format(fmt)
    from hybridscope.analyze import warmup as warmup_mod
    from hybridscope.analyze.compare import diff_table, require_samples, run_samples
    from hybridscope.analyze.likeness import require_like
    from hybridscope.store import db as store

    n_warm = warmup_mod.parse(warmup)
    con = store.open_readonly(db)
    try:
        a_id, b_id = store.resolve_run(con, run_a), store.resolve_run(con, run_b)
        a = require_samples(run_samples(con, a_id, by=by, warmup=n_warm), f"run {a_id}")
        b = require_samples(run_samples(con, b_id, by=by, warmup=n_warm), f"run {b_id}")
    finally:
        con.close()
    notes = require_like(a.info, b.info, what_a=f"run {a_id}", what_b=f"run {b_id}", force=force)
    table = diff_table(a, b, notes=notes, meta={"title": f"run {a_id} → run {b_id} · by {by.replace('_', ' ')}",
                                                "by": by, "run_a": a_id, "run_b": b_id})
    print_table(table, fmt)  # the verdict is the table's last note


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)
