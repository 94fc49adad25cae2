"""Tiny inline-SVG line charts for self-contained HTML reports (no external assets)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

# matplotlib's tab10, so reports and PNG plots use the same colours.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip


@dataclass(frozen=True)
class Series:
    """One line: label, x and y values (NaN breaks the line), colour."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str = "training iteration",
    ylabel: str = "accuracy",
    vlines: Sequence[float] = (),
    ylim: tuple[float, float] = (0.0, 1.0),
    width: int = 590,
    height: int = 300,
) -> str:
    """An SVG line chart with axes, ticks, dotted vertical markers and a legend.

    Args:
        series: The lines to draw.
        title: Chart title.
        xlabel: X axis label.
        ylabel: Y axis label.
        vlines: X positions of dotted vertical lines (experience boundaries).
        ylim: Y range.
        width: Width in pixels.
        height: Height in pixels.

    Returns:
        An ``<svg>`` element as a string.
    """
    left, right, top, bottom = 46, 235, 26, 40
    pw, ph = width - left - right, height - top - bottom
    xs_all = [x for s in series for x in s.xs] + list(vlines)
    x0, x1 = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = ylim

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (min(max(y, y0), y1) - y0) / (y1 - y0)) * ph

    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']  # fmt: skip
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{py(t) + 4:.1f}" font-size="10" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + ph / 2})">{esc(ylabel)}</text>')  # fmt: skip
    for v in vlines:
        out.append(f'<line class="boundary" x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{top}" y2="{top + ph}" '
                   f'stroke="#888" stroke-dasharray="3,3"/>')  # fmt: skip
    for s in series:
        runs: list[list[str]] = [[]]
        for x, y in zip(s.xs, s.ys, strict=True):
            if y is None or math.isnan(y):
                runs.append([])
            else:
                runs[-1].append(f"{px(x):.1f},{py(y):.1f}")
        for pts in runs:
            if len(pts) > 1:
                out.append(f'<polyline class="curve" fill="none" stroke="{s.color}" stroke-width="1.6" '
                           f'points="{" ".join(pts)}"><title>{esc(s.label)}</title></polyline>')  # fmt: skip
            elif pts:
                x, y = pts[0].split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{s.color}"/>')
    for k, s in enumerate(series):
        y = top + 8 + 16 * k
        out.append(f'<line x1="{left + pw + 10}" x2="{left + pw + 28}" y1="{y}" y2="{y}" stroke="{s.color}" '
                   f'stroke-width="3"/><text x="{left + pw + 32}" y="{y + 4}" font-size="10.5">'
                   f"{esc(s.label if len(s.label) <= 34 else s.label[:33] + '…')}</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)


@dataclass(frozen=True)
class Point:
    """One labelled point of a scatter chart."""

    label: str
    x: float
    y: float
    color: str


def scatter_chart(
    points: Sequence[Point],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    front: Sequence[int] = (),
    width: int = 590,
    height: int = 300,
) -> str:
    """An SVG scatter chart; ``front`` (indices, in x order) is joined by a line (a Pareto front).

    Returns:
        An ``<svg>`` element as a string.
    """
    left, right, top, bottom = 56, 235, 26, 40
    pw, ph = width - left - right, height - top - bottom
    xs, ys = [p.x for p in points] or [0.0], [p.y for p in points] or [0.0]
    x0, x1 = 0.0, max(xs) * 1.05 or 1.0
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart scatter" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']  # fmt: skip
    for t in _ticks(y0, y1):
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" font-size="10" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + ph / 2})">{esc(ylabel)}</text>')  # fmt: skip
    if len(front) > 1:
        pts = " ".join(f"{px(points[i].x):.1f},{py(points[i].y):.1f}" for i in front)
        out.append(f'<polyline class="pareto" fill="none" stroke="#333" stroke-dasharray="4,2" points="{pts}"/>')
    for i, p in enumerate(points):
        ring = ' stroke="#000" stroke-width="1.5"' if i in front else ""
        out.append(f'<circle class="point" cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="4.5" fill="{p.color}"{ring}>'
                   f"<title>{esc(p.label)}: {p.x:.4g}, {p.y:.4f}</title></circle>")  # fmt: skip
    for k, p in enumerate(points):
        y = top + 8 + 16 * k
        star = " *" if k in front else ""
        out.append(f'<circle cx="{left + pw + 18}" cy="{y}" r="4" fill="{p.color}"/><text x="{left + pw + 28}" '
                   f'y="{y + 4}" font-size="10.5">{esc((p.label[:31] + "…") if len(p.label) > 32 else p.label)}'
                   f"{star}</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)
