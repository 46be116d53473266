"""A small static-SVG chart helper: points with CI bars, lines, bands and reference lines.

Why hand-rolled instead of matplotlib: the report must be one offline HTML file, and four
simple x/y charts do not justify a 40 MB plotting dependency in the core install. Text stays
text in the SVG (axis labels, rung names, tooltips), so a browser test can read it and the
charts stay crisp at any zoom. Every piece of user text goes through ``escape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04",
           "#db2777", "#4b5563")
CHAR_W = 8.0  # average glyph width at 13px, for laying out labels
LINE_H = 15
# A white outline behind text keeps labels readable where they cross lines and bars.
HALO = 'stroke="#fff" stroke-width="3" paint-order="stroke"'
FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"


@dataclass
class Series:
    """One thing drawn on a chart.

    Attributes:
        label: legend text.
        points: (x, y) pairs.
        err: per point (low, high) of y, drawn as CI bars, or as a band when ``band``.
        point_labels: text drawn next to each point (e.g. the rung name).
        tips: hover tooltip per point (SVG <title>).
        line: join the points with a line.
        markers: draw a circle at each point.
        band: draw ``err`` as a shaded band instead of bars.
        dashed: dashed line.
        color: stroke/fill colour; default from the palette.
    """

    label: str
    points: list[tuple[float, float]]
    err: list[tuple[float, float]] | None = None
    point_labels: list[str] | None = None
    tips: list[str] | None = None
    line: bool = True
    markers: bool = True
    band: bool = False
    dashed: bool = False
    color: str | None = None


@dataclass
class RefLine:
    """A horizontal reference line across the plot (e.g. the task's target)."""

    y: float
    label: str
    color: str = "#dc2626"
    at_start: bool = False  # put the label at the left end (when data crowds the right)


@dataclass
class Axis:
    """Axis title (with units), optional fixed range, log scale, tick formatter."""

    title: str
    lo: float | None = None
    hi: float | None = None
    log: bool = False
    fmt: str | Callable[[float], str] = "{:g}"
    extra: list[float] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], with 2x and 5x when the range spans few decades."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if last - first > 3 else (1, 2, 5)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in mults]
    return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


class _Scale:
    """Maps data to pixels on one axis, linear or log."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool) -> None:
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        if self.hi == self.lo:
            self.hi = self.lo + 1
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        v = math.log10(max(v, 1e-300)) if self.log else v
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _range(values: list[float], axis: Axis, pad: float = 0.06) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if axis.log:
        vals = [v for v in vals if v > 0] or [1.0]
        lo = axis.lo if axis.lo is not None else min(vals) / 1.3
        hi = axis.hi if axis.hi is not None else max(vals) * 1.3
        return lo, max(hi, lo * 3)
    vals = vals or [0.0, 1.0]
    lo = axis.lo if axis.lo is not None else min(vals)
    hi = axis.hi if axis.hi is not None else max(vals)
    if hi == lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    span = hi - lo
    if axis.lo is None:
        lo -= span * pad
    if axis.hi is None:
        hi += span * pad
    return lo, hi


def _fmt(axis: Axis, v: float) -> str:
    return axis.fmt(v) if callable(axis.fmt) else axis.fmt.format(v)


def chart(series: list[Series], x: Axis, y: Axis, *, title: str, refs: list[RefLine] = (),
          diagonal: bool = False, width: int = 580, height: int = 330) -> Markup:
    """Render an x/y chart as inline SVG markup (safe to put in a template).

    The legend sits under the x-axis title, so it never hides data; the SVG grows by its
    height.
    """
    left, right, top, bottom = 64, 18, 14, 52
    legend, legend_h = _legend(series, left, height, width - right)
    total_h = height + legend_h
    xs = [p[0] for s in series for p in s.points] + x.extra
    ys = [p[1] for s in series for p in s.points] + y.extra + [r.y for r in refs]
    ys += [e for s in series for pair in (s.err or []) for e in pair]
    xlo, xhi = _range(xs, x)
    ylo, yhi = _range(ys, y)
    sx = _Scale(xlo, xhi, left, width - right, x.log)
    sy = _Scale(ylo, yhi, height - bottom, top, y.log)
    out: list[str] = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {total_h}" width="{width}" '
        f'height="{total_h}" xmlns="http://www.w3.org/2000/svg" style="{FONT};font-size:13px">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" fill="#fff" stroke="#cbd5e1"/>',
    ]
    xt = log_ticks(xlo, xhi) if x.log else nice_ticks(xlo, xhi, 6)
    yt = log_ticks(ylo, yhi) if y.log else nice_ticks(ylo, yhi, 5)
    for t in xt:
        px, text = sx(t), _fmt(x, t)
        # Keep the outermost tick labels inside the SVG.
        half = CHAR_W * len(text) / 2
        tx = min(max(px, half + 2), width - half - 2)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{height - bottom}" '
                   'stroke="#eef2f7"/>')
        out.append(f'<text x="{tx:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                   f'fill="#475569">{escape(text)}</text>')
    for t in yt:
        py = sy(t)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{py:.1f}" y2="{py:.1f}" '
                   'stroke="#eef2f7"/>')
        out.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" '
                   f'fill="#475569">{escape(_fmt(y, t))}</text>')
    out.append(f'<text class="axis-title" x="{(left + width - right) / 2:.0f}" '
               f'y="{height - 14}" text-anchor="middle" font-weight="600" fill="#0f172a">'
               f"{escape(x.title)}</text>")
    cy = (top + height - bottom) / 2
    out.append(f'<text class="axis-title" x="16" y="{cy:.0f}" text-anchor="middle" '
               f'font-weight="600" fill="#0f172a" transform="rotate(-90 16 {cy:.0f})">'
               f"{escape(y.title)}</text>")
    if diagonal:
        lo, hi = max(xlo, ylo), min(xhi, yhi)
        out.append(f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" '
                   f'y2="{sy(hi):.1f}" stroke="#94a3b8" stroke-dasharray="4 4"/>')
    placed: list[tuple[float, float, float]] = []
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        out.append(_draw_series(s, color, sx, sy, placed, width - right))
    for ref in refs:
        py = sy(ref.y)
        lx, anchor = (left + 6, "start") if ref.at_start else (width - right - 4, "end")
        out.append(f'<g class="refline"><line x1="{left}" x2="{width - right}" y1="{py:.1f}" '
                   f'y2="{py:.1f}" stroke="{ref.color}" stroke-width="2" '
                   'stroke-dasharray="7 4"/>'
                   f'<text x="{lx}" y="{py - 5:.1f}" text-anchor="{anchor}" '
                   f'fill="{ref.color}" font-weight="700" {HALO}>{escape(ref.label)}</text></g>')
    out.append(legend)
    out.append("</svg>")
    return Markup("".join(out))


def _draw_series(s: Series, color: str, sx: _Scale, sy: _Scale,
                 placed: list[tuple[float, float, float]], x_max: float) -> str:
    parts = [f'<g class="series" data-label="{escape(s.label)}">']
    pts = [(sx(a), sy(b)) for a, b in s.points]
    if s.err and s.band and len(pts) > 1:
        upper = [(sx(a), sy(hi)) for (a, _), (_, hi) in zip(s.points, s.err, strict=True)]
        lower = [(sx(a), sy(lo)) for (a, _), (lo, _) in zip(s.points, s.err, strict=True)]
        poly = " ".join(f"{px:.1f},{py:.1f}" for px, py in upper + lower[::-1])
        parts.append(f'<polygon points="{poly}" fill="{color}" fill-opacity="0.15"/>')
    if s.line and len(pts) > 1:
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                     f'stroke-width="2"{dash}/>')
    if s.err and not s.band:
        for (a, _), (lo, hi) in zip(s.points, s.err, strict=True):
            px = sx(a)
            parts.append(f'<path d="M{px:.1f},{sy(lo):.1f}V{sy(hi):.1f}M{px - 5:.1f},'
                         f'{sy(lo):.1f}h10M{px - 5:.1f},{sy(hi):.1f}h10" stroke="{color}" '
                         'stroke-width="1.5" fill="none"/>')
    for j, (px, py) in enumerate(pts):
        tip = f"<title>{escape(s.tips[j])}</title>" if s.tips else ""
        if s.markers:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{color}" '
                         f'stroke="#fff" stroke-width="1.5">{tip}</circle>')
        if s.point_labels:
            text = s.point_labels[j]
            w = CHAR_W * len(text)
            lx = px + 8 if px + 8 + w <= x_max else px - 8 - w
            ly = _place_label(lx, py - 8, w, placed)
            parts.append(f'<text class="point-label" x="{lx:.1f}" y="{ly:.1f}" '
                         f'fill="#0f172a" {HALO}>{escape(text)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _place_label(x: float, y: float, w: float,
                 placed: list[tuple[float, float, float]]) -> float:
    """Nudge a point label down until its box no longer overlaps a label already drawn."""
    for _ in range(12):
        if all(abs(y - py) >= LINE_H or x + w < px or x > px + pw for px, py, pw in placed):
            break
        y += LINE_H
    placed.append((x, y, w))
    return y


def _legend(series: list[Series], left: float, top: float, right: float) -> tuple[str, int]:
    """Legend entries in rows under the plot; returns (markup, height added)."""
    seen: dict[str, tuple[str, bool]] = {}
    for i, s in enumerate(series):
        if s.label and s.label not in seen:
            seen[s.label] = (s.color or PALETTE[i % len(PALETTE)], s.dashed)
    if not seen:
        return "", 0
    rows, x, y = [], left, top + 4
    for label, (color, dashed) in seen.items():
        w = 34 + CHAR_W * len(label)
        if x + w > right and x > left:
            x, y = left, y + LINE_H + 4
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        rows.append(f'<line x1="{x}" x2="{x + 20}" y1="{y + 6}" y2="{y + 6}" stroke="{color}" '
                    f'stroke-width="3"{dash}/><text x="{x + 26}" y="{y + 11}" fill="#0f172a">'
                    f"{escape(label)}</text>")
        x += w
    return '<g class="legend">' + "".join(rows) + "</g>", int(y - top + LINE_H + 6)
