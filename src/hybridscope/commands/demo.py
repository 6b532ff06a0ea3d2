"""`hybridscope demo`: serve requests on the built-in hybrid engine, capture it, show where the tail is."""

from __future__ import annotations

import time
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
) -> None:
    """Run the reference hybrid engine (Mamba2 + attention + MoE, expert parallel, continuous batching,
    skewed routing), capture every rank, print the decomposition beside what a dashboard shows, and
    write run.duckdb and report.html. On a 2-core CPU it takes well under a minute.
    """
    from hybridscope.capture.session import MODES
    from hybridscope.commands.report import write_report
    from hybridscope.demo import default_options, run_demo
    from hybridscope.errors import UsageError

    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    opts = default_options(device=device, ranks=ranks, requests=requests, skew=skew, mode=mode, seed=seed)
    err.print(f"[bold]hybridscope demo[/bold]: engine preset {opts.preset} on {opts.device}, "
              f"{opts.world} rank(s){' expert-parallel' if opts.world > 1 else ''}, {opts.requests} requests per rank, "
              f"routing skew {opts.skew:g} toward experts {', '.join(map(str, opts.skew_experts))}; capture mode {opts.mode}")
    t0 = time.perf_counter()
    with err.status("serving requests under capture…"):
        db, run_id = run_demo(out, opts)
    err.print(f"served and captured in {time.perf_counter() - t0:.1f} s")
    html = out / "report.html"
    write_report(db, run_id, html=html)
    err.print(f"\nOpen [bold]{html}[/bold] in a browser (it works offline). Explore the run with:\n"
              f"  hybridscope decompose --db {db} --by layer\n"
              f"  hybridscope query --db {db} \"SELECT layer_type, count(*) FROM events GROUP BY ALL\"")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
