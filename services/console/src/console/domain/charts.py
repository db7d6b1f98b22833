"""Charts as SVG, rendered on the server: no script, readable without colour.

Each chart has a ``<title>`` and ``role="img"`` with a label, and every bar is
labelled with its number; the pages show the same numbers in a table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

BAR_HEIGHT = 26
GAP = 8
LABEL_WIDTH = 230
CHART_WIDTH = 620
NONE = "\u2013"  # an en dash: no value
PALETTE = ("#1f5fa8", "#2e7d4f", "#8a5a00", "#7b3fa0", "#a33a3a", "#36718a")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str | None = None  # how the number is written (defaults to the value)


def bar_chart(title: str, bars: list[Bar], *, unit: str = "") -> str:
    """A horizontal bar chart; bars scale to the largest value (all zero: empty bars)."""
    height = max(len(bars), 1) * (BAR_HEIGHT + GAP) + GAP
    top = max((b.value for b in bars), default=0.0)
    span = CHART_WIDTH - LABEL_WIDTH - 90
    rows = []
    for i, bar in enumerate(bars):
        y = GAP + i * (BAR_HEIGHT + GAP)
        width = 0.0 if top <= 0 else max(bar.value / top * span, 1.0 if bar.value > 0 else 0.0)
        shown = bar.text if bar.text is not None else format_number(bar.value)
        colour = PALETTE[i % len(PALETTE)]
        rows.append(
            f'<g><text x="{LABEL_WIDTH - 8}" y="{y + 17}" text-anchor="end">{escape(bar.label)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" fill="{colour}">'
            f"<title>{escape(bar.label)}: {escape(shown)}{escape(unit)}</title></rect>"
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 17}">{escape(shown)}{escape(unit)}</text></g>'
        )
    if not bars:
        rows.append(f'<text x="8" y="{GAP + 17}">no data yet</text>')
    return (
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(rows)}</svg>"
    )


def format_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return NONE
    if digits == 0 and float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{max(digits, 1)}f}"


def format_seconds(seconds: float | None) -> str:
    """A latency for people: ms below a second, then s, min, h, d."""
    if seconds is None:
        return NONE
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_percent(ratio: float | None) -> str:
    return NONE if ratio is None else f"{ratio * 100:.0f}%"
