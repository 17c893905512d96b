"""Tables as downloads: CSV (UTF-8 with BOM, opens in Excel) and XLSX, safe to open.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to a
spreadsheet: a book title such as ``=HYPERLINK("http://…")`` typed by anyone who can add a title
would run when a librarian opens the export. Such text cells get a leading apostrophe (OWASP's
advice); numbers stay numbers. The writing itself goes through ``services/spreadsheets.py``, the
one place every CSV/XLSX the project writes is made safe.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime

from services import spreadsheets
from services.spreadsheets import FORMULA_START


def safe_cell(value: object) -> object:
    """A value a spreadsheet shows as typed, never evaluates."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    return spreadsheets.csv_bytes([[safe_cell(h) for h in headers], *([safe_cell(v) for v in row] for row in rows)])


def to_xlsx(headers: Sequence[str], rows: Iterable[Sequence[object]], sheet: str = "docsach") -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "".join(ch for ch in sheet if ch not in "[]:*?/\\")[:31] or "docsach"
    spreadsheets.xlsx_append(ws, [safe_cell(h) for h in headers])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in rows:   # text typed as text: a string stays a string, even one openpyxl would read as a formula
        spreadsheets.xlsx_append(ws, [safe_cell(v) for v in row])
    for column in ws.columns:
        width = max((len(str(c.value or "")) for c in column), default=8)
        ws.column_dimensions[column[0].column_letter].width = min(60, max(8, width + 2))
    buffer = io.BytesIO()
    wb.save(buffer)
    return buffer.getvalue()
