"""`hybridscope export`: a run as a Perfetto trace (a track per layer type) and/or as per-rank Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, RunOption, wrote

PerfettoOption = Annotated[
    Path | None,
    typer.Option("--perfetto", help="Write a Chrome trace-event JSON file (.json, or .json.gz) for ui.perfetto.dev."),
]
ParquetOption = Annotated[
    Path | None,
    typer.Option("--parquet", help="Write the run's tables as Parquet under this folder, one file per rank "
                                   "(read back with `ranks --parquet`, or by any SQL engine)."),
]


def export(db: DbOption, perfetto: PerfettoOption = None, parquet: ParquetOption = None, run: RunOption = None) -> None:
    """Write a run as a trace for the Perfetto UI — a process per rank, a track per layer type and
    stream, a steps track, each kernel with its layer index, module, step and phase in args — and/or
    as Hive-partitioned Parquet (DIR/<table>/run_id=N/rank=R/). Layouts: docs/report.md, docs/cli.md.
    """
    from hybridscope.errors import UsageError
    from hybridscope.store import db as store

    if perfetto is None and parquet is None:
        raise UsageError("say what to write: --perfetto FILE and/or --parquet DIR")
    con = store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        if perfetto is not None:
            _perfetto(con, run_id, perfetto)
        if parquet is not None:
            from hybridscope.store import parquet as pq

            for folder in pq.export_run(con, run_id, parquet):
                wrote(folder)
    finally:
        con.close()


def _perfetto(con, run_id: int, path: Path) -> None:
    import gzip

    from hybridscope.analyze import timeline
    from hybridscope.analyze.report import run_info
    from hybridscope.commands.report import write_bytes
    from hybridscope.present import perfetto as renderer

    kernels = timeline.kernels(con, run_id)
    steps = timeline.step_windows(con, run_id)
    windows = timeline.rank_windows(con, run_id)
    info = run_info(con, run_id)
    t0 = min((lo for lo, _ in windows.values()), default=0)
    layers = timeline.layer_timings(con, run_id)
    data = renderer.to_json(renderer.trace_events(kernels, steps, t0, info, layers))
    write_bytes(path, gzip.compress(data, 6) if path.name.endswith(".gz") else data)
    wrote(path)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
