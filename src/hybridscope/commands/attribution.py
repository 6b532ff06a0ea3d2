"""`hybridscope attribution`: how much of a run's GPU time is explained, and how."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    FormatOption,
    ModelConfigOption,
    PatternOption,
    RunOption,
    check_format,
    layer_pattern,
    out,
    print_table,
)

RankOption = Annotated[int | None, typer.Option("--rank", help="Only this rank (default: all ranks pooled).")]
RulesOption = Annotated[
    Path | None,
    typer.Option("--rules", help="A kernel-name rules file (TOML, see docs/attribution.md): re-attribute the "
                 "run with these rules first (they take precedence over the built-in ones).",
                 show_default=False),
]
TopOption = Annotated[int, typer.Option("--top", help="How many unattributed kernels to list.")]
OnlyOption = Annotated[bool, typer.Option("--unattributed", help="Print only the unattributed kernels.")]


def attribution(
    db: DbOption,
    run: RunOption = None,
    rank: RankOption = None,
    rules: RulesOption = None,
    top: TopOption = 10,
    only_unattributed: OnlyOption = False,
    pattern: PatternOption = None,
    model_config: ModelConfigOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Coverage: share of GPU time attributed by scope, by CUDA-graph map, by layer sequence, by kernel name, and not at all, then the kernels with the most GPU time left `other`.

    With --rules, --pattern or --model-config the run is attributed again first (the database is
    written; the pattern is kept in the run for later attributions).

    JSON prints both tables in one object; CSV prints the coverage table, or with --unattributed the kernel list.
    """
    check_format(fmt)
    from hybridscope.analyze.coverage import coverage, unattributed
    from hybridscope.store import db as store

    layers = layer_pattern(pattern, model_config)
    again = rules is not None or layers is not None
    con = _reattributed(db, run, rules, layers) if again else store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        kernels = unattributed(con, run_id, rank=rank, top=top)
        cover = None if only_unattributed else coverage(con, run_id, rank=rank)
    finally:
        con.close()
    if cover is None:
        print_table(kernels, fmt)
    elif fmt == "json":
        _print_json(cover, kernels)
    elif fmt == "csv":
        print_table(cover, fmt)
    else:
        print_table(cover, fmt)
        out.print(f"attributed: {cover.meta['attributed_pct']:.1f}% of GPU time")
        if top and len(kernels):
            print_table(kernels, fmt)


def _reattributed(db: Path, run: int | None, rules: Path | None, layers):
    from hybridscope.attribute import attribute_run
    from hybridscope.attribute.rules import load_rules
    from hybridscope.commands._common import err
    from hybridscope.store import db as store

    if rules is not None:
        load_rules(rules)  # a bad file fails here, before the database is opened for writing
    con = store.open_store(db, create=False)
    try:
        run_id = store.resolve_run(con, run)
        with store.transaction(con):
            summary = attribute_run(con, run_id, rules_path=rules, pattern=layers)
    except BaseException:
        con.close()
        raise
    what = " and ".join(w for w in (str(rules) if rules else "", f"pattern {layers.source}" if layers else "") if w)
    err.print(f"re-attributed run {run_id} with {what}: {summary.n_gpu_events} GPU events, "
              f"{summary.n_scopes} scopes", markup=False)
    return con


def _print_json(cover, kernels) -> None:
    import sys

    import orjson

    from hybridscope.present import table as render

    doc = {"coverage": orjson.loads(render.to_json(cover)), "unattributed": orjson.loads(render.to_json(kernels))}
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("attribution")(attribution)
