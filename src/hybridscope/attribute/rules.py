"""Kernel-name rules (rules.toml, plus a user's `--rules FILE`): name -> layer type.

A rule file is TOML with an array of tables `[[rule]]`, each with `pattern` (Python regex,
searched), `layer_type` (vocabulary), and optional `collective` (bool), `kinds` (list of event
kinds) and `note`. User rules are tried before the built-in ones; the first match wins.

Names are classified once per distinct (name, kind) in Python and joined back in SQL, so the cost
grows with the number of distinct kernel names (thousands), not of events (millions).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hybridscope.attribute.vocab import LAYER_TYPES
from hybridscope.errors import BadInput
from hybridscope.store.db import GPU_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the GPU machine's older Pythons
    import tomli as tomllib

_KINDS = GPU_KINDS
_KEYS = {"pattern", "layer_type", "collective", "kinds", "note"}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    layer_type: str
    collective: bool = False
    kinds: tuple[str, ...] = _KINDS
    origin: str = "builtin"


@dataclass(frozen=True)
class NameMatch:
    layer_type: str
    collective: bool
    rule: int  # position in the combined list, user rules first


def builtin_rules() -> list[Rule]:
    text = resources.files("hybridscope.attribute").joinpath("rules.toml").read_text()
    return parse_rules(text, "builtin rules.toml")


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """The user's rules (if any) followed by the built-in ones. BadInput for a bad file."""
    rules = builtin_rules()
    if path is None:
        return rules
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read rules file {path}: {e.__class__.__name__}: {e}") from None
    return parse_rules(text, str(path)) + rules


def parse_rules(text: str, origin: str) -> list[Rule]:
    """Parse and check a rules document; every mistake is one BadInput line naming the rule."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{origin} is not valid TOML: {e}") from None
    entries = doc.get("rule")
    extra = set(doc) - {"rule"}
    if extra:
        raise BadInput(f"{origin}: unknown top-level key(s) {sorted(extra)}; expected [[rule]] tables")
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{origin}: no [[rule]] tables (each needs pattern and layer_type)")
    return [_parse_one(entry, f"{origin} rule {i + 1}", origin) for i, entry in enumerate(entries)]


def _parse_one(entry: object, where: str, origin: str) -> Rule:
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: expected a table with pattern and layer_type")
    unknown = set(entry) - _KEYS
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    pattern, layer_type = entry.get("pattern"), entry.get("layer_type")
    if not isinstance(pattern, str) or not pattern:
        raise BadInput(f"{where}: `pattern` must be a non-empty string")
    if layer_type not in LAYER_TYPES:
        raise BadInput(f"{where}: layer_type {layer_type!r} is not one of {', '.join(LAYER_TYPES)}")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise BadInput(f"{where}: bad regular expression {pattern!r}: {e}") from None
    collective = entry.get("collective", False)
    if not isinstance(collective, bool):
        raise BadInput(f"{where}: `collective` must be true or false")
    kinds = entry.get("kinds", list(_KINDS))
    if not isinstance(kinds, list) or not kinds or any(k not in _KINDS for k in kinds):
        raise BadInput(f"{where}: `kinds` must be a list drawn from {', '.join(_KINDS)}")
    return Rule(compiled, layer_type, collective, tuple(kinds), origin)


def match_name(rules: Sequence[Rule], name: str, kind: str = "kernel") -> NameMatch | None:
    """The first rule matching `name` for an event of `kind`, or None."""
    for i, rule in enumerate(rules):
        if kind in rule.kinds and rule.pattern.search(name):
            return NameMatch(rule.layer_type, rule.collective, i)
    return None


def match_table(rules: Sequence[Rule], pairs: Iterable[tuple[str, str]]) -> dict[str, list]:
    """Columns (name, kind, rule_type, collective, rule) for distinct (name, kind) pairs."""
    cols: dict[str, list] = {"name": [], "kind": [], "rule_type": [], "collective": [], "rule": []}
    for name, kind in pairs:
        hit = match_name(rules, name, kind)
        cols["name"].append(name)
        cols["kind"].append(kind)
        cols["rule_type"].append(hit.layer_type if hit else None)
        cols["collective"].append(bool(hit and hit.collective))
        cols["rule"].append(hit.rule if hit else -1)
    return cols
