"""`hybridscope check`: compare a run with a baseline per layer type; exit 3 on a regression."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, FormatOption, RunOption, check_format, print_table, wrote


def _fraction(text: str, flag: str) -> float:
    from hybridscope.errors import UsageError

    raw = text.strip().rstrip("%")
    try:
        value = float(raw) / (100.0 if text.strip().endswith("%") else 1.0)
    except ValueError:
        raise UsageError(f"{flag} takes a percentage like 10% or a fraction like 0.1, not {text!r}") from None
    if not 0 <= value < 10:
        raise UsageError(f"{flag} must be between 0% and 1000%, not {text!r}")
    return value


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
    limits = {"p50": _fraction(max_p50, "--max-p50-regression"), "p99": _fraction(max_p99, "--max-p99-regression")}
    from hybridscope.analyze.compare import check_table, require_samples, run_samples
    from hybridscope.errors import RegressionFound
    from hybridscope.present.junit import to_junit
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    bcon = store.open_readonly(baseline_db or db)
    try:
        base = baselines.load(bcon, baseline, by=by)
    finally:
        bcon.close()
    con = store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        new = require_samples(run_samples(con, run_id, by=by, rank=rank), f"run {run_id}")
    finally:
        con.close()
    table = check_table(base, new, limits=limits, meta={
        "title": f"run {run_id} vs baseline {baseline!r} · by {by.replace('_', ' ')}", "run_id": run_id,
        "baseline": baseline})
    print_table(table, fmt)
    if junit is not None:
        junit.write_text(to_junit(table))
        wrote(junit)
    if table.meta["regressed"]:
        raise RegressionFound(f"{table.meta['regressed']} regression(s) against baseline {baseline!r}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("check")(check)
