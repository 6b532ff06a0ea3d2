"""Options and console helpers shared by every verb."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DbOption = Annotated[Path, typer.Option("--db", help="The hybridscope DuckDB file.", show_default=False)]
RunOption = Annotated[
    int | None, typer.Option("--run", help="Run id (see `hybridscope runs`); default: the latest run.")
]
WaitOption = Annotated[float, typer.Option(
    "--wait", help="Seconds to wait for a store another process holds (an import, a capture) before giving up.",
    min=0)]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table, json or csv.")]
WarmupOption = Annotated[str, typer.Option(
    "--warmup", help="Warm-up to leave out: auto (the rule of docs/analyses.md), N first steps per rank, or 0 (keep all).")]
PatternOption = Annotated[str | None, typer.Option(
    "--pattern", help="The model's layers in Nemotron notation (M mamba, * attention, E MoE, - MLP, P parallel), "
    "one character a layer: CUDA-graph replays without a captured map are cut into these layers "
    "(docs/attribution.md).", show_default=False)]
ModelConfigOption = Annotated[Path | None, typer.Option(
    "--model-config", help="A Hugging Face config.json to read the layer pattern from (hybrid_override_pattern, "
    "layers_block_type, layer_types, ...), instead of --pattern.", show_default=False)]

FORMATS = ("table", "json", "csv")

# Tables and progress go to stdout (tables are the product) or stderr (progress, notes), so that
# `--format csv > file` stays clean.
out = Console(highlight=False, soft_wrap=False)
# notes are not cut at the console width: in a log (no terminal: 80 columns) a long path would be
# broken across lines
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(label: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
    """The CLI's progress reporter for imports (`ingest._common.Progress`): a transient bar on
    stderr for one file, `unit` 'bytes' or 'rows'; yields advance(done)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    with Progress(TextColumn("{task.description}"), BarColumn(), amount, TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(f"importing {label}", total=total)
        yield lambda done: bar.update(task, completed=done)


def layer_pattern(pattern: str | None, model_config: Path | None):
    """The LayerPattern of --pattern or --model-config (None without either); UsageError for both."""
    from hybridscope.attribute.pattern import load_model_config, parse_pattern
    from hybridscope.errors import UsageError

    if pattern is not None and model_config is not None:
        raise UsageError("give --pattern or --model-config, not both")
    if model_config is not None:
        return load_model_config(model_config)
    return parse_pattern(pattern) if pattern is not None else None


def wrote(path: Path | str) -> None:
    """Every verb that writes a file ends with this line (the path verbatim: no markup)."""
    err.print(f"Wrote {path}", markup=False)


def check_format(fmt: str) -> str:
    from hybridscope.errors import UsageError

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def table_width() -> int:
    """Columns for tables when stdout is not a terminal: $COLUMNS when set (`COLUMNS=80 hybridscope
    decompose ... > out.txt`), else 240 (a file or a pipe has no width to squeeze the columns into)."""
    import os

    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) >= 20 else 240


def stdout_console() -> Console:
    """Where panels and reports go: the terminal as it is, or, piped or captured, a console as wide
    as `table_width` (no terminal width to squeeze them into, as print_table does for tables)."""
    return out if out.is_terminal else Console(width=table_width(), highlight=False, soft_wrap=False)


def print_table(table, fmt: str) -> None:
    """Print an analysis `Table` on stdout: a rich table, or the JSON/CSV text exactly as rendered."""
    import sys

    from hybridscope.present import table as render

    if fmt == "table" and out.is_terminal:
        out.print(render.to_rich(table, width=out.width))
    elif fmt == "table":
        sys.stdout.write(render.to_text(table, width=table_width()))
        sys.stdout.flush()
    else:
        sys.stdout.write(render.render(table, check_format(fmt)))
        sys.stdout.flush()


def print_tables(tables: dict, fmt: str) -> None:
    """Several tables of one verb: one after another in a terminal, one JSON object keyed by `tables`'
    names, and for CSV (one table a file) the one table there is, else a usage error."""
    import sys

    import orjson

    from hybridscope.errors import UsageError
    from hybridscope.present import table as render

    if fmt == "json":
        doc = {name: orjson.loads(render.to_json(t)) for name, t in tables.items()}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        sys.stdout.flush()
    elif fmt == "csv" and len(tables) > 1:
        raise UsageError(f"--format csv holds one table; this prints {len(tables)} "
                         f"({', '.join(tables)}): choose one")
    else:
        for t in tables.values():
            print_table(t, fmt)


def keep_freed_memory() -> None:
    """For `report`, which streams the kernels through numpy and Arrow a chunk at a time: glibc
    hands each chunk's freed buffers back to the OS and faults fresh pages in for the next (1.6M
    page faults, 3.4 s of system time in a report of 10M kernels). Buffers up to 256 MiB now come
    from the heap, and up to 1 GiB of freed heap is kept for the next chunk (mallopt): 0.35 s less
    system time and the report 0.15-0.3 s faster at 10M kernels, the peak RSS within 1 %
    (docs/benchmarks.md, "Scale"). Not for verbs that run a workload or stay up (trace, follow,
    serve): a long-lived process should give memory back. A no-op without glibc's mallopt."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):  # no mallopt (macOS, musl before 1.2)
        return
    mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
