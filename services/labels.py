"""Printable label sheets: a QR code and a few lines of text per label, on A4 pages.

The renderer is generic (book and shelf QR labels, link-code slips, …): callers decide what
the QR code holds and what the lines say. QR codes are drawn as vector squares, so they stay
sharp on any school printer; the text uses the bundled DejaVu fonts, so Vietnamese renders.

:func:`catalog_label_items` picks the books, copies or shelves to label; turning them into
deep links is the caller's job (services know nothing about chat platforms).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import segno
from fpdf import FPDF
from sqlalchemy import func, select

from services.common import DomainError
from services.db import Database
from services.models import Copy, Library, Location, Title

FONTS = Path(__file__).resolve().parent / "fonts"


def add_fonts(pdf: FPDF) -> None:
    """Register the bundled DejaVu family (regular "" and bold "B"): it has every Vietnamese glyph."""
    pdf.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
PAGE_W, PAGE_H = 210.0, 297.0          # A4, millimetres
MARGIN_X, MARGIN_Y = 7.0, 10.0          # most printers cannot print closer to the edge
TITLE_H = 8.0
PAD = 2.0                               # inside each label
FONT_PT = 7.5
LINE_H = 3.2                            # millimetres per text line at FONT_PT


@dataclass
class Label:
    """One label: what the QR code encodes, and the text printed beside it (first line bold)."""

    qr_data: str | None
    lines: list[str] = field(default_factory=list)


def render_label_sheet(labels: Sequence[Label], *, columns: int = 3, rows: int = 8,
                       title: str | None = None, guides: bool = True) -> bytes:
    """An A4 PDF with ``columns`` × ``rows`` labels per page (as many pages as needed).

    ``title`` is printed at the top of every page with the page number; ``guides`` draws light
    cutting lines around each label for plain paper.
    """
    if columns < 1 or rows < 1:
        raise ValueError("columns and rows must be at least 1")
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0, 0)
    add_fonts(pdf)
    pdf.set_creator("docsach")
    if title:
        pdf.set_title(title)
    top = MARGIN_Y + (TITLE_H if title else 0.0)
    cell_w = (PAGE_W - 2 * MARGIN_X) / columns
    cell_h = (PAGE_H - top - MARGIN_Y) / rows
    per_page = columns * rows
    pages = max(1, -(-len(labels) // per_page))
    for page in range(pages):
        pdf.add_page()
        if title:
            pdf.set_font("DejaVu", "", 9)
            pdf.set_text_color(60, 60, 60)
            pdf.set_xy(MARGIN_X, MARGIN_Y)
            heading = f"{_nfc(title)} — {page + 1}/{pages}" if pages > 1 else _nfc(title)
            pdf.cell(PAGE_W - 2 * MARGIN_X, 5, fit_text(pdf, heading, PAGE_W - 2 * MARGIN_X))
        for slot, label in enumerate(labels[page * per_page:(page + 1) * per_page]):
            x = MARGIN_X + (slot % columns) * cell_w
            y = top + (slot // columns) * cell_h
            _draw_label(pdf, label, x, y, cell_w, cell_h, guides)
    return bytes(pdf.output())


FONT_SIZES = (FONT_PT, 7.0, 6.5, 6.0)     # shrink before cutting anything


def _draw_label(pdf: FPDF, label: Label, x: float, y: float, w: float, h: float, guides: bool) -> None:
    if guides:
        pdf.set_draw_color(200, 200, 200)
        pdf.set_line_width(0.1)
        pdf.rect(x, y, w, h)
    text_x = x + PAD
    if label.qr_data:  # no QR code rather than one that opens nothing
        side = max(8.0, min(h - 2 * PAD, w * 0.5))
        _draw_qr(pdf, label.qr_data, x + PAD, y + (h - side) / 2, side)
        text_x = x + PAD + side + PAD
    text_w = w - (text_x - x) - PAD
    if text_w < 5 or not label.lines:
        return
    wrapped, size = _layout(pdf, [_nfc(line) for line in label.lines], text_w, h - 2 * PAD)
    line_h = LINE_H * size / FONT_PT
    pdf.set_text_color(0, 0, 0)
    text_y = y + (h - len(wrapped) * line_h) / 2
    for n, (style, part) in enumerate(wrapped):
        pdf.set_font("DejaVu", style, size)
        pdf.set_xy(text_x, text_y + n * line_h)
        pdf.cell(text_w, line_h, part)


def _layout(pdf: FPDF, lines: list[str], width: float, height: float) -> tuple[list[tuple[str, str]], float]:
    """The label's lines wrapped at spaces (the first bold), at the largest size that fits.

    Every line wraps — an instruction such as "Quét để xem sách ở kệ này" or a long call number
    is never cut mid-word; a call number breaks only between its parts. When even the smallest
    size does not fit, the first line (the title) gives up room first, ending in "…"; the codes
    after it (call number, barcode) are kept whole.
    """
    for size in FONT_SIZES:
        capacity = max(1, int(height // (LINE_H * size / FONT_PT)))
        pdf.set_font("DejaVu", "B", size)
        head = _wrap(pdf, lines[0], width) or [""]
        pdf.set_font("DejaVu", "", size)
        rest = [part for line in lines[1:] for part in _wrap(pdf, line, width)]
        if len(head) + len(rest) <= capacity:
            return [("B", part) for part in head] + [("", part) for part in rest], size
    room = max(1, capacity - len(rest))
    pdf.set_font("DejaVu", "B", size)
    if len(head) > room:
        head = head[:room - 1] + [fit_text(pdf, " ".join(head[room - 1:]), width)]
    pdf.set_font("DejaVu", "", size)
    rest = rest[:max(0, capacity - len(head))]
    return [("B", part) for part in head] + [("", part) for part in rest], size


def _draw_qr(pdf: FPDF, data: str, x: float, y: float, side: float) -> None:
    """Dark modules as filled rectangles, one per horizontal run, inside a 2-module quiet zone."""
    qr = segno.make(data, error="m", micro=False)
    matrix = qr.matrix
    quiet = 2
    size = len(matrix) + 2 * quiet
    module = side / size
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if row[c]:
                start = c
                while c < len(row) and row[c]:
                    c += 1
                pdf.rect(x + (start + quiet) * module, y + (r + quiet) * module,
                         (c - start) * module, module, style="F")
            else:
                c += 1


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _wrap(pdf: FPDF, text: str, width: float) -> list[str]:
    """Greedy word wrap by measured width; a word longer than a line breaks after a "." or "-"
    inside it when it has one (call numbers: "PL4378.9.N42"), else it is cut."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if pdf.get_string_width(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while pdf.get_string_width(word) > width:
            cut = len(word)
            while cut > 1 and pdf.get_string_width(word[:cut]) > width:
                cut -= 1
            soft = max(word.rfind(".", 0, cut), word.rfind("-", 0, cut))
            if soft > 0:
                cut = soft + 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def fit_text(pdf: FPDF, text: str, width: float) -> str:
    """``text`` in the current font, cut with "…" so it fits ``width`` mm (one line, never wraps)."""
    if pdf.get_string_width(text) <= width:
        return text
    while text and pdf.get_string_width(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


# -- what to label ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelItem:
    """Something in a library to put a QR label on: ``kind`` "t" title, "c" copy, "l" location."""

    kind: str
    ref: int
    lines: list[str]


KINDS = {"titles": "t", "copies": "c", "shelves": "l"}


async def catalog_label_items(db: Database, what: str, library_code: str, *,
                              location_code: str | None = None, title_ids: Sequence[int] | None = None,
                              limit: int | None = None) -> tuple[str, list[LabelItem]]:
    """The library's name and the titles, copies or shelves/classrooms to label, in shelf order.

    ``what`` is "titles", "copies" or "shelves". Titles and copies can be narrowed to one
    location and/or a list of title ids. Titles are those the library holds a copy of.
    """
    if what not in KINDS:
        raise ValueError(f"what must be one of {sorted(KINDS)}")
    async with db.transaction() as s:
        library = (await s.execute(select(Library).where(Library.code == library_code))).scalar_one_or_none()
        if library is None:
            raise DomainError("labels.no_library", library=library_code)
        location_id = None
        if location_code is not None:
            location_id = (await s.execute(select(Location.id).where(
                Location.library_id == library.id, Location.code == location_code))).scalar_one_or_none()
            if location_id is None:
                raise DomainError("labels.no_location", location=location_code)

        if what == "shelves":
            query = select(Location).where(Location.library_id == library.id)
            if location_id is not None:
                query = query.where(Location.id == location_id)
            query = query.order_by(Location.kind.desc(), Location.code).limit(limit)
            items = [LabelItem("l", loc.id, [loc.name, loc.code])
                     for loc in (await s.execute(query)).scalars()]
            return library.name, items

        copies = select(Copy).where(Copy.library_id == library.id)
        if location_id is not None:
            copies = copies.where(Copy.location_id == location_id)
        if title_ids:
            copies = copies.where(Copy.title_id.in_(list(title_ids)))

        if what == "copies":
            query = (select(Copy, Title, Location).join(Title, Title.id == Copy.title_id)
                     .outerjoin(Location, Location.id == Copy.location_id)
                     .where(Copy.id.in_(copies.with_only_columns(Copy.id).scalar_subquery()))
                     .order_by(Title.call_number, Title.id, Copy.barcode).limit(limit))
            items = [LabelItem("c", copy.id, _book_lines(title) + [copy.barcode] +
                               ([location.code] if location else []))
                     for copy, title, location in (await s.execute(query)).all()]
            return library.name, items

        held = copies.with_only_columns(Copy.title_id).distinct().scalar_subquery()
        query = (select(Title, func.count(Copy.id)).join(Copy, Copy.title_id == Title.id)
                 .where(Title.id.in_(held), Copy.library_id == library.id)
                 .group_by(Title.id).order_by(Title.call_number, Title.id).limit(limit))
        items = [LabelItem("t", title.id, _book_lines(title))
                 for title, _count in (await s.execute(query)).all()]
        return library.name, items


def _book_lines(title: Title) -> list[str]:
    lines = [title.title]
    if title.authors:
        lines.append(title.authors)
    if title.call_number:
        lines.append(title.call_number)
    return lines
