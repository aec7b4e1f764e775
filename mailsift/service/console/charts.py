"""Inline SVG charts, drawn on the server: no script, nothing fetched, readable without
colour alone (each series is also named in a legend and in the chart's text alternative).

Written here rather than taken from a charting library: a stacked bar chart of a few
series is some forty lines, and a library would bring script to every page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "quantile", "stacked_bars"]

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 200, 44, 22, 8


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    colour: str
    values: Sequence[float]


def _nice_max(peak: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten at or above ``peak``."""
    if peak <= 0:
        return 1.0
    step = 10 ** len(str(int(peak))) / 10 if peak >= 1 else 0.1
    for factor in (1, 2, 5, 10):
        if peak <= factor * step:
            return float(factor * step)
    return float(10 * step)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def stacked_bars(title: str, series: Sequence[Series], labels: Sequence[str]) -> str:
    """One bar per bucket, the series stacked; ``labels`` name the first, middle and last
    buckets under the axis. Returns an ``<svg>`` element."""
    n = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    top = _nice_max(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    bar_w = plot_w / max(n, 1)
    summary = ", ".join(f"{s.name} {_number(sum(s.values))}" for s in series)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}: {escape(summary)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH - 4}" y2="{y:.1f}" '
            'stroke="#ccd" stroke-width="1"/>'
            f'<text x="{PAD_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#445">{_number(top * frac)}</text>'
        )
    for i in range(n):
        y = PAD_TOP + plot_h
        for s in series:
            h = plot_h * s.values[i] / top
            if h <= 0:
                continue
            y -= h
            parts.append(
                f'<rect class="bar" x="{PAD_LEFT + i * bar_w:.2f}" y="{y:.2f}" '
                f'width="{max(bar_w - 0.5, 0.5):.2f}" height="{h:.2f}" fill="{s.colour}">'
                f"<title>{escape(labels[i])} {escape(s.name)}: {_number(s.values[i])}</title>"
                "</rect>"
            )
    for i, anchor, shift in ((0, "start", 0.0), (n // 2, "middle", 0.5), (n - 1, "end", 1.0)):
        if 0 <= i < n:
            x = PAD_LEFT + (i + shift) * bar_w
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" font-size="11" '
                f'fill="#445">{escape(labels[i])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram (upper bound, count), interpolated
    linearly inside its bucket as Prometheus' ``histogram_quantile`` does; None if empty.

    >>> quantile([(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)], 0.5)
    0.01
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
