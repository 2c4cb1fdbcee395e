"""A scatter chart of accuracy against trainable parameters, drawn as SVG at build time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 20, 56
MARKERS = {"reported": "circle", "reproduced": "diamond"}


@dataclass(frozen=True)
class Point:
    """One row on the chart."""

    label: str
    params_m: float
    accuracy: float
    kind: str = "reported"      # reported | reproduced
    detail: str = ""            # shown on hover
    spread: float | None = None  # standard deviation over seeds, drawn as a bar of ±spread


def _ticks(low: float, high: float) -> list[float]:
    step = max(1.0, round((high - low) / 6))
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2) if first + i * step <= high + 1e-9]


def scatter_svg(points: list[Point], title: str, y_label: str = "mean top-1 accuracy (%)") -> str:
    """Render points as an SVG element (log-scaled x axis: trainable parameters in millions).

    Args:
        points: What to draw; points without a positive parameter count are skipped.
        title: Accessible title of the chart.
        y_label: Caption of the y axis.

    Returns:
        The SVG markup, or an empty string when there is nothing to draw.
    """
    points = sorted((p for p in points if p.params_m and p.params_m > 0),
                    key=lambda p: (p.params_m, p.accuracy, p.label))
    if not points:
        return ""
    log_low = math.floor(math.log10(min(p.params_m for p in points)))
    log_high = math.ceil(math.log10(max(p.params_m for p in points)))
    if log_high == log_low:
        log_high += 1
    y_low = math.floor(min(p.accuracy - (p.spread or 0) for p in points) - 1)
    y_high = math.ceil(max(p.accuracy + (p.spread or 0) for p in points) + 1)

    def x_of(params: float) -> float:
        share = (math.log10(params) - log_low) / (log_high - log_low)
        return LEFT + share * (WIDTH - LEFT - RIGHT)

    def y_of(accuracy: float) -> float:
        share = (accuracy - y_low) / (y_high - y_low)
        return HEIGHT - BOTTOM - share * (HEIGHT - TOP - BOTTOM)

    out = [f'<svg class="atlas-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for exponent in range(log_low, log_high + 1):
        x = x_of(10 ** exponent)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
                   f'{10 ** exponent:g}</text>')
    for value in _ticks(y_low, y_high):
        y = y_of(value)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    out.append(f'<text class="axis" x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT - 14}" '
               'text-anchor="middle">trainable parameters (millions, log scale)</text>')
    out.append(f'<text class="axis" transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    for point in points:
        x, y = x_of(point.params_m), y_of(point.accuracy)
        tip = escape(f"{point.label}: {point.accuracy:g}%"
                     + (f" ± {point.spread:.2g}" if point.spread is not None else "")
                     + f" at {point.params_m:g}M ({point.kind})"
                     + (f" — {point.detail}" if point.detail else ""))
        bar = ""
        if point.spread:
            top, bottom = y_of(point.accuracy + point.spread), y_of(point.accuracy - point.spread)
            bar = (f'<path class="spread" d="M{x:.1f} {top:.1f} V{bottom:.1f} M{x - 3:.1f} {top:.1f} '
                   f'H{x + 3:.1f} M{x - 3:.1f} {bottom:.1f} H{x + 3:.1f}"/>')
        if MARKERS.get(point.kind) == "diamond":
            shape = (f'<path class="point {point.kind}" d="M{x:.1f} {y - 6:.1f} L{x + 6:.1f} {y:.1f} '
                     f'L{x:.1f} {y + 6:.1f} L{x - 6:.1f} {y:.1f} Z"/>')
        else:
            shape = f'<circle class="point {point.kind}" cx="{x:.1f}" cy="{y:.1f}" r="4.5"/>'
        out.append(f'<g><title>{tip}</title>{bar}{shape}'
                   f'<text class="label" x="{x + 7:.1f}" y="{y - 6:.1f}">{escape(point.label)}</text></g>')
    out.append("</svg>")
    return "".join(out)
