"""`hybridscope check`: compare a run with a baseline per layer type; exit 3 on a regression."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, FormatOption, RunOption, check_format, print_table, wrote


def check(
    db: DbOption,
    baseline: Annotated[str, typer.Option("--baseline", help="Baseline name (see `baseline list`).")],
    run: RunOption = None,
    baseline_db: Annotated[Path | None, typer.Option("--baseline-db", help="Database holding the baseline (default: --db).")] = None,
    max_p99: Annotated[str, typer.Option("--max-p99-regression", help="Allowed p99 regression.")] = "10%",
    max_p50: Annotated[str, typer.Option("--max-p50-regression", help="Allowed p50 regression.")] = "5%",
    by: Annotated[str, typer.Option("--by", help="layer_type, layer or kernel.")] = "layer_type",
    rank: Annotated[int | None, typer.Option("--rank", help="Only this rank of the run.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here for CI.")] = None,
    fmt: FormatOption = "table",
) -> int:
    """Per layer type: is p50/p99 slower than the baseline beyond the margin, with confidence?

    A bootstrap confidence interval of each quantile ratio (Bonferroni-corrected) must lie above 1
    and the ratio must exceed the margin (docs/analyses.md, "compare"). Exit 0: no regression;
    exit 3: regression found.
    """
    check_format(fmt)
    from hybridscope.analyze.compare import check_run, margin
    from hybridscope.errors import RegressionFound
    from hybridscope.present.junit import to_junit
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    limits = {"p50": margin(max_p50, "--max-p50-regression"), "p99": margin(max_p99, "--max-p99-regression")}
    bcon = store.open_readonly(baseline_db or db)
    try:
        base = baselines.load(bcon, baseline, by=by)
    finally:
        bcon.close()
    con = store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        table = check_run(con, run_id, base, limits=limits, by=by, rank=rank, meta={
            "title": f"run {run_id} vs baseline {baseline!r} · by {by.replace('_', ' ')}", "run_id": run_id,
            "baseline": baseline})
    finally:
        con.close()
    print_table(table, fmt)
    if junit is not None:
        junit.write_text(to_junit(table))
        wrote(junit)
    if table.meta["regressed"]:
        raise RegressionFound(f"{table.meta['regressed']} regression(s) against baseline {baseline!r}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("check")(check)
