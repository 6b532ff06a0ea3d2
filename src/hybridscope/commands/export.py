"""`hybridscope export`: a run as a Chrome/Perfetto trace, one track per layer type and stream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, RunOption, wrote

PerfettoOption = Annotated[
    Path, typer.Option("--perfetto", help="Write a Chrome trace-event JSON file (.json, or .json.gz) for ui.perfetto.dev.")
]


def export(db: DbOption, perfetto: PerfettoOption, run: RunOption = None) -> None:
    """Write a run's GPU kernels as a trace for the Perfetto UI: a process per rank, a track per
    layer type and stream, a steps track; each kernel named as recorded, with its layer index,
    module, step and phase in args. Layout: docs/report.md.
    """
    import gzip

    from hybridscope.analyze import timeline
    from hybridscope.analyze.report import run_info
    from hybridscope.commands.report import write_bytes
    from hybridscope.present import perfetto as renderer
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        kernels = timeline.kernels(con, run_id)
        steps = timeline.step_windows(con, run_id)
        windows = timeline.rank_windows(con, run_id)
        info = run_info(con, run_id)
    finally:
        con.close()
    t0 = min((lo for lo, _ in windows.values()), default=0)
    data = renderer.to_json(renderer.trace_events(kernels, steps, t0, info))
    write_bytes(perfetto, gzip.compress(data, 6) if perfetto.name.endswith(".gz") else data)
    wrote(perfetto)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
