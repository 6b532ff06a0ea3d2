"""One error hierarchy for everything a user can get wrong, caught only in `cli.main`.

Each error carries the process exit code it maps to (documented in docs/cli.md):

    0  ok
    1  bad input: an unreadable or malformed file, a missing run, bad SQL
    2  usage: wrong flags or arguments (also what click/typer use)
    3  regression found by `hybridscope check`
    4  environment: a needed device or package is missing
  130  interrupted (Ctrl-C)

The message is one line that says what is wrong and, where it can, what to do next.
"""

from __future__ import annotations


class HybridscopeError(Exception):
    """Base class: a user-facing failure with a one-line message and an exit code."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(HybridscopeError):
    """A file, trace, database or query that cannot be used as given."""

    exit_code = 1


class StoreBusy(BadInput):
    """The store is held by another process (an import, a capture) beyond the time we wait."""


class NotFound(BadInput):
    """A run, baseline, file or table that does not exist."""


class UsageError(HybridscopeError):
    """Flags or arguments that do not fit together."""

    exit_code = 2


class RegressionFound(HybridscopeError):
    """`check` found a layer type slower than its baseline beyond the allowed margin."""

    exit_code = 3


class EnvironmentProblem(HybridscopeError):
    """Something the command needs is not on this machine (a GPU, NVML, torch, chromium)."""

    exit_code = 4
