"""Inline SVG charts drawn by hand: scales, a frame with ticks and labels, legends, lines.

Charts are 800 units wide (the page's narrowest readable width, so text stays at its set
size there and scales up on wider screens). A legend sits in a band of its own above the
plot area (:func:`legend`), so it never covers data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.app.report.fmt import esc

RED, GREY, DARK, BLUE = "#c0392b", "#9aa5b1", "#2c3e50", "#aed6f1"
WIDTH = 800
LEGEND_ROW = 18


class Scale:
    """Data -> pixels on one axis (linear or log10), with tick values."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def __call__(self, v):
        v = np.asarray(v, dtype=np.float64)
        if self.log:
            v = np.log10(np.maximum(v, 1e-300))
        v = np.clip(v, self.lo, self.hi)
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 6) -> list[float]:
        if self.log:
            return [10.0 ** k for k in range(math.ceil(self.lo - 1e-9), math.floor(self.hi + 1e-9) + 1)]
        span = (self.hi - self.lo) / max(n, 1)
        mag = 10 ** math.floor(math.log10(span))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= span)
        first = math.ceil(self.lo / step - 1e-9) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def tick_label(v: float, log: bool) -> str:
    if log:
        return f"{v:,.0f}" if v < 1e6 else f"{v / 1e6:g} mln"
    return f"{v:,.10g}" if abs(v) < 1e4 else f"{v:,.0f}"


@dataclass(frozen=True)
class Frame:
    width: int = WIDTH
    height: int = 360
    left: int = 70
    right: int = 20
    top: int = 16
    bottom: int = 46

    def xscale(self, lo, hi, log=False) -> Scale:
        return Scale(lo, hi, self.left, self.width - self.right, log)

    def yscale(self, lo, hi, log=False) -> Scale:
        return Scale(lo, hi, self.height - self.bottom, self.top, log)


def f1(v: float) -> str:
    return f"{float(v):.1f}"


def svg_chart(frame: Frame, xs: Scale | None, ys: Scale, body: list[str], title: str, xlabel: str, ylabel: str,
              yfmt=None, xfmt=None) -> str:
    """An SVG chart: grid, ticks and labels around ``body`` (SVG elements in pixel space)."""
    w, h = frame.width, frame.height
    out = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{esc(title)}">',
           f"<title>{esc(title)}</title>"]
    for t in ys.ticks():
        y = f1(ys(t))
        out.append(f'<line x1="{frame.left}" x2="{w - frame.right}" y1="{y}" y2="{y}" class="grid"/>')
        out.append(f'<text x="{frame.left - 6}" y="{y}" class="tick" text-anchor="end" dominant-baseline="middle">'
                   f"{esc((yfmt or (lambda v: tick_label(v, ys.log)))(t))}</text>")
    if xs is not None:
        for t in xs.ticks():
            x = f1(xs(t))
            out.append(f'<line x1="{x}" x2="{x}" y1="{frame.top}" y2="{h - frame.bottom}" class="grid"/>')
            out.append(f'<text x="{x}" y="{h - frame.bottom + 16}" class="tick" text-anchor="middle">'
                       f"{esc((xfmt or (lambda v: tick_label(v, xs.log)))(t))}</text>")
    out.append(f'<rect x="{frame.left}" y="{frame.top}" width="{w - frame.left - frame.right}" '
               f'height="{h - frame.top - frame.bottom}" class="frame"/>')
    out += body
    out.append(f'<text x="{(frame.left + w - frame.right) / 2:.0f}" y="{h - 8}" class="label" '
               f'text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(16 {(frame.top + h - frame.bottom) / 2:.0f}) rotate(-90)" '
               f'class="label" text-anchor="middle">{esc(ylabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def legend(items: list[tuple[str, str]], left: float, right: float, top: float = 6) -> tuple[list[str], float]:
    """Legend entries (svg snippet of a marker at 0,0; text) laid out in rows from ``top``
    between ``left`` and ``right``, wrapping where an entry would not fit (text width
    estimated at 6.6 units a character, generous for the 12-unit sans-serif of the ticks).
    Returns the elements and the bottom of the band: the plot area starts below it."""
    out, x, row = [], left, 0
    for marker, text in items:
        w = 24 + 6.6 * len(text)
        if x > left and x + w > right:
            x, row = left, row + 1
        y = top + LEGEND_ROW * row + LEGEND_ROW / 2
        out.append(f'<g class="legend" transform="translate({x + 8:.0f} {y:.0f})">{marker}'
                   f'<text x="12" y="0" class="tick" dominant-baseline="middle">{esc(text)}</text></g>')
        x += w + 12
    return out, top + LEGEND_ROW * (row + 1) + 6


def polyline(xs, ys, cls: str) -> str:
    pts = " ".join(f"{f1(a)},{f1(b)}" for a, b in zip(xs, ys))
    return f'<polyline points="{pts}" class="{cls}"/>'


def axis_range(values: np.ndarray, include=(0.0,), pad: float = 0.05, q: float = 0.5) -> tuple[float, float]:
    """Axis range: the ``q``..``100 - q`` percentiles of ``values`` and everything in ``include``
    (e.g. the flagged municipalities, never drawn at the edge)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    inc = np.asarray(include, dtype=np.float64)
    inc = inc[np.isfinite(inc)]
    lo, hi = (np.percentile(v, [q, 100 - q]) if v.size else (0.0, 1.0))
    lo, hi = min(lo, *inc), max(hi, *inc)
    d = (hi - lo) * pad or 1.0
    return float(lo - d), float(hi + d)
