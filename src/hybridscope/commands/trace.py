"""`hybridscope trace`: run a Python script in this process with capture armed on its model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, err, wrote

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'60s', '2m', '500ms', '1h' or plain seconds -> seconds. UsageError otherwise."""
    from hybridscope.errors import UsageError

    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise UsageError(f"--duration takes a positive time like 60s, 2m or 500ms, not {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def split_command(command: list[str]) -> tuple[str, str, list[str]]:
    """`python script.py ARGS`, `script.py ARGS` or `python -m pkg.mod ARGS` -> ('path' | 'module',
    target, ARGS), run in this process; any other command (`torchrun ...`, `python -c ...`, a shell
    script) -> ('command', program, ARGS), run as a child. UsageError / NotFound for what cannot run."""
    from hybridscope.errors import NotFound, UsageError

    words = list(command or [])
    if not words or (re.fullmatch(r"(.*/)?python[0-9.]*", words[0]) and len(words) == 1):
        raise UsageError("give the script to run after `--`: hybridscope trace --db run.duckdb -- python script.py ARGS")
    if not re.fullmatch(r"(.*/)?python[0-9.]*", words[0]):
        if words[0].endswith(".py"):
            return _script(words[0], words[1:])
        if shutil.which(words[0]) is None:
            raise NotFound(f"no such command: {words[0]}")
        return "command", words[0], words[1:]
    if words[1] == "-m":
        if len(words) < 3:
            raise UsageError("`python -m` needs a module name")
        return "module", words[2], words[3:]
    if words[1].startswith("-"):  # other interpreter options: that Python, as a child
        return "command", words[0], words[1:]
    return _script(words[1], words[2:])


def _script(path: str, args: list[str]) -> tuple[str, str, list[str]]:
    from hybridscope.errors import NotFound

    if not Path(path).is_file():
        raise NotFound(f"no such script: {path}")
    return "path", path, args


def trace(
    db: DbOption,
    command: Annotated[list[str] | None, typer.Argument(
        help="The script and its arguments, after `--`: -- python script.py ARGS", show_default=False)] = None,
    mode: Annotated[str, typer.Option("--mode", help="layers (light, stays on) or kernels (deep).")] = "layers",
    duration: Annotated[str | None, typer.Option("--duration", help="Stop capturing after this long: 60s, 2m.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Stop capturing after N steps.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The model: a global of the script (model, runner.model) or a class name. "
        "Default: the first hybrid model the script runs.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Name of the run (default: the model class).")] = None,
    sample_every: Annotated[int | None, typer.Option(
        "--sample-every", help="Record the first --sample-steps steps of every N in full (hooks, layer "
        "times, routing; kernels mode: the profiler), the others only timed. Default: layers 8, kernels 64; "
        "1 records every step.")] = None,
    sample_steps: Annotated[int | None, typer.Option(
        "--sample-steps", help="Steps recorded per N. Default: layers 1, kernels 2.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve live per-layer-type metrics for Prometheus: each process that runs a "
        "model on its own port from this one up (docs/capture.md, 'Watch it live').")] = None,
    metrics_host: Annotated[str, typer.Option(
        "--metrics-host", help="Address the metrics endpoints bind to.")] = "127.0.0.1",
) -> int:
    """Run a workload with capture armed in every Python process of it; one run lands in --db.

    A Python script runs in this process; any other command (torchrun, vllm serve, ...) as a child.
    Every Python process started below arms capture itself, finds its model and writes its part;
    the parts are merged into one run, a rank per process that ran a model (docs/capture.md).

    Example: hybridscope trace --steps 64 --db run.duckdb -- python serve.py --batch 8
    """
    from hybridscope.errors import UsageError
    from hybridscope.live.script import run_traced

    if duration is not None and steps is not None:
        raise UsageError("give --duration or --steps, not both")
    seconds = parse_duration(duration) if duration is not None else None
    kind, target, args = split_command(command)
    if metrics_port is not None and not 0 < metrics_port < 65536:
        raise UsageError(f"--metrics-port must be a TCP port (1-65535), not {metrics_port}")
    code, result = run_traced(kind, target, args, db=db, mode=mode, duration=seconds, steps=steps,
                              model=model, label=label, sample_every=sample_every, sample_steps=sample_steps,
                              metrics_port=metrics_port, metrics_host=metrics_host)
    for line in result.lines(mode):
        err.print(line, markup=False)
    if result.run_id is None:
        err.print("hybridscope: no run was written: " + "; ".join(result.notes), markup=False)
        return code  # said on stderr; the exit code stays the script's own
    wrote(result.db)
    return code


def register(app: typer.Typer) -> None:
    app.command("trace", context_settings={"allow_interspersed_args": False})(trace)
