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


COLUMN_WIDTH = 54
COLUMN_AREA = 150  # the tallest column's height


def column_chart(title: str, columns: list[Bar], *, unit: str = "") -> str:
    """Vertical columns left to right (a series over time), each labelled below and valued above."""
    top = max((c.value for c in columns), default=0.0)
    width = max(len(columns), 1) * (COLUMN_WIDTH + GAP) + GAP
    base = 20 + COLUMN_AREA
    parts = []
    for i, column in enumerate(columns):
        x = GAP + i * (COLUMN_WIDTH + GAP)
        height = 0.0 if top <= 0 else max(column.value / top * COLUMN_AREA, 1.0 if column.value > 0 else 0.0)
        shown = column.text if column.text is not None else format_number(column.value)
        middle = x + COLUMN_WIDTH / 2
        parts.append(
            f'<g><rect x="{x}" y="{base - height:.1f}" width="{COLUMN_WIDTH}" height="{height:.1f}" '
            f'fill="{PALETTE[0]}"><title>{escape(column.label)}: {escape(shown)}{escape(unit)}</title></rect>'
            f'<text x="{middle:.1f}" y="{base - height - 4:.1f}" text-anchor="middle">{escape(shown)}</text>'
            f'<text x="{middle:.1f}" y="{base + 16}" text-anchor="middle" class="axis">'
            f"{escape(column.label)}</text></g>"
        )
    if not columns:
        parts.append(f'<text x="8" y="{base}">no data yet</text>')
    return (
        f'<svg class="chart columns" viewBox="0 0 {width} {base + 24}" width="{width}" height="{base + 24}" '
        f'role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(parts)}</svg>"
    )
