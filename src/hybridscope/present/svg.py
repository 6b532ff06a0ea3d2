"""Tiny inline-SVG charts for the HTML report: pure functions from plotted values to an SVG string.

No statistics here: callers pass the values to draw (from analysis Tables). Every mark carries a
`<title>` (the browser's tooltip) and a class naming what it is, so tests can count marks:
`series` paths (line charts), `bar` rects, `cell` rects (heatmap), `dot` circles (scatter).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

W, H = 640, 300
M = {"l": 64, "r": 16, "t": 12, "b": 40}  # margins


def _frame(body: list[str], width: int, height: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{escape(label)}">' + "".join(body) + "</svg>")


def _scale(lo: float, hi: float, a: float, b: float, log: bool = False) -> Callable[[float], float]:
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = (hi - lo) or 1.0

    def f(v: float) -> float:
        v = math.log10(v) if log else v
        return a + (v - lo) / span * (b - a)

    return f


def _text(x: float, y: float, s: str, anchor: str = "middle", cls: str = "tick") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}">{escape(s)}</text>'


def _axes(width, height, xticks, yticks, x_label, y_label) -> list[str]:
    x0, x1, y0, y1 = M["l"], width - M["r"], height - M["b"], M["t"]
    out = [f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>']
    for x, s in xticks:
        out += [f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" class="grid"/>', _text(x, y0 + 14, s)]
    for y, s in yticks:
        out += [f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>', _text(x0 - 6, y + 4, s, "end")]
    out.append(_text((x0 + x1) / 2, height - 6, x_label, cls="label"))
    out.append(f'<text transform="translate(14 {(y0 + y1) / 2:.0f}) rotate(-90)" text-anchor="middle" '
               f'class="label">{escape(y_label)}</text>')
    return out


def _lin_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], *, x_label: str, y_label: str,
               fmt_x: Callable[[float], str], log_x: bool = True, width: int = W, height: int = H) -> str:
    """Step-free polylines, one per (name, xs, ys, colour); y on [0, 1]; x log10 when `log_x`."""
    xs_all = [x for _, xs, _, _ in series for x in xs if (x > 0 or not log_x)]
    if not xs_all:
        return _frame([_text(width / 2, height / 2, "no data")], width, height, y_label)
    lo, hi = min(xs_all), max(xs_all)
    if log_x:
        lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        hi = hi if hi > lo else lo * 10
    fx = _scale(lo, hi, M["l"], width - M["r"], log_x)
    fy = _scale(0.0, 1.0, height - M["b"], M["t"])
    if log_x:
        xticks = [(fx(10 ** e), fmt_x(10 ** e)) for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    else:
        xticks = [(fx(v), fmt_x(v)) for v in _lin_ticks(lo, hi)]
    body = _axes(width, height, xticks, [(fy(v), f"{v:g}") for v in (0, 0.25, 0.5, 0.75, 0.9, 1.0)], x_label, y_label)
    for name, xs, ys, colour in series:
        pts = [(fx(max(x, lo)), fy(y)) for x, y in zip(xs, ys)]
        d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        body.append(f'<path d="{d}" class="series" data-series="{escape(name)}" stroke="{colour}" fill="none">'
                    f"<title>{escape(name)}</title></path>")
    return _frame(body, width, height, y_label)


def bar_chart(bars: Sequence[tuple[str, float, str, str]], *, y_label: str, fmt_y: Callable[[float], str],
              x_label: str = "", width: int = W, height: int = H) -> str:
    """Vertical bars (label, value, colour, tooltip), in the order given."""
    if not bars:
        return _frame([_text(width / 2, height / 2, "no data")], width, height, y_label)
    top = max(v for _, v, _, _ in bars) or 1.0
    fy = _scale(0.0, top, height - M["b"], M["t"])
    slot = (width - M["l"] - M["r"]) / len(bars)
    body = _axes(width, height, [], [(fy(v), fmt_y(v)) for v in _lin_ticks(0, top, 4)], x_label, y_label)
    every = max(1, math.ceil(len(bars) / 24))
    for i, (label, v, colour, tip) in enumerate(bars):
        x = M["l"] + i * slot
        body.append(f'<rect x="{x + slot * 0.1:.1f}" y="{fy(v):.1f}" width="{slot * 0.8:.1f}" '
                    f'height="{fy(0) - fy(v):.1f}" fill="{colour}" class="bar"><title>{escape(tip)}</title></rect>')
        if i % every == 0:
            body.append(_text(x + slot / 2, height - M["b"] + 14, label))
    return _frame(body, width, height, y_label)


def stacked_bars(columns: Sequence[tuple[str, Sequence[tuple[str, float, str]]]], *, y_label: str,
                 fmt_y: Callable[[float], str], x_label: str = "", width: int = W, height: int = H) -> str:
    """One stacked bar per (label, [(part name, value, colour), ...]), left to right."""
    if not columns:
        return _frame([_text(width / 2, height / 2, "no data")], width, height, y_label)
    top = max(sum(v for _, v, _ in parts) for _, parts in columns) or 1.0
    fy = _scale(0.0, top, height - M["b"], M["t"])
    slot = (width - M["l"] - M["r"]) / len(columns)
    every = max(1, math.ceil(len(columns) / 16))
    body = _axes(width, height, [], [(fy(v), fmt_y(v)) for v in _lin_ticks(0, top, 4)], x_label, y_label)
    for i, (label, parts) in enumerate(columns):
        x, acc = M["l"] + i * slot, 0.0
        for name, v, colour in parts:
            y_top = fy(acc + v)
            body.append(f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{max(slot * 0.9, 0.5):.2f}" '
                        f'height="{fy(acc) - y_top:.1f}" fill="{colour}" class="bar" data-series="{escape(name)}">'
                        f"<title>{escape(label)} · {escape(name)}: {escape(fmt_y(v))}</title></rect>")
            acc += v
        if i % every == 0:
            body.append(_text(x + slot / 2, height - M["b"] + 14, label))
    return _frame(body, width, height, y_label)


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str], values: Sequence[Sequence[float]], *,
            tip: Callable[[int, int], str], fmt: Callable[[float], str], x_label: str, scale_label: str,
            width: int = W) -> str:
    """Cells shaded by value / max (white to red): rows top to bottom, columns left to right; under
    them the x axis label and a colour scale from 0 to the largest value, labelled with `fmt`."""
    n_r, n_c = len(row_labels), len(col_labels)
    if not n_r or not n_c:
        return _frame([_text(width / 2, 40, "no routing data")], width, 80, "heatmap")
    cw = (width - M["l"] - M["r"]) / n_c
    ch = min(28.0, max(10.0, 360 / n_r))
    grid_bottom = M["t"] + n_r * ch
    height = int(grid_bottom + 40 + 44)  # tick labels and axis label, then the colour scale
    top = max((v for row in values for v in row), default=0) or 1.0
    body = []
    for i, row in enumerate(values):
        body.append(_text(M["l"] - 6, M["t"] + i * ch + ch / 2 + 4, row_labels[i], "end"))
        for j, v in enumerate(row):
            body.append(f'<rect x="{M["l"] + j * cw:.1f}" y="{M["t"] + i * ch:.1f}" width="{cw:.1f}" '
                        f'height="{ch:.1f}" fill="{_red(v / top)}" class="cell">'
                        f"<title>{escape(tip(i, j))}</title></rect>")
    every = max(1, math.ceil(n_c / 32))
    for j in range(0, n_c, every):
        body.append(_text(M["l"] + j * cw + cw / 2, grid_bottom + 14, col_labels[j]))
    body.append(_text(M["l"] + (width - M["l"] - M["r"]) / 2, grid_bottom + 32, x_label, cls="label"))
    body += _colour_scale(M["l"], grid_bottom + 44, 200, top, fmt, scale_label)
    return _frame(body, width, height, "heatmap")


def _red(fraction: float) -> str:
    shade = int(255 * (1 - min(max(fraction, 0.0), 1.0)))
    return f"rgb(255,{shade},{shade})"


def _colour_scale(x: float, y: float, length: float, top: float, fmt: Callable[[float], str], label: str) -> list[str]:
    """A white-to-red bar of 20 steps from 0 to `top`, ticks at 0, half and `top`, and its label."""
    steps = 20
    out = [f'<rect x="{x + i * length / steps:.1f}" y="{y:.1f}" width="{length / steps + 0.5:.1f}" height="10" '
           f'fill="{_red((i + 0.5) / steps)}" class="scale"/>' for i in range(steps)]
    out += [_text(x + f * length, y + 24, fmt(f * top)) for f in (0.0, 0.5, 1.0)]
    out.append(_text(x + length + 10, y + 9, label, "start", cls="label"))
    return out


def scatter(points: Sequence[tuple[float, float, str]], *, x_label: str, y_label: str,
            fmt_x: Callable[[float], str], fmt_y: Callable[[float], str], width: int = W, height: int = H) -> str:
    """Dots at (x, y) with a tooltip each; linear axes from 0 (y) and from the smallest x."""
    if not points:
        return _frame([_text(width / 2, height / 2, "no data")], width, height, y_label)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    pad = (x_hi - x_lo) * 0.05 or 0.5
    fx = _scale(x_lo - pad, x_hi + pad, M["l"], width - M["r"])
    fy = _scale(0.0, max(ys) * 1.05 or 1.0, height - M["b"], M["t"])
    xticks = [(fx(v), fmt_x(v)) for v in _lin_ticks(x_lo - pad, x_hi + pad)]
    body = _axes(width, height, xticks, [(fy(v), fmt_y(v)) for v in _lin_ticks(0, max(ys) * 1.05 or 1.0, 4)],
                 x_label, y_label)
    for x, y, tip in points:
        body.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="4" class="dot"><title>{escape(tip)}</title></circle>')
    return _frame(body, width, height, y_label)
