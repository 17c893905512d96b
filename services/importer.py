"""Catalog import: CSV/XLSX spreadsheets and MARC21 (ISO 2709 in UTF-8 or MARC-8, and MARCXML).

Two phases, so a broken file never leaves a half-imported catalog:

1. *parse* the whole file into :class:`Record`s (or :class:`Rejected` rows with a reason); a file
   that cannot be read as a whole (not CSV/XLSX/MARC, no title column, a truncated MARC record,
   broken XML) raises :class:`MalformedFile` before anything is written;
   over-long text (``LIMITS``) is shortened at a word boundary and the row listed in the report;
2. *apply* every record in ONE transaction: match existing titles by ``source_key`` (LCCN, ISBN,
   MARC 001, or a hash of folded title+author+year), else by ISBN-13; update only what differs,
   so importing the same file twice changes nothing the second time.

Holdings (MARC 852/952, or a spreadsheet's barcode / location / copies columns) become copies of
the library given with ``--library``. Library of Congress records carry no holdings: they add
titles only, unless ``copies=N`` asks for at least N copies of each title (barcodes generated
from the title's key, so a re-import does not add more).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit, files, spreadsheets
from services.common import DomainError, Reason
from services.db import Database
from services.models import Copy, CopyStatus, Library, Location, Title
from services.textfold import fold, normalize_isbn

BATCH = 500
FIELDS = ("title", "authors", "isbn13", "publisher", "year", "language", "subjects", "call_number")
# Longest text kept per field: generous for real catalog data (LoC titles with subtitles run to a
# few hundred characters), but a 100,000-character "title" must not reach a chat. Longer text is
# shortened at a word boundary and the row is listed in the report.
LIMITS = {"title": 500, "authors": 500, "publisher": 200, "subjects": 1000}
LOCATION_LIMIT = 100
MAX_FILE_BYTES = 512 * 1024 * 1024    # a province-wide MARC dump is far smaller; /dev/zero is not


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f}".removesuffix(".0")


def read_limited(path: Path, limit: int) -> bytes:
    """The whole file, refusing (MalformedFile, nothing read into memory beyond ``limit``) a file
    larger than ``limit``, a device such as /dev/zero, or a folder."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise MalformedFile(f"{path} is a folder, not a file", "import.catalog_not_a_file", path=str(path))
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            raise MalformedFile(f"{path} is a device, not a file", "import.catalog_not_a_file", path=str(path))
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise MalformedFile(f"the file is {_mb(info.st_size)} MB; at most {_mb(limit)} MB can be "
                                "imported at once (split it into several files)", "import.catalog_too_big",
                                size=_mb(info.st_size), limit=_mb(limit))
        chunks, size = [], 0
        with path.open("rb") as fh:     # a pipe has no size: read up to the limit
            while chunk := fh.read(min(1 << 20, limit + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise MalformedFile(f"the input is larger than {_mb(limit)} MB, the most that can be "
                                        "imported at once (split it into several files)",
                                        "import.catalog_input_too_big", limit=_mb(limit))
        return b"".join(chunks)
    except OSError as exc:
        raise MalformedFile(f"cannot read {path}: {exc.strerror}") from exc


class MalformedFile(DomainError):
    """The file as a whole cannot be imported; nothing was written."""

    def __init__(self, detail: str, key: str = "import.malformed", **params: object) -> None:
        """``detail``: an English sentence for logs (and, with the generic key, for the message);
        ``key`` + ``params``: a message of its own, in the reader's language."""
        super().__init__(key, **(params if key != "import.malformed" else {"detail": detail}))
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


@dataclass
class CopySpec:
    barcode: str | None = None
    location: str | None = None
    status: CopyStatus = CopyStatus.AVAILABLE


@dataclass
class Record:
    """One title as read from a file (one spreadsheet row or one MARC record)."""

    position: str
    title: str
    authors: str = ""
    isbn13: str | None = None
    publisher: str | None = None
    year: int | None = None
    language: str | None = None
    subjects: str = ""
    call_number: str | None = None
    lccn: str | None = None
    control: str | None = None      # MARC 001 (with 003 when present)
    copies: list[CopySpec] = field(default_factory=list)
    min_copies: int = 0             # "copies / số bản" column: at least this many
    shelf: str | None = None        # where generated copies go (spreadsheet location column)
    notes: list[Reason] = field(default_factory=list)   # what was changed on the way in (shortened text)

    @property
    def key(self) -> str:
        """The stable key re-imports match on (``Title.source_key``)."""
        if self.lccn:
            return f"lccn:{self.lccn}"
        if self.isbn13:
            return f"isbn:{self.isbn13}"
        if self.control:
            return f"marc001:{self.control}"[:80]
        basis = "|".join((fold(self.title), fold(self.authors), str(self.year or "")))
        return "h:" + hashlib.sha1(basis.encode()).hexdigest()[:20]

    def values(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in FIELDS}


@dataclass
class Rejected:
    position: str                   # "row 12" (spreadsheets) or "record 3" (MARC): see ``place``
    title: str
    reason: Reason                  # translated by whoever shows it (CLI, desk)
    imported: bool = False          # a warning: the row was imported, but not exactly as written

    @property
    def place(self) -> Reason:
        """The position as a message (row or record number in the reader's language)."""
        kind, _, number = self.position.partition(" ")
        if number.isdigit() and kind in ("row", "record"):
            return Reason(f"imports.{kind}", {"number": int(number)})
        return Reason("imports.position", {"position": self.position})


def _shortened(name: str, length: int, limit: int) -> Reason:
    return Reason("imports.field_cut", {"field": Reason(f"imports.field_{name}"), "length": length, "limit": limit})


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:/.-") + "…"


def cap_fields(record: Record) -> Record:
    """Shorten over-long text fields (see ``LIMITS``), noting each in ``record.notes``."""
    for name, limit in LIMITS.items():
        value = getattr(record, name)
        if value and len(value) > limit:
            setattr(record, name, _cut(value, limit))
            record.notes.append(_shortened(name, len(value), limit))
    if record.shelf and len(record.shelf) > LOCATION_LIMIT:
        record.notes.append(_shortened("location", len(record.shelf), LOCATION_LIMIT))
        record.shelf = _cut(record.shelf, LOCATION_LIMIT)
    for spec in record.copies:
        if spec.location and len(spec.location) > LOCATION_LIMIT:
            note = _shortened("location", len(spec.location), LOCATION_LIMIT)
            if note not in record.notes:
                record.notes.append(note)
            spec.location = _cut(spec.location, LOCATION_LIMIT)
    return record


@dataclass
class ImportSummary:
    format: str = ""
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    warnings: list[Rejected] = field(default_factory=list)   # imported, but changed (see Record.notes)
    copies_added: int = 0
    holdings_ignored: int = 0       # holdings in the file, but no library was given
    report_path: Path | None = None
    report_error: DomainError | None = None     # the report could not be written (disk full…)
    title_ids: list[int] = field(default_factory=list)   # per applied record, in file order
    changed_ids: list[int] = field(default_factory=list)

    def line(self) -> list[Reason]:
        """The summary as messages, shown one after another (the CLI's one-line summary)."""
        parts = [Reason("imports.summary", {"added": self.added, "updated": self.updated,
                                            "unchanged": self.unchanged, "rejected": len(self.rejected),
                                            "copies": self.copies_added})]
        if self.holdings_ignored:
            parts.append(Reason("imports.summary_holdings_ignored", {"count": self.holdings_ignored}))
        if self.warnings:
            parts.append(Reason("imports.summary_shortened", {"count": len(self.warnings)}))
        return parts


# -- text clean-up -----------------------------------------------------------------------------

_QUALITY_MARKS = {"\u0302", "\u0306", "\u031b"}  # circumflex, breve, horn: before the tone mark
_MARK_ON_SPACE = re.compile(r"(\w) ([\u0300-\u036f]+)")
_TRAILING = re.compile(r"[\s/:;,.=+]+$")


def clean(value: object) -> str:
    """NFC text with LoC's decomposed, tone-first Vietnamese diacritics repaired.

    ``Ché̂`` (e + acute + circumflex) becomes ``Chế``: NFC alone cannot compose it, because both
    marks have the same combining class, so vowel-quality marks are moved before tone marks first.
    A mark typed after a space ("Nha ̀xuất") goes back onto the letter before it.
    """
    if value is None:
        return ""
    text = str(value)
    if not text.isascii():
        text = unicodedata.normalize("NFD", text)
        text = _MARK_ON_SPACE.sub(r"\1\2 ", text)
        out: list[str] = []
        run: list[str] = []
        for ch in text + "\x00":
            if unicodedata.combining(ch):
                run.append(ch)
                continue
            if run:
                out.extend(sorted(run, key=lambda c: 0 if c in _QUALITY_MARKS else 1))
                run = []
            out.append(ch)
        text = unicodedata.normalize("NFC", "".join(out[:-1]))
    return " ".join(text.split())


def strip_isbd(value: str) -> str:
    """Drop the trailing ISBD punctuation MARC subfields carry ("Title /" → "Title")."""
    return _TRAILING.sub("", value).strip()


def parse_isbn(raw: object) -> str | None:
    """ISBN-10/13 (maybe hyphenated, maybe with a qualifier like "(pbk.)") → ISBN-13, or None."""
    text = str(raw or "").strip()
    if not text:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        text = str(int(raw))
        if len(text) == 9:  # a spreadsheet ate the leading zero of an ISBN-10
            text = "0" + text
    first = re.split(r"[\s(\[;,]", text.replace("ISBN", "").replace("isbn", "").strip(" :"), maxsplit=1)[0]
    return normalize_isbn(first) or normalize_isbn(text)


def normalize_lccn(raw: str) -> str | None:
    """LC's normalisation: no blanks, nothing from "/" on ("61014599 //r83" → "61014599")."""
    value = raw.replace(" ", "").split("/")[0]
    return value[:60] or None


def parse_year(raw: object) -> int | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        year = int(raw)
        return year if 1000 <= year <= 2100 else None
    match = re.search(r"(1\d{3}|20\d{2}|2100)", str(raw or ""))
    return int(match.group(1)) if match else None


# -- spreadsheets ------------------------------------------------------------------------------

# Folded header names (see textfold.fold) → our field. English and Vietnamese, and the names
# common exports use (Koha, goodreads, LoC CSV).
HEADERS: dict[str, tuple[str, ...]] = {
    "title": ("title", "nhan de", "ten sach", "nhan de chinh", "ten", "book title", "ten an pham"),
    "authors": ("author", "authors", "tac gia", "tac gia chinh", "creator", "but danh"),
    "isbn": ("isbn", "isbn13", "isbn 13", "isbn10", "isbn 10", "ma isbn", "so isbn"),
    "publisher": ("publisher", "nha xuat ban", "nxb", "publishing house"),
    "year": ("year", "nam xuat ban", "nam xb", "nam", "publication year", "publish year",
             "original publication year", "date", "publish date", "publication date", "nam phat hanh"),
    "language": ("language", "ngon ngu", "language code", "lang"),
    "subjects": ("subjects", "subject", "chu de", "tu khoa", "keywords", "the loai", "category"),
    "call_number": ("call number", "ky hieu phan loai", "ky hieu xep gia", "lc class", "ddc",
                    "call no", "callnumber", "phan loai", "ky hieu"),
    "barcode": ("barcode", "so dang ky ca biet", "dkcb", "so dkcb", "ma vach", "ma dkcb"),
    "location": ("location", "kho", "ke", "vi tri", "shelf", "kho ke", "kho sach", "shelving location"),
    "copies": ("copies", "so ban", "so luong", "number of copies", "sl"),
    "lccn": ("lccn",),
}
_ALIAS = {alias: name for name, aliases in HEADERS.items() for alias in aliases}


def map_headers(headers: list[object]) -> dict[str, list[int]]:
    """Which columns hold which field. "Số đăng ký cá biệt (ĐKCB)" matches as a whole or by "(…)"."""
    found: dict[str, list[int]] = {}
    for index, raw in enumerate(headers):
        text = clean(raw)
        candidates = [fold(text), fold(re.sub(r"\(.*?\)", " ", text))]
        candidates += [fold(inner) for inner in re.findall(r"\((.*?)\)", text)]
        for candidate in candidates:
            name = _ALIAS.get(candidate)
            if name:
                found.setdefault(name, []).append(index)
                break
    return found


def _rows_to_records(rows: Iterator[tuple[int, list[object]]], fmt: str) -> Iterator[Record | Rejected]:
    header: dict[str, list[int]] | None = None
    for number, row in rows:
        if header is None:
            if not any(str(c or "").strip() for c in row):
                continue
            header = map_headers(list(row))
            if "title" not in header:
                shown = ", ".join(str(c) for c in row if c not in (None, ""))[:200]
                raise MalformedFile(f"no title column in the header row (found: {shown}); expected one of "
                                    "title / nhan đề / tên sách")
            continue
        if not any(str(c or "").strip() for c in row):
            continue

        def cell(name: str, row=row, header=header) -> object:
            for index in header.get(name, ()):
                if index < len(row) and row[index] not in (None, ""):
                    return row[index]
            return None

        position = f"row {number}"
        title = clean(cell("title"))
        if not title:
            yield Rejected(position, "", Reason("imports.missing_title"))
            continue
        isbn = None
        raw_isbns = [row[i] for i in header.get("isbn", ()) if i < len(row) and str(row[i] or "").strip()]
        for raw in raw_isbns:
            isbn = parse_isbn(raw)
            if isbn:
                break
        if raw_isbns and not isbn:
            yield Rejected(position, title, Reason("imports.invalid_isbn", {"isbn": str(raw_isbns[0]).strip()[:40]}))
            continue
        copies_raw = cell("copies")
        min_copies = 0
        if copies_raw is not None:
            try:
                min_copies = int(float(str(copies_raw).strip()))
            except ValueError:
                yield Rejected(position, title, Reason("imports.copies_not_number", {"value": str(copies_raw)[:20]}))
                continue
            if not 0 <= min_copies <= 500:
                yield Rejected(position, title, Reason("imports.copies_out_of_range", {"count": min_copies}))
                continue
        barcode = clean(cell("barcode")) or None
        if isinstance(cell("barcode"), float):
            barcode = str(int(cell("barcode")))
        if barcode and len(barcode) > 32:
            yield Rejected(position, title, Reason("imports.barcode_too_long", {"barcode": barcode[:40]}))
            continue
        location = clean(cell("location")) or None
        record = Record(
            position=position, title=title, authors=clean(cell("authors")), isbn13=isbn,
            publisher=clean(cell("publisher")) or None, year=parse_year(cell("year")),
            language=(clean(cell("language")).lower()[:8] or None),
            subjects=clean(cell("subjects")), call_number=clean(cell("call_number"))[:64] or None,
            lccn=normalize_lccn(clean(cell("lccn"))), min_copies=min_copies, shelf=location,
        )
        if barcode:
            record.copies.append(CopySpec(barcode=barcode, location=location))
        elif location and not min_copies:
            record.min_copies = 1  # a shelf but no barcode: one copy there
        yield record
    if header is None:
        raise MalformedFile(f"the {fmt} file is empty: no header row")


def read_csv(data: bytes) -> Iterator[Record | Rejected]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"not UTF-8 text (byte {exc.start}); save the spreadsheet as "
                            "\"CSV UTF-8\"") from exc
    if "\x00" in text:
        raise MalformedFile("this is not a text (CSV) file")
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    cut = spreadsheets.ends_inside_quotes(text, delimiter=delimiter)
    partial: list[tuple[int, list[object]]] = []

    def rows() -> Iterator[tuple[int, list[object]]]:
        previous = None
        try:
            for row in reader:
                if previous is not None:
                    yield previous
                previous = reader.line_num, list(row)
        except csv.Error as exc:
            raise MalformedFile(f"CSV line {reader.line_num}: {exc}") from exc
        if previous is not None:
            if cut:   # the file stops inside a quoted field: that row is incomplete, not a title
                partial.append(previous)
            else:
                yield previous

    def records() -> Iterator[Record | Rejected]:
        yield from _rows_to_records(rows(), "CSV")
        for number, row in partial:
            yield Rejected(f"row {number}", clean(row[0] if row else "")[:200],
                           Reason("imports.unclosed_quotes"))

    return records()


def read_xlsx(data: bytes) -> Iterator[Record | Rejected]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:   # zip, XML or openpyxl's own: the workbook is unreadable
        raise MalformedFile(f"not a readable Excel workbook ({exc.__class__.__name__})", "import.xlsx_unreadable",
                            error=exc.__class__.__name__) from exc
    # The first sheet that holds cells: a chart sheet (or a workbook of charts only) has none.
    sheet = next((ws for ws in book.worksheets if hasattr(ws, "iter_rows")), None)
    if sheet is None:
        raise MalformedFile("the Excel workbook has no sheet with rows (only charts?); put the catalog "
                            "on an ordinary sheet", "import.xlsx_charts_only")

    def rows() -> Iterator[tuple[int, list[object]]]:
        number = 0
        try:
            for number, row in enumerate(sheet.iter_rows(values_only=True), 1):
                yield number, list(row)
        except Exception as exc:  # read lazily: a sheet cut short fails mid-way
            raise MalformedFile(f"the Excel sheet cannot be read after row {number} ({exc.__class__.__name__}):"
                                " the file is damaged or was cut short; save it again from Excel",
                                "import.xlsx_damaged", row=number) from exc

    return _rows_to_records(rows(), "Excel")


# -- MARC ------------------------------------------------------------------------------------------

def _subfields(field_, codes: str) -> list[str]:
    return [clean(v) for code, v in ((s.code, s.value) for s in field_.subfields) if code in codes and v]


def marc_record(rec, position: str) -> Record | Rejected:
    """Map one pymarc record: 245 title, 1XX author, 020 ISBN, 260/264, 008, 650, 082/090/050, 852/952."""
    f245 = rec.get("245")
    title = strip_isbd(" ".join(_subfields(f245, "abnp"))) if f245 else ""
    control = None
    if rec.get("001") is not None and rec["001"].data:
        control = rec["001"].data.strip()
        if rec.get("003") is not None and rec["003"].data.strip():
            control = f"{rec['003'].data.strip()}:{control}"
    if not title:
        return Rejected(position, control or "", Reason("imports.no_title_marc"))
    authors = ""
    for tag in ("100", "110", "111"):
        if rec.get(tag) is not None:
            authors = strip_isbd(" ".join(_subfields(rec[tag], "abq" if tag == "100" else "ab")))
            break
    if not authors:
        authors = "; ".join(strip_isbd(" ".join(_subfields(f, "a"))) for f in rec.get_fields("700")[:3])
    isbn = None
    for f in rec.get_fields("020"):
        for value in _subfields(f, "a"):
            isbn = parse_isbn(value)
            if isbn:
                break
        if isbn:
            break
    publisher = None
    for f in rec.get_fields("264", "260"):
        if f.tag == "264" and f.indicator2 not in ("1", " "):
            continue
        names = _subfields(f, "b")
        if names:
            publisher = strip_isbd(names[0])
            break
    year = language = None
    f008 = rec.get("008")
    if f008 is not None and f008.data:
        data = f008.data
        year = int(data[7:11]) if data[7:11].isdigit() and 1000 <= int(data[7:11]) <= 2100 else None
        language = data[35:38].strip() or None if len(data) >= 38 else None
    if year is None:
        for f in rec.get_fields("264", "260"):
            year = parse_year(" ".join(_subfields(f, "c")))
            if year:
                break
    subjects = []
    for f in rec.get_fields("650")[:8]:
        parts = [strip_isbd(v) for v in _subfields(f, "avxyz")]
        if parts:
            subjects.append(" -- ".join(parts))
    call_number = None
    for tag, codes in (("082", "a"), ("090", "ab"), ("050", "ab")):
        f = rec.get(tag)
        if f is not None:
            parts = _subfields(f, codes)
            if parts:
                call_number = " ".join(p.replace("/", "") for p in parts)[:64]
                break
    lccn = None
    if rec.get("010") is not None:
        values = _subfields(rec["010"], "a")
        lccn = normalize_lccn(values[0]) if values else None
    record = Record(position=position, title=title, authors=authors, isbn13=isbn, publisher=publisher,
                    year=year, language=language, subjects=" | ".join(subjects), call_number=call_number,
                    lccn=lccn, control=control)
    for f in rec.get_fields("852", "952"):
        if f.tag == "852":
            barcode = (_subfields(f, "p") or [None])[0]
            location = (_subfields(f, "c") or _subfields(f, "b") or [None])[0]
            status = CopyStatus.AVAILABLE
        else:  # Koha items: $p barcode, $c shelving location, $1 lost, $0 withdrawn
            barcode = (_subfields(f, "p") or [None])[0]
            location = (_subfields(f, "c") or _subfields(f, "a") or [None])[0]
            status = CopyStatus.AVAILABLE
            if any(v not in ("", "0") for v in _subfields(f, "0")):
                status = CopyStatus.WITHDRAWN
            elif any(v not in ("", "0") for v in _subfields(f, "1")):
                status = CopyStatus.LOST
        if barcode and len(barcode) > 32:
            return Rejected(position, title, Reason("imports.barcode_too_long", {"barcode": barcode[:40]}))
        record.copies.append(CopySpec(barcode=barcode, location=location, status=status))
    return record


_STRUCTURAL = ("TruncatedRecord", "RecordLengthInvalid", "EndOfRecordNotFound", "RecordLeaderInvalid",
               "BaseAddressInvalid", "BaseAddressNotFound", "RecordDirectoryInvalid", "FatalReaderError")


def read_marc(data: bytes) -> Iterator[Record | Rejected]:
    from pymarc import MARCReader

    reader = MARCReader(io.BytesIO(data), to_unicode=True, force_utf8=False, hide_utf8_warnings=True)
    count = 0
    for number, rec in enumerate(reader, 1):
        count += 1
        position = f"record {number}"
        if rec is None:
            exc = reader.current_exception
            if isinstance(exc, UnicodeDecodeError):
                yield Rejected(position, "", Reason("imports.encoding_error"))
                continue
            name = exc.__class__.__name__ if exc else "unknown error"
            hint = " — the file is truncated or not MARC21 (ISO 2709)" if name in _STRUCTURAL else ""
            raise MalformedFile(f"MARC {position} cannot be read: {name}{hint}")
        yield marc_record(rec, position)
    if not count:
        raise MalformedFile("the MARC file holds no records")


def read_marcxml(data: bytes) -> Iterator[Record | Rejected]:
    from xml.sax import SAXException

    from pymarc import parse_xml_to_array

    try:
        records = parse_xml_to_array(io.BytesIO(data))
    except (SAXException, ValueError, KeyError, AttributeError) as exc:
        raise MalformedFile(f"broken MARCXML: {exc}") from exc
    if not records:
        raise MalformedFile("the MARCXML file holds no <record>")
    for number, rec in enumerate(records, 1):
        yield marc_record(rec, f"record {number}")


def detect_format(path: Path, data: bytes) -> str:
    """By content first (a renamed file still imports), then by extension."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PK"):
        return "xlsx"
    if head.startswith(b"<"):
        return "marcxml"
    if len(data) >= 24 and data[:5].isdigit() and data[20:24] == b"4500":
        return "marc"
    suffix = path.suffix.lower()
    if suffix in (".mrc", ".marc", ".iso", ".dat"):
        return "marc"
    if suffix == ".xml":
        return "marcxml"
    if suffix in (".xlsx", ".xlsm"):
        return "xlsx"
    return "csv"


READERS = {"csv": read_csv, "xlsx": read_xlsx, "marc": read_marc, "marcxml": read_marcxml}


def parse_file(path: Path | str, *, progress: bool = False) -> tuple[str, list[Record], list[Rejected]]:
    """Read the whole file (phase 1). Raises :class:`MalformedFile`; writes nothing."""
    path = Path(path)
    data = read_limited(path, MAX_FILE_BYTES)
    if not data.strip():
        raise MalformedFile("the file is empty")
    fmt = detect_format(path, data)
    records: list[Record] = []
    rejected: list[Rejected] = []
    items: Iterable[Record | Rejected] = READERS[fmt](data)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="reading", unit=" rec", file=sys.stderr, leave=False)
    for item in items:
        if isinstance(item, Record):
            records.append(cap_fields(item))
        else:
            item.title = _cut(item.title, LIMITS["title"])
            rejected.append(item)
    return fmt, records, rejected


# -- applying to the database ---------------------------------------------------------------------

def _merge(records: list[Record]) -> list[Record]:
    """Rows with the same key are one title (spreadsheets often list one row per copy)."""
    merged: dict[str, Record] = {}
    for record in records:
        first = merged.get(record.key)
        if first is None:
            merged[record.key] = record
            continue
        first.copies.extend(record.copies)
        first.min_copies = max(first.min_copies, record.min_copies)
        for name in FIELDS:
            if not getattr(first, name) and getattr(record, name):
                setattr(first, name, getattr(record, name))
    return list(merged.values())


def _location_code(name: str) -> str:
    code = re.sub(r"[^A-Z0-9]+", "-", fold(name).upper()).strip("-")
    return (code or "LOC")[:32]


def _auto_barcode(key: str, n: int) -> str:
    return f"AUTO-{hashlib.sha1(key.encode()).hexdigest()[:10].upper()}-{n}"


def db_clock(session: AsyncSession):
    """The database's own current time, as late as possible within the transaction (PostgreSQL's
    now() is the transaction's start): pollers compare against it (see services/search.py)."""
    return func.clock_timestamp() if session.get_bind().dialect.name == "postgresql" else func.now()


class _Copies:
    """One library's copies and locations, loaded once per import."""

    def __init__(self, library: Library) -> None:
        self.library = library
        self.by_barcode: dict[str, Copy] = {}
        self.per_title: dict[int, int] = {}
        self.locations: dict[str, Location] = {}
        self.claimed: dict[str, str] = {}

    async def load(self, s: AsyncSession) -> None:
        for copy in (await s.execute(select(Copy).where(Copy.library_id == self.library.id))).scalars():
            self.by_barcode[copy.barcode] = copy
            self.per_title[copy.title_id] = self.per_title.get(copy.title_id, 0) + 1
        for loc in (await s.execute(select(Location).where(Location.library_id == self.library.id))).scalars():
            self.locations.setdefault(fold(loc.code), loc)
            self.locations.setdefault(fold(loc.name), loc)

    async def location(self, s: AsyncSession, name: str | None) -> Location | None:
        if not name:
            return None
        found = self.locations.get(fold(name))
        if found is None:
            code = _location_code(name)
            found = self.locations.get(fold(code))
        if found is None:
            found = Location(library_id=self.library.id, code=code, name=name[:200], kind="shelf")
            s.add(found)
            await s.flush()
            self.locations[fold(name)] = self.locations[fold(code)] = found
        return found

    def conflict(self, record: Record, title_id: int | None) -> Reason | None:
        """A barcode of this record that is another title's copy (in the library, or earlier in the file)."""
        for spec in record.copies:
            if not spec.barcode:
                continue
            copy = self.by_barcode.get(spec.barcode)
            if copy is not None and copy.title_id != title_id:
                return Reason("imports.barcode_taken", {"barcode": spec.barcode, "title_id": copy.title_id})
            owner = self.claimed.get(spec.barcode)
            if owner is not None and owner != record.key:
                return Reason("imports.barcode_twice", {"barcode": spec.barcode})
        return None

    def claim(self, record: Record) -> None:
        for spec in record.copies:
            if spec.barcode:
                self.claimed.setdefault(spec.barcode, record.key)

    async def apply(self, s: AsyncSession, record: Record, title: Title, at_least: int) -> tuple[int, bool]:
        """Create or move this record's copies. Returns (copies added, anything changed)."""
        added, changed = 0, False
        for n, spec in enumerate(record.copies, 1):
            barcode = spec.barcode or _auto_barcode(record.key, n)
            where = await self.location(s, spec.location)
            copy = self.by_barcode.get(barcode)
            if copy is None:
                copy = Copy(title_id=title.id, library_id=self.library.id, barcode=barcode,
                            location_id=where.id if where else None, status=spec.status)
                s.add(copy)
                self.by_barcode[barcode] = copy
                self.per_title[title.id] = self.per_title.get(title.id, 0) + 1
                added += 1
            elif where is not None and copy.location_id != where.id:
                copy.location_id = where.id
                changed = True
        wanted = max(at_least, record.min_copies)
        n = len(record.copies)
        where = await self.location(s, record.shelf)
        while self.per_title.get(title.id, 0) < wanted:
            n += 1
            barcode = _auto_barcode(record.key, n)
            if barcode in self.by_barcode:
                continue
            copy = Copy(title_id=title.id, library_id=self.library.id, barcode=barcode,
                        location_id=where.id if where else None)
            s.add(copy)
            self.by_barcode[barcode] = copy
            self.per_title[title.id] = self.per_title.get(title.id, 0) + 1
            added += 1
        return added, changed or added > 0


async def apply_records(s: AsyncSession, records: list[Record], *, library: Library | None = None,
                        copies: int = 0, progress: bool = False,
                        summary: ImportSummary | None = None) -> ImportSummary:
    """Phase 2, inside the caller's transaction: add or update titles (and copies of ``library``)."""
    summary = summary or ImportSummary()
    groups = _merge(records)
    stock = None
    if library is not None:
        stock = _Copies(library)
        await stock.load(s)
    else:
        summary.holdings_ignored += sum(len(r.copies) for r in groups)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(groups), desc="importing", unit=" title", file=sys.stderr)
    by_key: dict[str, int] = {}
    for start in range(0, len(groups), BATCH):
        batch = groups[start:start + BATCH]
        keys = [r.key for r in batch]
        existing = {t.source_key: t for t in
                    (await s.execute(select(Title).where(Title.source_key.in_(keys)))).scalars()}
        isbns = [r.isbn13 for r in batch if r.isbn13 and r.key not in existing]
        by_isbn: dict[str, Title] = {}
        if isbns:
            rows = await s.execute(select(Title).where(Title.isbn13.in_(isbns)).order_by(Title.id))
            for t in rows.scalars():
                by_isbn.setdefault(t.isbn13, t)
        pending: list[tuple[Record, Title, str]] = []
        for record in batch:
            title = existing.get(record.key) or (by_isbn.get(record.isbn13) if record.isbn13 else None)
            if stock is not None:
                problem = stock.conflict(record, title.id if title else None)
                if problem:
                    summary.rejected.append(Rejected(record.position, record.title, problem))
                    continue
                stock.claim(record)
            if title is None:
                title = Title(source_key=record.key, **record.values())
                s.add(title)
                state = "added"
            else:
                diff = {k: v for k, v in record.values().items() if v not in (None, "") and getattr(title, k) != v}
                for name, value in diff.items():
                    setattr(title, name, value)
                state = "updated" if diff else "unchanged"
            pending.append((record, title, state))
        await s.flush()  # ids for the new titles
        for record, title, state in pending:
            if stock is not None:
                added, changed = await stock.apply(s, record, title, copies)
                summary.copies_added += added
                if changed and state == "unchanged":
                    state = "updated"
            setattr(summary, state, getattr(summary, state) + 1)
            if state != "unchanged":
                summary.changed_ids.append(title.id)
            by_key[record.key] = title.id
        await s.flush()
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    # Stamp changed titles with the database clock as late as possible, so search indexes in other
    # processes that poll ``updated_at`` see them (see CatalogSearch.refresh).
    for start in range(0, len(summary.changed_ids), BATCH):
        chunk = summary.changed_ids[start:start + BATCH]
        await s.execute(update(Title).where(Title.id.in_(chunk)).values(updated_at=db_clock(s))
                        .execution_options(synchronize_session=False))
    summary.title_ids = [by_key.get(r.key, 0) for r in records]
    return summary


def report_destination(path: Path, report: Path | None = None) -> tuple[Path, bool]:
    """Where the report of rejected and shortened rows will go, decided before importing:
    ``report`` when given (a DomainError if it cannot be written), else ``FILE.rejected.csv``
    beside the input, else (that folder is read-only) the current directory. The flag says the
    report moved to the current directory, so the caller can say so up front."""
    if report is not None:
        return files.check_writable(report), False
    beside = path.with_name(path.name + ".rejected.csv")
    try:
        return files.check_writable(beside), False
    except DomainError:
        return files.check_writable(Path.cwd() / beside.name), True


Translate = Callable[..., str]   # a translator: t(key, **params) -> text in the reader's language


def report_table(rejected: list[Rejected], t: Translate | None) -> list[list[str]]:
    """The report's header and rows, in the language of ``t`` (the operator's). Without a
    translator (a caller with no language) positions stay "row N" and reasons show their keys."""
    if t is None:
        return [["position", "title", "reason"], *([r.position, r.title, str(r.reason)] for r in rejected)]
    return [[t("imports.col_position"), t("imports.col_title"), t("imports.col_reason")],
            *([r.place.text(t), r.title, r.reason.text(t)] for r in rejected)]


def write_report(path: Path, rejected: list[Rejected], report: Path | None = None,
                 t: Translate | None = None) -> Path | None:
    """Write the rows (rejected, or imported with a warning) and their reasons, translated with ``t``,
    to ``report`` (default: see :func:`report_destination`). A clean import removes a stale default
    report. spreadsheets.write_csv neutralises formulas."""
    if not rejected:
        target = report or path.with_name(path.name + ".rejected.csv")
        if report is None and target.exists():
            try:
                target.unlink()
            except OSError:
                pass
        return None
    target = report or report_destination(path)[0]
    body = io.StringIO()
    spreadsheets.write_csv(body, report_table(rejected, t))
    return files.write_text(target, body.getvalue())


async def import_file(db: Database, path: Path | str, *, library_code: str | None = None, copies: int = 0,
                      progress: bool = False, report: Path | None = None, channel: str = "cli",
                      actor_patron_id: int | None = None, t: Translate | None = None) -> ImportSummary:
    """Import a catalog file in one transaction; see the module docstring. ``t`` translates the
    report's reasons (the operator's language)."""
    path = Path(path)
    if report is not None:
        files.check_writable(report)   # say so before importing, not after
    fmt, records, rejected = parse_file(path, progress=progress)
    summary = ImportSummary(format=fmt, rejected=rejected,
                            warnings=[Rejected(r.position, r.title, Reason("imports.shortened",
                                                                           {"changes": list(r.notes)}), True)
                                      for r in records if r.notes])
    async with db.transaction() as s:
        library = None
        if library_code:
            library = (await s.execute(select(Library).where(Library.code == library_code))).scalar_one_or_none()
            if library is None:
                raise DomainError("import.no_library", code=library_code)
        elif copies:
            raise DomainError("import.copies_need_library")
        await apply_records(s, records, library=library, copies=copies, progress=progress, summary=summary)
        audit.record(s, "catalog.import", "title", None, actor_patron_id=actor_patron_id,
                     library_id=library.id if library else None, channel=channel, file=path.name,
                     format=fmt, added=summary.added, updated=summary.updated, unchanged=summary.unchanged,
                     rejected=len(summary.rejected), copies_added=summary.copies_added)
    try:
        summary.report_path = write_report(path, summary.rejected + summary.warnings, report, t)
    except DomainError as exc:   # the import itself is committed; say why the report is missing
        summary.report_error = exc
    return summary
