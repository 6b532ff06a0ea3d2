"""Fixes (analyze.fixes) -> the TOML file the engine, its bench and the demo read with ``--fixes``
(``hybridscope.engine.config.load_fixes``): an ``[engine]`` table of knobs, each under the advice
that recommends it as comments. Renders only; the values come from analyze/fixes.py."""

from __future__ import annotations

import textwrap

from hybridscope.analyze.fixes import Fix
from hybridscope.units import format_ns


def render_toml(fixes: list[Fix], header: list[str]) -> str:
    lines = [f"# {h}" for h in header]
    lines += ["#", "# Serve with: hybridscope demo --fixes FILE  |  python -m hybridscope.engine.bench --fixes FILE", ""]
    lines.append("[engine]")
    scalar = [f for f in fixes if f.knob and not isinstance(f.value, dict)]
    tables = [f for f in fixes if f.knob and isinstance(f.value, dict)]
    for f in scalar:
        lines += _comment(f) + [f"{f.knob} = {_toml_value(f.value)}", ""]
    for f in tables:
        lines += ["", f"[engine.{f.knob}]"] + _comment(f)
        lines += [f'"{k}" = {_toml_value(v)}' for k, v in f.value.items()] + [""]
    rest = [f for f in fixes if not f.knob]
    if rest:
        lines += ["", "# Advice with no engine knob (change the serving code):"]
        for f in rest:
            lines += _comment(f)
    if not fixes:
        lines += ["# No advice fired for this run: nothing to change."]
    return "\n".join(lines).rstrip() + "\n"


def _comment(f: Fix) -> list[str]:
    gain = f"at stake: {format_ns(f.at_stake_ns)}" if f.at_stake_ns is not None else "at stake: not measured"
    text = f"[{f.rule}] {f.recommendation} Evidence: {f.evidence}; {gain}."
    return [f"# {line}" for line in textwrap.wrap(text, 98)]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)
