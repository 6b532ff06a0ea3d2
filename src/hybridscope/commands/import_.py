"""`hybridscope import`: foreign traces (Kineto JSON, nsys SQLite, Ingero) into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    ModelConfigOption,
    PatternOption,
    WaitOption,
    err,
    layer_pattern,
    out,
    progress_bar,
    wrote,
)

TracesArgument = Annotated[list[Path], typer.Argument(
    help="Trace files: Kineto JSON (plain or .gz), nsys SQLite exports, Ingero databases, or folders of "
         "them (a profiler's output folder). Files of one distributed job (one per rank) become one run.",
    show_default=False)]
RulesOption = Annotated[Path | None, typer.Option(
    "--rules", help="Extra kernel-name rules (TOML) for attribution, tried before the built-in ones.")]
RankOption = Annotated[int | None, typer.Option(
    "--rank", help="Rank of the trace when it does not say (overrides distributedInfo).", min=0)]
LabelOption = Annotated[str | None, typer.Option("--label", help="Name of the new run(s); default: the file name.")]
QuietOption = Annotated[bool, typer.Option("--no-progress", help="No progress bar.")]


def import_(traces: TracesArgument, db: DbOption, rules: RulesOption = None, rank: RankOption = None,
            label: LabelOption = None, no_progress: QuietOption = False, pattern: PatternOption = None,
            model_config: ModelConfigOption = None, wait: WaitOption = 5.0) -> None:
    """Import trace files into the store, one transaction per file, then attribute their kernels.

    CUDA-graph replays are mapped to their capture when the trace holds it; otherwise, with
    --pattern or --model-config, they are cut into the model's layers (docs/attribution.md).

    A folder imports the trace files in it. A file already imported (same bytes) is reported and
    skipped; a bad file stops the import with one line, leaving the store as it was before that
    file (a store this command created is removed when nothing was imported into it).
    """
    from hybridscope.errors import UsageError
    from hybridscope.ingest import expand_paths, iter_import
    from hybridscope.store.db import open_store, remove_store

    files, not_traces = expand_paths(traces)
    if rank is not None and len(files) > 1:
        raise UsageError("--rank applies to one file; give files of several ranks without it")
    layers = layer_pattern(pattern, model_config)
    for folder, n in not_traces.items():
        err.print(f"  note: {folder}: {n} file{'s' if n != 1 else ''} that are not traces left out",
                  soft_wrap=True, markup=False)
    created = not db.exists() or db.stat().st_size == 0
    imported = 0
    con = open_store(db, wait=wait)
    try:
        for r in iter_import(con, files, rules_path=rules, rank=rank, label=label,
                             progress=None if no_progress else progress_bar, pattern=layers):
            imported += r.duplicate_of is None
            out.print(_summary(r), soft_wrap=True)
            if r.skipped:
                most = sorted(r.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
                err.print("  skipped: " + ", ".join(f"{n:,} {why}" for why, n in most), soft_wrap=True)
            for note in r.notes:
                err.print(f"  note: {note}", soft_wrap=True, markup=False)
    finally:
        con.close()
        if created and not imported:  # a failed or empty first import leaves no empty store behind
            remove_store(db)
    if imported:
        wrote(db)
    else:
        err.print(f"nothing new to import: {db} is unchanged", markup=False)


def _summary(r) -> str:
    if r.duplicate_of is not None:
        return f"{r.path}: already imported as run {r.run_id} rank {r.rank}; not imported again"
    return f"{r.path}: run {r.run_id} rank {r.rank}: {r.n_events:,} events"


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
