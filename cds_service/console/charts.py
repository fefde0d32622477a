"""Small SVG charts drawn on the server: no script, no library, readable without colour
(every mark has a text title; every chart has a data table beside it in the page)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import count

from markupsafe import Markup, escape

W, H = 680, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 14, 46

DETERMINATION_COLOURS = {
    "SUPPORTED": "#1b6e2e",
    "NOT_MEDICALLY_NECESSARY": "#b3261e",
    "INSUFFICIENT_DOCUMENTATION": "#8a5300",
    "NOT_APPLICABLE": "#546e7a",
    "TECHNICAL_FAILURE": "#6a1b9a",
}
SERIES_COLOURS = ("#1f4e99", "#b3261e", "#1b6e2e", "#8a5300", "#6a1b9a", "#00695c")
DASHES = ("", "6 3", "2 3", "10 3 2 3")
_ids = count(1)


@dataclass
class Series:
    name: str
    values: list
    colour: str


def _nice_max(value: float, whole: bool = False) -> float:
    """The top of the axis: four ticks of 1, 2, 2.5 or 5 × 10^k (whole numbers for counts) covering value."""
    steps = (1, 2, 5) if whole else (1, 2, 2.5, 5)
    for exp in range(0 if whole else -2, 10):
        for step in steps:
            if 4 * step * 10 ** exp >= value:
                return 4 * step * 10 ** exp
    return value


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"


def _frame(title: str, desc: str, y_max: float, days: list[str], unit: str) -> tuple[str, list[str], float, float]:
    cid = f"chart{next(_ids)}"
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{cid}-t {cid}-d" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{cid}-t">{escape(title)}</title><desc id="{cid}-d">{escape(desc)}</desc>']
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    for i in range(5):
        v = y_max * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>')
    parts.append(f'<text x="12" y="{TOP + plot_h / 2:.0f}" transform="rotate(-90 12 {TOP + plot_h / 2:.0f})" '
                 f'text-anchor="middle" class="axis-label">{escape(unit)}</text>')
    n = max(1, len(days))
    step = max(1, round(n / 8))
    for i, d in enumerate(days):
        if i % step == 0 or (i == n - 1 and i % step >= step / 2):
            x = LEFT + plot_w * (i + 0.5) / n
            parts.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" class="tick">{d[5:]}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#57606a"/>')
    return cid, parts, plot_w, plot_h


def _legend(series: list[Series], y: float, dashed: bool = False) -> list[str]:
    parts, x = [], LEFT
    for i, s in enumerate(series):
        if dashed:
            dash = DASHES[i % len(DASHES)]
            parts.append(f'<line x1="{x}" x2="{x + 18}" y1="{y - 4}" y2="{y - 4}" stroke="{s.colour}" stroke-width="2.5"'
                         + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
            x += 22
        else:
            parts.append(f'<rect x="{x}" y="{y - 10}" width="11" height="11" fill="{s.colour}"/>')
            x += 15
        parts.append(f'<text x="{x}" y="{y}" class="legend">{escape(s.name)}</text>')
        x += 7 * len(s.name) + 18
    return parts


def stacked_bars(title: str, days: list[str], series: list[Series], unit: str = "decisions") -> Markup:
    totals = [sum((s.values[i] or 0) for s in series) for i in range(len(days))]
    y_max = _nice_max(max(totals + [1]), whole=True)
    desc = f"{sum(totals)} {unit} from {days[0]} to {days[-1]}" if days else "no data"
    cid, parts, plot_w, plot_h = _frame(title, desc, y_max, days, unit)
    n = max(1, len(days))
    bar_w = max(2.0, plot_w / n * 0.7)
    for i, d in enumerate(days):
        x = LEFT + plot_w * (i + 0.5) / n - bar_w / 2
        base = TOP + plot_h
        for s in series:
            v = s.values[i] or 0
            if not v:
                continue
            h = plot_h * v / y_max
            base -= h
            parts.append(f'<rect class="bar" data-series="{escape(s.name)}" data-day="{d}" data-value="{v}" '
                         f'x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{s.colour}">'
                         f'<title>{d}: {v} {escape(s.name)}</title></rect>')
    parts += _legend(series, H - 8)
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(title: str, days: list[str], series: list[Series], unit: str) -> Markup:
    values = [v for s in series for v in s.values if v is not None]
    y_max = 100.0 if unit == "%" else _nice_max(max(values or [0]))
    desc = ", ".join(f"{s.name}: max {_fmt(max([v for v in s.values if v is not None] or [0]))} {unit}" for s in series)
    cid, parts, plot_w, plot_h = _frame(title, desc or "no data", y_max, days, unit)
    n = max(1, len(days))
    for k, s in enumerate(series):
        points = [(LEFT + plot_w * (i + 0.5) / n, TOP + plot_h - plot_h * v / y_max, days[i], v)
                  for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            dash = DASHES[k % len(DASHES)]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(f'<polyline class="line" data-series="{escape(s.name)}" points="{path}" fill="none" '
                         f'stroke="{s.colour}" stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for x, y, d, v in points:
            parts.append(f'<circle class="point" data-series="{escape(s.name)}" data-day="{d}" data-value="{v:.1f}" '
                         f'cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.colour}"><title>{d}: {escape(s.name)} '
                         f'{_fmt(v)} {escape(unit)}</title></circle>')
    parts += _legend(series, H - 8, dashed=True)
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(title: str, items: list[tuple[str, float, str]], unit: str = "%", top: float = 100.0) -> Markup:
    """Horizontal bars: (label, value, text shown at the bar's end)."""
    row = 26
    height = max(60, TOP + row * len(items) + 24)
    label_w = 150
    cid = f"chart{next(_ids)}"
    desc = "; ".join(f"{label}: {text}" for label, _, text in items) or "no data"
    parts = [f'<svg class="chart" viewBox="0 0 {W} {height}" role="img" aria-labelledby="{cid}-t {cid}-d" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{cid}-t">{escape(title)}</title><desc id="{cid}-d">{escape(desc)}</desc>']
    plot_w = W - label_w - 130
    for i, (label, value, text) in enumerate(items):
        y = TOP + i * row
        w = plot_w * (value / top if top else 0)
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="tick">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{plot_w}" height="16" fill="#eef1f4"/>')
        parts.append(f'<rect class="bar" data-series="{escape(label)}" data-value="{value:.1f}" x="{label_w}" y="{y + 3}" '
                     f'width="{max(w, 0):.1f}" height="16" fill="#1f4e99"><title>{escape(label)}: {escape(text)}</title></rect>')
        parts.append(f'<text x="{label_w + plot_w + 8}" y="{y + 15}" class="tick">{escape(text)}</text>')
    if not items:
        parts.append(f'<text x="{LEFT}" y="{TOP + 20}" class="tick">no feedback in this period</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
