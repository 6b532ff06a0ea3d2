"""How a person reads a value of each column kind (`hybridscope.table`): the ground floor's unit formatting.

Shared by the analyses that write sentences (advice) and every renderer (present/), so both say
'12.3 µs' the same way. 'ns' is scaled per value to ns / µs / ms / s with three significant digits,
'pct' gets % (from 1,000% on with thousands separators and no decimal), 'ratio' ×, 'int' thousands separators, None (and NaN) '-'. A 'kernel' name is
shortened one way everywhere (`short_kernel_name`): C++ parameter lists and nested templates go.
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
        if abs(value) >= 1000:  # thousands separators, no decimal: '26,310,052%'
            return f"{value:,.0f}%"
        return f"{value:.2f}%" if abs(value) < 1 else f"{value:.1f}%"
    if kind == "ratio":
        return _sig3(value) + "×"
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if kind == "kernel":
        return short_kernel_name(str(value))
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


_DROP = ("void ", "at::native::", "(anonymous namespace)::", "at_cuda_detail::", "c10::", "std::")


def short_kernel_name(name: str, width: int = 100) -> str:
    """A C++ kernel name a person can scan: no `void`, no parameter list, templates nested deeper
    than one level shown as `<…>`, common namespaces dropped, at most `width` characters.
    Names that are not C++ signatures (`Memcpy HtoD (Pageable -> Device)`) keep their text."""
    text = name
    if "::" in text or text.startswith("void ") or "<" in text:
        text = _elide_templates(_without_params(text))
    for prefix in _DROP:
        text = text.replace(prefix, "")
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _elide_templates(text: str) -> str:
    kept, depth = [], 0
    for ch in text:
        if ch == "<":
            depth += 1
            kept.append("<" if depth == 1 else "<…>" if depth == 2 else "")
        elif ch == ">":
            kept.append(">" if depth == 1 else "")
            depth -= 1
        elif depth < 2:
            kept.append(ch)
    return "".join(kept)


def _without_params(text: str) -> str:
    """Cut at the first '(' outside template brackets: the parameter list."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0:
            return text[:i]
    return text
