"""`hybridscope demo`: serve requests on the built-in hybrid engine, capture it, show where the tail is."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import err


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for run.duckdb and report.html.")] = Path("."),
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when there is a GPU).")] = None,
    ranks: Annotated[int | None, typer.Option("--ranks", help="Expert-parallel ranks (default: 2 on CPU, 2 with 2+ GPUs, else 1).")] = None,
    requests: Annotated[int | None, typer.Option("--requests", help="Requests per rank.")] = None,
    skew: Annotated[float, typer.Option("--skew", help="Routing skew toward experts 0 and 1, in logit std units (0 = balanced).")] = 2.0,
    mode: Annotated[str, typer.Option("--mode", help="Capture mode: layers (light) or kernels (deep).")] = "layers",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model and the requests.")] = 0,
    workload: Annotated[str, typer.Option(
        "--workload", help="decode (requests over time, skewed every step) or hotspots (compute-bound prefill, "
        "skewed in 30% of the steps: the engine fixes' A/B workload).")] = "decode",
    fixes: Annotated[Path | None, typer.Option(
        "--fixes", help="Engine fixes to serve with (a TOML file from `hybridscope advise --emit`).")] = None,
) -> None:
    """Run the reference hybrid engine (Mamba2 + attention + MoE, expert parallel, continuous batching,
    skewed routing), capture every rank, print the decomposition beside what a dashboard shows, and
    write run.duckdb and report.html. On a 2-core CPU it takes well under a minute.
    """
    from hybridscope.commands.report import write_report
    from hybridscope.demo import default_options, run_demo
    from hybridscope.errors import UsageError
    from hybridscope.live.session import MODES

    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    opts = default_options(device=device, ranks=ranks, requests=requests, skew=skew, mode=mode, seed=seed,
                           workload=workload)
    if fixes is not None:
        opts = replace(opts, overrides={**opts.overrides, **read_fixes(fixes)})
    err.print(f"[bold]hybridscope demo[/bold]: engine preset {opts.preset} on {opts.device}, "
              f"{opts.world} rank(s){' expert-parallel' if opts.world > 1 else ''}, {opts.requests} requests per rank, "
              f"routing skew {opts.skew:g} toward experts {', '.join(map(str, opts.skew_experts))}"
              f"{'' if opts.burst >= 1 else f' in {100 * opts.burst:g}% of the steps'}; capture mode {opts.mode}")
    t0 = time.perf_counter()
    with err.status("serving requests under capture…"):
        db, run_id = run_demo(out, opts)
    err.print(f"served and captured in {time.perf_counter() - t0:.1f} s")
    if fixes is not None:
        err.print(f"engine fixes from {fixes}: {fixes_line(db, run_id)}", markup=False)
    html = out / "report.html"
    write_report(db, run_id, html=html)
    err.print(f"\nOpen [bold]{html}[/bold] in a browser (it works offline). Explore the run with:\n"
              f"  hybridscope decompose --db {db} --by layer\n"
              f"  hybridscope query --db {db} \"SELECT layer_type, count(*) FROM events GROUP BY ALL\"")


def read_fixes(path: Path) -> dict:
    """The fixes file as EngineConfig overrides; an unreadable or wrong file is a user error."""
    from hybridscope.engine.config import load_fixes
    from hybridscope.errors import BadInput

    try:
        return load_fixes(path)
    except ValueError as e:
        raise BadInput(str(e)) from None


def fixes_line(db: Path, run_id: int) -> str:
    """One line: the knobs the run served with and the share of routed rows the routing fix moved."""
    import json

    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        (notes,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    finally:
        con.close()
    engine = json.loads(notes or "{}").get("engine", {})
    knobs = ", ".join(f"{k}={v}" for k, v in engine.get("overrides", {}).items())
    share = engine.get("rerouted_share")
    moved = f"; re-routed {100 * share:.2f}% of (token, expert) rows" if share is not None else ""
    return f"{knobs or 'none'}{moved}"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
