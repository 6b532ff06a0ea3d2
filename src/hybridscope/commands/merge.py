"""`hybridscope merge`: per-rank stores (one per torchrun rank) -> one multi-rank run, clocks aligned."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, err, wrote


def merge(
    stores: Annotated[list[Path], typer.Argument(help="Per-rank stores (one rank each).", show_default=False)],
    db: DbOption,
    label: Annotated[str | None, typer.Option("--label", help="Name of the merged run.")] = None,
    align: Annotated[str, typer.Option("--align", help="auto (across hosts only), always, or never.")] = "auto",
) -> None:
    """Merge the runs of per-rank stores into one run of --db, one rank each.

    Ranks of one host share a clock; across hosts (or with --align always) each rank is shifted
    so that collectives complete together, and the residual skew is reported.
    """
    from hybridscope.analyze.collectives import clock_offsets
    from hybridscope.errors import UsageError
    from hybridscope.store import db as store
    from hybridscope.store import merge as m

    if align not in ("auto", "always", "never"):
        raise UsageError(f"--align must be auto, always or never, not {align!r}")
    if len(stores) < 2:
        raise UsageError("merge takes two or more per-rank stores")
    sources = [m.inspect(p) for p in stores]
    con = store.open_store(db)
    try:
        run_id = m.merge(con, sources, label=label)
        hosts = {s.host for s in sources}
        if align == "always" or (align == "auto" and len(hosts) > 1):
            offsets = clock_offsets(con, run_id)
            if not offsets:
                err.print("note: no collectives matched across ranks: clocks left as recorded")
            with store.transaction(con):
                for rank, (off, _) in offsets.items():
                    if off:
                        m.shift_rank(con, run_id, rank, off)
            for rank, (off, skew) in sorted(offsets.items()):
                err.print(f"rank {rank}: shifted {off:+,} ns, residual skew {skew:,.0f} ns")
    finally:
        con.close()
    err.print(f"Merged {len(sources)} ranks into run {run_id}")
    wrote(db)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
