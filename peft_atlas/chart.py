"""A scatter chart of accuracy against trainable parameters, drawn as SVG at build time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 20, 56
MARKERS = {"reported": "circle", "reproduced": "diamond"}
# Legend of the accuracy chart: a marker per kind of point and, for reported means, per convention.
LEGEND = {"reported/mean-of-tasks": "reported, mean of tasks",
          "reported/mean-of-group-means": "reported, mean of group means",
          "reproduced": "reproduced here (± one standard deviation)"}


def _style(point: "Point") -> str:
    if point.kind == "reproduced":
        return "reproduced"
    return "reported/mean-of-group-means" if point.convention == "mean-of-group-means" else "reported/mean-of-tasks"


def _point_shape(style: str, x: float, y: float) -> str:
    """The marker of a point style: circle (mean of tasks), square (mean of group means), diamond
    (reproduced)."""
    kind = style.split("/")[0]
    if style == "reproduced":
        return (f'<path class="point {kind}" d="M{x:.1f} {y - 6:.1f} L{x + 6:.1f} {y:.1f} '
                f'L{x:.1f} {y + 6:.1f} L{x - 6:.1f} {y:.1f} Z"/>')
    if style.endswith("group-means"):
        return f'<rect class="point {kind}" x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" width="9" height="9"/>'
    return f'<circle class="point {kind}" cx="{x:.1f}" cy="{y:.1f}" r="4.5"/>'



@dataclass(frozen=True)
class Point:
    """One row on the chart."""

    label: str
    params_m: float
    accuracy: float
    kind: str = "reported"      # reported | reproduced
    detail: str = ""            # shown on hover
    spread: float | None = None  # standard deviation over seeds, drawn as a bar of ±spread
    convention: str = ""        # mean-of-tasks | mean-of-group-means: a reported mean's convention


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

    styles = [style for style in LEGEND if any(_style(p) == style for p in points)]
    out = [f'<svg class="atlas-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 20}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    # the legend: one entry per kind of point drawn (and per mean convention), below the axis caption
    for index, style in enumerate(styles):
        lx, ly = LEFT + index * 220, HEIGHT + 8
        out.append(f'<g class="legend">{_point_shape(style, lx, ly)}<text class="tick" x="{lx + 10:.1f}" '
                   f'y="{ly + 4:.1f}">{LEGEND[style]}</text></g>')
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
    placed: list[tuple[float, float, float, float]] = []  # boxes of the labels drawn so far
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
        shape = _point_shape(_style(point), x, y)
        # the label goes on the first side where it covers no earlier label and stays in the plot;
        # where none is free it is left out (the point's tooltip still names it)
        candidates = [(x + 7, y - 6, "start"), (x + 7, y + 14, "start"),
                      (x - 7, y - 6, "end"), (x - 7, y + 14, "end")]
        label = ""
        for lx, ly, anchor in candidates:
            box = _label_box(lx, ly, point.label, anchor)
            if LEFT <= box[0] and box[2] <= WIDTH - RIGHT and TOP <= box[1] and not _overlaps(box, placed):
                placed.append(box)
                label = (f'<text class="label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">'
                         f'{escape(point.label)}</text>')
                break
        out.append(f'<g><title>{tip}</title>{bar}{shape}{label}</g>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------- base-to-novel

# Marker of each source of a base-to-novel chart, in the order the sources first appear.
SOURCE_MARKERS = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class BaseNovelPoint:
    """One base-to-novel row: its printed average accuracies on base and novel classes."""

    label: str
    base: float
    novel: float
    source: str                 # one marker per source
    detail: str = ""            # shown on hover
    inconsistent: bool = False  # the source contradicts itself: drawn hollow
    kind: str = "reported"      # "reproduced": a run of this repository's harness


def _harmonic_mean(base: float, novel: float) -> float:
    return 2 * base * novel / (base + novel) if base + novel else 0.0


def _marker(shape: str, x: float, y: float, css: str) -> str:
    if shape == "square":
        return f'<rect class="{css}" x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8"/>'
    if shape == "triangle":
        return f'<path class="{css}" d="M{x:.1f} {y - 5.5:.1f} L{x + 5:.1f} {y + 4:.1f} L{x - 5:.1f} {y + 4:.1f} Z"/>'
    if shape == "diamond":
        return f'<path class="{css}" d="M{x:.1f} {y - 6:.1f} L{x + 6:.1f} {y:.1f} L{x:.1f} {y + 6:.1f} L{x - 6:.1f} {y:.1f} Z"/>'
    return f'<circle class="{css}" cx="{x:.1f}" cy="{y:.1f}" r="4.5"/>'


def _label_box(x: float, y: float, text: str, anchor: str) -> tuple[float, float, float, float]:
    """Approximate box (left, top, right, bottom) of a point label at the chart's font size."""
    # 6.2 units a character is wider than the average glyph of the 10-unit label font, so a label
    # the layout keeps clear of another stays clear in the browser
    width = 6.2 * len(text)
    left = x - width if anchor == "end" else x
    return left, y - 10, left + width, y + 3


def _overlaps(box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def base_novel_svg(points: list[BaseNovelPoint], title: str) -> str:
    """Render base-to-novel rows as an SVG scatter: novel accuracy on x, base accuracy on y.

    Dashed curves join the points of equal harmonic mean, so a point's HM can be read off the
    chart and rows that trade base for novel accuracy can be compared. Each source gets its own
    marker (legend below the plot); rows whose source contradicts itself are hollow. Rows that
    print the same averages (sources often copy a baseline row) share one label, and a label that
    would cover an earlier one moves to another side of its point.

    Args:
        points: What to draw (average base and novel accuracy of each row).
        title: Accessible title of the chart.

    Returns:
        The SVG markup, or an empty string when there is nothing to draw.
    """
    points = sorted(points, key=lambda p: (p.novel, p.base, p.label, p.source))
    if not points:
        return ""
    sources = sorted({p.source for p in points})
    shape_of = {s: SOURCE_MARKERS[i % len(SOURCE_MARKERS)] for i, s in enumerate(sources)}
    height = HEIGHT + 18 * len(sources)  # the legend rows below the axis caption
    x_low = math.floor(min(p.novel for p in points) - 1)
    x_high = math.ceil(max(p.novel for p in points) + 1)
    y_low = math.floor(min(p.base for p in points) - 1)
    y_high = math.ceil(max(p.base for p in points) + 1)
    plot_bottom = HEIGHT - BOTTOM

    def x_of(novel: float) -> float:
        return LEFT + (novel - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)

    def y_of(base: float) -> float:
        return plot_bottom - (base - y_low) / (y_high - y_low) * (plot_bottom - TOP)

    out = [f'<svg class="atlas-chart" role="img" viewBox="0 0 {WIDTH} {height}" '
           f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for value in (v for v in _ticks(x_low, x_high) if x_low <= v <= x_high):
        x = x_of(value)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{plot_bottom}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{plot_bottom + 18}" text-anchor="middle">{value:g}</text>')
    for value in (v for v in _ticks(y_low, y_high) if y_low <= v <= y_high):
        y = y_of(value)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    # Curves of equal harmonic mean h: base = h * novel / (2 * novel - h), sampled across the plot.
    placed: list[tuple[float, float, float, float]] = []  # boxes of the labels drawn so far
    lowest, highest = _harmonic_mean(y_low, x_low), _harmonic_mean(y_high, x_high)
    step = max(1, round((highest - lowest) / 6))
    for level in range(math.ceil(lowest / step) * step, int(highest) + 1, step):
        path, last = [], None
        for i in range(101):
            novel = x_low + (x_high - x_low) * i / 100
            if 2 * novel - level <= 0:
                continue
            base = level * novel / (2 * novel - level)
            if y_low <= base <= y_high:
                last = (x_of(novel), y_of(base))
                path.append(f"{'M' if not path else 'L'}{last[0]:.1f} {last[1]:.1f}")
        if len(path) > 1 and last is not None:
            # labelled where the curve leaves the plot (right or bottom edge), inside the plot
            lx, ly = last[0] - 3, max(last[1] - 4, TOP + 10)
            placed.append(_label_box(lx, ly, f"HM {level}", "end"))
            out.append(f'<path class="iso-hm" d="{" ".join(path)}"/>'
                       f'<text class="iso-hm-label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="end">HM {level}</text>')
    out.append(f'<text class="axis" x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT - 14}" '
               'text-anchor="middle">novel-class accuracy (%), average over the data sets</text>')
    out.append(f'<text class="axis" transform="translate(16 {(TOP + plot_bottom) / 2:.1f}) rotate(-90)" '
               'text-anchor="middle">base-class accuracy (%)</text>')
    kind_of = {p.source: p.kind for p in points}
    for index, source in enumerate(sources):
        x, y = LEFT + 6, HEIGHT + 18 * index
        out.append(f'<g class="legend">{_marker(shape_of[source], x, y, f"point {kind_of[source]}")}'
                   f'<text class="label" x="{x + 12}" y="{y + 4:.1f}">{escape(source)}</text></g>')
    names_at: dict[tuple[float, float], list[str]] = {}
    for point in points:
        names = names_at.setdefault((point.novel, point.base), [])
        if point.label not in names:
            names.append(point.label)
    for point in points:
        x, y = x_of(point.novel), y_of(point.base)
        hm = _harmonic_mean(point.base, point.novel)
        tip = escape(f"{point.label}: base {point.base:g}%, novel {point.novel:g}%, HM {hm:.2f}% "
                     f"(recomputed) — {point.source}" + (f"; {point.detail}" if point.detail else "")
                     + ("; the source contradicts itself" if point.inconsistent else ""))
        css = f"point {point.kind}" + (" inconsistent" if point.inconsistent else "")
        label = ""
        names = names_at.pop((point.novel, point.base), None)
        if names:
            text = " / ".join(names)
            candidates = [(x + 7, y - 6, "start"), (x + 7, y + 14, "start"),
                          (x - 7, y - 6, "end"), (x - 7, y + 14, "end")]
            # the first side that covers no earlier label, nor runs off the plot
            boxes = [(c, _label_box(c[0], c[1], text, c[2])) for c in candidates]
            fits = [c for c, box in boxes
                    if LEFT <= box[0] and box[2] <= WIDTH - RIGHT and not _overlaps(box, placed)]
            lx, ly, anchor = (fits or candidates)[0]
            placed.append(_label_box(lx, ly, text, anchor))
            label = (f'<text class="label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">'
                     f'{escape(text)}</text>')
        out.append(f'<g><title>{tip}</title>{_marker(shape_of[point.source], x, y, css)}{label}</g>')
    out.append("</svg>")
    return "".join(out)
