"""Server-rendered SVG charts: readable on screen and on paper, no script, no library.

Each data point carries ``data-label`` and ``data-value`` (and a <title> tooltip), so the
numbers beside the chart, the download and the drawing can be checked against each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 260
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 14, 42
INK, GRID, BAR, LINE = "#1d2430", "#d7dce3", "#1f5fa8", "#a3261b"


def _nice_max(value: float) -> int:
    if value <= 5:
        return 5
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        top = step * magnitude
        if top >= value:
            return int(top)
    return int(10 * magnitude)


def _frame(points: int, top: int, labels: Sequence[str], label_every: int) -> list[str]:
    inner_w, inner_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    out = []
    for i in range(5):
        value = top * i / 4
        y = PAD_T + inner_h - inner_h * i / 4
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{WIDTH - PAD_R}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{INK}">'
                   f'{value:g}</text>')
    step = inner_w / max(points, 1)
    for i, label in enumerate(labels):
        if i % label_every == 0:
            x = PAD_L + step * (i + 0.5)
            out.append(f'<text x="{x:.1f}" y="{HEIGHT - PAD_B + 16}" text-anchor="middle" font-size="11" '
                       f'fill="{INK}">{escape(label)}</text>')
    return out


def chart(kind: str, data: Sequence[tuple[str, int]], *, title: str, chart_id: str,
          short_labels: Sequence[str] | None = None) -> Markup:
    """A bar or line chart of (label, value) pairs."""
    labels = [str(label) for label, _ in data]
    short = list(short_labels) if short_labels is not None else labels
    values = [int(v) for _, v in data]
    top = _nice_max(max(values, default=0))
    inner_w, inner_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    step = inner_w / max(len(values), 1)
    label_every = max(1, -(-len(values) // 12))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'id="{escape(chart_id)}" class="plot" data-kind="{kind}" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>', *_frame(len(values), top, short, label_every)]
    coords, marks = [], []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = PAD_L + step * (i + 0.5)
        h = inner_h * value / top if top else 0
        y = PAD_T + inner_h - h
        tip = f"<title>{escape(label)}: {value}</title>"
        if kind == "bar":
            w = max(1.0, step * 0.7)
            marks.append(f'<rect class="point" x="{x - w / 2:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{BAR}" data-label="{escape(label)}" data-value="{value}">{tip}</rect>')
        else:
            coords.append(f"{x:.1f},{y:.1f}")
            marks.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{LINE}" '
                         f'data-label="{escape(label)}" data-value="{value}">{tip}</circle>')
    if coords:
        parts.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{LINE}" stroke-width="2"/>')
    parts.extend(marks)
    parts.append(f'<line x1="{PAD_L}" y1="{PAD_T + inner_h}" x2="{WIDTH - PAD_R}" y2="{PAD_T + inner_h}" '
                 f'stroke="{INK}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(data: Sequence[tuple[str, int]], *, title: str, chart_id: str) -> Markup:
    """Horizontal bars for categories (classes, titles): long labels stay readable."""
    rows = list(data)
    row_h, label_w = 22, 230
    height = PAD_T + row_h * max(len(rows), 1) + 10
    top = _nice_max(max((v for _, v in rows), default=0))
    inner_w = WIDTH - label_w - PAD_R - 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'id="{escape(chart_id)}" class="plot" data-kind="hbar" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>"]
    for i, (label, value) in enumerate(rows):
        y = PAD_T + i * row_h
        w = inner_w * value / top if top else 0
        text = label if len(label) <= 34 else label[:33] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12" fill="{INK}">'
                     f'{escape(text)}</text>')
        parts.append(f'<rect class="point" x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row_h - 6}" '
                     f'fill="{BAR}" data-label="{escape(label)}" data-value="{value}">'
                     f"<title>{escape(label)}: {value}</title></rect>")
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" font-size="12" fill="{INK}">{value}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
