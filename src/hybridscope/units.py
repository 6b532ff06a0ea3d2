"""How a person reads a value of each column kind (`hybridscope.table`): the ground floor's unit formatting.

Shared by the analyses that write sentences (advice) and every renderer (present/), so both say
'12.3 µs' the same way. 'ns' is scaled per value to ns / µs / ms / s with three significant digits,
'pct' gets %, 'ratio' ×, 'int' thousands separators, None (and NaN) '-'.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "-"


def format_value(value: Any, kind: str) -> str:
    """One cell as a person reads it (see the module doc for each kind)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if kind == "ns":
        return format_ns(value)
    if kind == "pct":
        return f"{value:.2f}%" if abs(value) < 1 else f"{value:.1f}%"
    if kind == "ratio":
        return _sig3(value) + "×"
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_float(float(value))
    return str(value)


_NS_UNITS = ((1e9, "s"), (1e6, "ms"), (1e3, "µs"))


def format_ns(ns: float) -> str:
    """Nanoseconds scaled to the largest unit that keeps the number >= 1: '850 ns', '12.3 µs'."""
    magnitude = abs(ns)
    for scale, unit in _NS_UNITS:
        if magnitude >= scale:
            return f"{_sig3(ns / scale)} {unit}"
    if float(ns).is_integer():
        return f"{int(ns)} ns"
    return f"{_sig3(ns)} ns"


def _sig3(x: float) -> str:
    """Three significant digits without an exponent: 1.23, 12.3, 123, 1,234 (larger: integer)."""
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def format_float(x: float) -> str:
    """Up to six significant digits, thousands separators, no exponent between 1e-4 and 1e15."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e15 or a < 1e-4:
        return f"{x:.4g}"
    decimals = max(0, 5 - math.floor(math.log10(a)))
    text = f"{x:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
