"""The `hybridscope` command: one verb per module in `hybridscope.commands`.

A verb parses its options, calls one function (an import, an analysis), hands the result to one
renderer and prints. Errors from the `HybridscopeError` hierarchy are caught here and only here:
one line on stderr, the exit code the error carries (see `hybridscope.errors`).
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import click
import typer

from hybridscope.errors import HybridscopeError

# Verb modules, in the order `--help` lists them. Each exposes `register(app)`.
VERBS: tuple[str, ...] = (
    "demo",
    "import_",
    "runs",
    "decompose",
    "report",
    "advise",
    "export",
    "attribution",
    "query",
    "baseline",
    "check",
    "diff",
    "trace",
    "merge",
    "ranks",
)

app = typer.Typer(
    name="hybridscope",
    help="Where hybrid Mamba-Transformer-MoE inference spends its tail latency, and what to change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback(invoke_without_command=True)  # so that `hybridscope --version` reaches the callback
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from hybridscope import __version__

        typer.echo(f"hybridscope {__version__}")
        raise typer.Exit(0)


# typer >= 0.20 vendors click as `typer._click`: its usage errors are not click's own classes.
try:
    from typer._click.exceptions import ClickException as _VendoredClickException

    _USAGE_ERRORS: tuple[type[Exception], ...] = (click.exceptions.ClickException, _VendoredClickException)
except ImportError:  # an older typer raises click's classes
    _USAGE_ERRORS = (click.exceptions.ClickException,)


def _register() -> None:
    if app.registered_commands or app.registered_groups:  # once per process: main() may run many times
        return
    for name in VERBS:
        importlib.import_module(f"hybridscope.commands.{name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; exits with the documented code."""
    _register()
    from hybridscope.commands.query import sql_after_options

    argv = sql_after_options(list(sys.argv[1:] if argv is None else argv))
    try:
        with _ctrl_c_stops_duckdb():
            rv = app(args=argv, prog_name="hybridscope", standalone_mode=False)
    except HybridscopeError as e:
        _fail(e.message, e.exit_code)
    except _USAGE_ERRORS as e:  # usage errors: bad flag, missing argument
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except BrokenPipeError:  # `hybridscope query ... | head`
        sys.exit(0)
    except Exception as e:
        known = _known_failure(e)
        if known is None:
            raise
        _fail(*known)
    if rv == 130:  # typer turns a KeyboardInterrupt into this return value, silently
        _fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)


@contextlib.contextmanager
def _ctrl_c_stops_duckdb():
    """Ctrl-C interrupts the DuckDB statement running on a store (store.db.interrupt_all) and
    raises KeyboardInterrupt, instead of waiting for the statement to end."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        interrupt_all = getattr(sys.modules.get("hybridscope.store.db"), "interrupt_all", None)
        if interrupt_all is not None:  # (None while the module is still being imported)
            interrupt_all()
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


_NO_SPACE = ("No space left on device", "File too large", "Disk quota exceeded")
OUT_OF_SPACE = ("out of disk space writing the store or its temporary files: free some space and run it again "
                "(nothing was stored)")


def _known_failure(e: Exception) -> tuple[str, int] | None:
    """(one line, exit code) for failures of the machine rather than of hybridscope: Ctrl-C
    inside a DuckDB call (DuckDB raises its own interrupt error, not KeyboardInterrupt, and wraps
    the KeyboardInterrupt of a Python object it was reading, like an import's Arrow rows), a full
    disk, and DuckDB out of memory (an exact quantile cannot spill). The transaction they interrupted was rolled back: the store is as it was."""
    import errno

    text = str(e)
    from_duckdb = type(e).__module__.lstrip("_").startswith("duckdb")
    if type(e).__name__ == "InterruptException" or (isinstance(e, RuntimeError) and "interrupted" in text):
        return "interrupted", 130
    if from_duckdb and "KeyboardInterrupt" in text:  # Ctrl-C while DuckDB called back into Python (an Arrow scan)
        return "interrupted", 130
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = f" writing {e.filename}" if e.filename else ""
        return f"out of disk space{where}: free some space and run it again (nothing was stored)", 1
    if any(m in text for m in _NO_SPACE) and from_duckdb:
        return OUT_OF_SPACE, 1
    if type(e).__name__ == "OutOfMemoryException" and from_duckdb:
        used = text.splitlines()[0].partition("(")[2].rstrip(")")
        return (f"out of memory in DuckDB ({used or 'its memory limit reached'}): the run is too large for this "
                "machine's memory; nothing was stored"), 1
    return None


def _fail(message: str, code: int) -> None:
    print(f"hybridscope: error: {message}", file=sys.stderr)
    sys.exit(code)
