"""Every analysis by name, with its options: what `hybridscope.api` (docs/api.md) runs.

An analysis is a public function of a module of analyze/ that takes `(con, run_id, ...)`, has no
other required argument and returns a `Table`; its name is the function's name and its options
are its keyword arguments. They are found by reading the modules, not kept in a list: a new
analysis is available by name as soon as it exists. A few tables come out of functions of another
shape (the gap tables, conflict pairs, advice, the report's absent tables); they are added here by hand in `_derived`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybridscope.errors import UsageError
from hybridscope.table import Table


@dataclass(frozen=True)
class Analysis:
    """One named analysis: `run(con, run_id, **options)` checks the options' names, then runs it."""

    name: str
    where: str  # module.function
    function: Callable[..., Table]
    doc: str  # the first line of its docstring
    options: dict[str, Any]  # name -> default

    def run(self, con, run_id: int, **options) -> Table:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise UsageError(f"analysis {self.name!r} has no option {', '.join(map(repr, unknown))} (options: {known})")
        return self.function(con, run_id, **options)


def _options(sig: inspect.Signature) -> dict[str, Any]:
    return {p.name: p.default for p in list(sig.parameters.values())[2:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _is_analysis(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = list(sig.parameters.values())
    if len(params) < 2 or [p.name for p in params[:2]] != ["con", "run_id"]:
        return False
    if any(p.default is p.empty and p.kind is not p.VAR_KEYWORD for p in params[2:]):
        return False
    return sig.return_annotation in (Table, "Table")


def _first_line(fn) -> str:
    return (inspect.getdoc(fn) or "").strip().split("\n\n")[0].replace("\n", " ")


@functools.cache
def catalog() -> dict[str, Analysis]:
    """name -> Analysis, sorted by name."""
    import hybridscope.analyze as package

    found: dict[str, Analysis] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "catalog":
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, fn in vars(module).items():
            if name.startswith("_") or getattr(fn, "__module__", None) != module.__name__ or not _is_analysis(fn):
                continue
            if name in found:
                raise RuntimeError(f"two analyses named {name!r}: {found[name].where} and {info.name}.{name}")
            found[name] = Analysis(name, f"{info.name}.{name}", fn, _first_line(fn),
                                   _options(inspect.signature(fn)))
    for a in _derived():
        found.setdefault(a.name, a)
    return dict(sorted(found.items()))


def _derived() -> list[Analysis]:
    from hybridscope.analyze import advice, conflicts, overlap, report

    def gap_table(part: str):
        def run(con, run_id: int, *, top: int = 10) -> Table:
            return overlap.gaps(con, run_id, top=top)[part]
        return Analysis(part, "overlap.gaps", run, f"GPU idle gaps: the {part!r} table of overlap.gaps.", {"top": 10})

    def pairs(con, run_id: int, *, back_to_back_ns: int = 2_000) -> Table:
        return conflicts.conflict_pairs(conflicts.conflicts(con, run_id, back_to_back_ns=back_to_back_ns))

    def ranked_advice(con, run_id: int, **options) -> Table:
        return report.advice_of(report.build_report(con, run_id).tables, **options)

    def absent(con, run_id: int) -> Table:
        return report.build_report(con, run_id)["absent"]

    rules = {k: v for k, v in _options(inspect.signature(advice.advice)).items() if k not in ("wall_ns", "n_ranks")}
    rules.pop("tables", None)
    return [*(gap_table(p) for p in ("gap_summary", "top_gaps", "gap_sites", "gap_histogram")),
            Analysis("conflict_pairs", "conflicts.conflict_pairs", pairs, _first_line(conflicts.conflict_pairs),
                     {"back_to_back_ns": 2_000}),
            Analysis("absent", "report.absent", absent, _first_line(report.absent), {}),
            Analysis("advice", "report.advice_of", ranked_advice,
                     "Ranked advice over every table of the report, each with its evidence and time at stake.", rules)]


def get(name: str) -> Analysis:
    """The analysis `name`; UsageError listing the names otherwise."""
    known = catalog()
    if name not in known:
        raise UsageError(f"no analysis named {name!r}; analyses: {', '.join(known)}")
    return known[name]
