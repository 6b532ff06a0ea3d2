"""`hybridscope check`: compare a run with a baseline per layer type; exit 3 on a regression."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    FormatOption,
    RunOption,
    WarmupOption,
    check_format,
    print_table,
    wrote,
)


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
    warmup: WarmupOption = "auto",
    force: Annotated[bool, typer.Option("--force", help="Compare although measure, device or model differ.")] = False,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="A group of the baseline absent from the run does not fail.")] = False,
    fmt: FormatOption = "table",
) -> int:
    """Per layer type: is p50/p99 slower than the baseline beyond the margin, with confidence?

    The count of the run's samples above the baseline's quantile must be significantly high
    (Bonferroni-corrected), the quantile ratio must exceed the margin and, against a baseline of
    several runs, the run-to-run noise (docs/analyses.md, "compare"). Warm-up is left out of the
    run (--warmup). Runs of another measure, device or model are refused (exit 1) unless --force.
    Exit 0: no regression; exit 3: regression found, or a baseline group missing from the run.
    """
    check_format(fmt)
    from hybridscope.analyze import warmup as warmup_mod
    from hybridscope.analyze.compare import check_run, margin
    from hybridscope.errors import RegressionFound
    from hybridscope.present.junit import to_junit
    from hybridscope.store import baselines
    from hybridscope.store import db as store

    n_warm = warmup_mod.parse(warmup)
    limits = {"p50": margin(max_p50, "--max-p50-regression"), "p99": margin(max_p99, "--max-p99-regression")}
    bcon = store.open_readonly(baseline_db or db)
    try:
        base = baselines.load(bcon, baseline, by=by)
    finally:
        bcon.close()
    con = store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        table = check_run(con, run_id, base, limits=limits, by=by, rank=rank, warmup=n_warm, force=force,
                          allow_missing=allow_missing, baseline=f"baseline {baseline!r}", meta={
            "title": f"run {run_id} vs baseline {baseline!r} · by {by.replace('_', ' ')}", "run_id": run_id,
            "baseline": baseline})
    finally:
        con.close()
    print_table(table, fmt)
    if junit is not None:
        junit.write_text(to_junit(table))
        wrote(junit)
    if table.meta["failed"]:
        missing = "" if allow_missing or not table.meta["missing"] else \
            f", {len(table.meta['missing'])} group(s) missing from the run"
        raise RegressionFound(f"{table.meta['regressed']} regression(s){missing} against baseline {baseline!r}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("check")(check)
