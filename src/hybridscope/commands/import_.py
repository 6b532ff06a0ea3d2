"""`hybridscope import`: foreign traces (Kineto JSON, nsys SQLite, Ingero) into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    ModelConfigOption,
    PatternOption,
    err,
    layer_pattern,
    out,
    progress_bar,
    wrote,
)

TracesArgument = Annotated[list[Path], typer.Argument(
    help="Trace files: Kineto JSON (plain or .gz), nsys SQLite exports, Ingero databases. "
         "Files of one distributed job (one per rank) become one run.", show_default=False)]
RulesOption = Annotated[Path | None, typer.Option(
    "--rules", help="Extra kernel-name rules (TOML) for attribution, tried before the built-in ones.")]
RankOption = Annotated[int | None, typer.Option(
    "--rank", help="Rank of the trace when it does not say (overrides distributedInfo).", min=0)]
LabelOption = Annotated[str | None, typer.Option("--label", help="Name of the new run(s); default: the file name.")]
QuietOption = Annotated[bool, typer.Option("--no-progress", help="No progress bar.")]


def import_(traces: TracesArgument, db: DbOption, rules: RulesOption = None, rank: RankOption = None,
            label: LabelOption = None, no_progress: QuietOption = False, pattern: PatternOption = None,
            model_config: ModelConfigOption = None) -> None:
    """Import trace files into the store, one transaction per file, then attribute their kernels.

    CUDA-graph replays are mapped to their capture when the trace holds it; otherwise, with
    --pattern or --model-config, they are cut into the model's layers (docs/attribution.md).

    A file already imported (same bytes) is reported and skipped; a bad file stops the import
    with one line, leaving the store as it was before that file.
    """
    from hybridscope.errors import UsageError
    from hybridscope.ingest import iter_import
    from hybridscope.store.db import open_store

    if rank is not None and len(traces) > 1:
        raise UsageError("--rank applies to one file; give files of several ranks without it")
    layers = layer_pattern(pattern, model_config)
    con = open_store(db)
    try:
        for r in iter_import(con, traces, rules_path=rules, rank=rank, label=label,
                             progress=None if no_progress else progress_bar, pattern=layers):
            out.print(_summary(r), soft_wrap=True)
            if r.skipped:
                most = sorted(r.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
                err.print("  skipped: " + ", ".join(f"{n:,} {why}" for why, n in most), soft_wrap=True)
            for note in r.notes:
                err.print(f"  note: {note}", soft_wrap=True, markup=False)
    finally:
        con.close()
    wrote(db)


def _summary(r) -> str:
    if r.duplicate_of is not None:
        return f"{r.path}: already imported as run {r.run_id} rank {r.rank}; not imported again"
    return f"{r.path}: run {r.run_id} rank {r.rank}: {r.n_events:,} events"


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
