"""Catalog import from real files: MARC21 (UTF-8, MARC-8), MARCXML, CSV and XLSX."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import pytest
from pymarc import Field, Indicators, Record, Subfield
from sqlalchemy import func, select

from services import importer
from services.common import DomainError
from services.db import Database
from services.demo import load_demo
from services.models import AuditEntry, Copy, Location, Title
from tests.conftest import SHARED_DATA

DATA = Path(__file__).parent / "data"


def _copy(tmp_path: Path, name: str, source: Path = DATA) -> Path:
    target = tmp_path / name
    shutil.copy(source / name, target)
    target.chmod(0o644)
    return target


async def _count(db: Database, model=Title) -> int:
    async with db.session() as s:
        return await s.scalar(select(func.count()).select_from(model))


async def test_vietnamese_marc_is_repaired_to_nfc_and_reimport_changes_nothing(db, tmp_path):
    path = _copy(tmp_path, "loc_booksall2016_vie.mrc")
    first = await importer.import_file(db, path)
    assert (first.format, first.added, first.updated, len(first.rejected)) == ("marc", 121, 0, 0)
    async with db.session() as s:
        titles = (await s.execute(select(Title))).scalars().all()
        by_key = {t.source_key: t for t in titles}
    assert all(unicodedata.is_normalized("NFC", t.title + t.authors + (t.publisher or "")) for t in titles)
    ngoi_chua = by_key["lccn:00236597"]
    assert ngoi_chua.title == "Ngôi chùa, một vùng tâm thức, một vùng thi ca = Thiền lâm chư gia đề vịnh thi"
    assert ngoi_chua.language == "vie" and ngoi_chua.year == 2001
    # LoC stacks the tone mark before the circumflex ("Ché̂"): repaired to the composed letter
    assert any("ế" in t.title + t.authors for t in titles)
    assert not any("\u0301" in unicodedata.normalize("NFC", t.title) for t in titles)

    second = await importer.import_file(db, path)
    assert (second.added, second.updated, second.unchanged) == (0, 0, 121)
    assert await _count(db) == 121
    async with db.session() as s:
        audit = (await s.execute(select(AuditEntry).where(AuditEntry.action == "catalog.import"))).scalars().all()
    assert len(audit) == 2 and audit[0].details["added"] == 121


async def test_marc8_and_utf8_records_import_the_same(db, tmp_path):
    summary = await importer.import_file(db, _copy(tmp_path, "pymarc_test_marc8_20recs.mrc"))
    assert summary.added == 20
    async with db.session() as s:
        pragmatic = (await s.execute(select(Title).where(Title.title.like("The pragmatic programmer%")))).scalar_one()
    assert pragmatic.isbn13 == "9780201616224"          # 020161622X, normalised to ISBN-13
    assert pragmatic.title == "The pragmatic programmer : from journeyman to master"
    assert pragmatic.authors.startswith("Hunt, Andrew")

    marc8 = await importer.import_file(db, _copy(tmp_path, "pymarc_test_marc8_diacritics.mrc"))
    utf8 = await importer.import_file(db, _copy(tmp_path, "pymarc_test_utf8_diacritics.mrc"))
    assert marc8.added == 1 and (utf8.added, utf8.updated, utf8.unchanged) == (0, 0, 1)


async def test_marcxml_real_files(db, tmp_path):
    batch = await importer.import_file(db, _copy(tmp_path, "pymarc_test_batch.xml"))
    assert (batch.format, batch.added) == ("marcxml", 2)
    sample = SHARED_DATA / "loc_booksall2016_sample200.xml"
    summary = await importer.import_file(db, _copy(tmp_path, sample.name, SHARED_DATA))
    assert summary.added + summary.updated + summary.unchanged == 200 and not summary.rejected
    again = await importer.import_file(db, tmp_path / sample.name)
    assert again.unchanged == 200


CSV_VI = (
    "\ufeffNhan đề;Tác giả;ISBN;Nhà xuất bản;Năm xuất bản;Số đăng ký cá biệt (ĐKCB);Kho/kệ\n"
    "Dế Mèn phiêu lưu ký;Tô Hoài;978-604-2-08848-0;Kim Đồng;2019;VN-001;Kệ A — Văn học Việt Nam\n"
    "Dế Mèn phiêu lưu ký;Tô Hoài;978-604-2-08848-0;Kim Đồng;2019;VN-002;Góc đọc lớp 10A1\n"
    "Bỉ vỏ;Nguyên Hồng;;NXB Văn học;1938;VN-003;Kệ mới\n"
    "Sách hỏng;Ai đó;978-0-00-000000-1;;;;\n"
    ";Không tên;;;;;\n"
    "Bỉ vỏ bản khác;Nguyên Hồng;;;;VN-001;\n"
)


async def test_csv_with_vietnamese_headers_bom_copies_and_rejected_report(db, tmp_path):
    await load_demo(db)
    path = tmp_path / "kho.csv"
    path.write_text(CSV_VI, encoding="utf-8")
    summary = await importer.import_file(db, path, library_code="demo")
    assert (summary.added, summary.copies_added) == (2, 3)
    reasons = sorted(r.reason.key for r in summary.rejected)
    assert reasons == ["imports.barcode_twice", "imports.invalid_isbn", "imports.missing_title"]
    assert any(r.reason.params == {"barcode": "VN-001"} for r in summary.rejected)
    report = path.with_name("kho.csv.rejected.csv")
    assert summary.report_path == report and "imports.invalid_isbn" in report.read_text(encoding="utf-8")
    async with db.session() as s:
        de_men = (await s.execute(select(Title).where(Title.isbn13 == "9786042088480"))).scalar_one()
        copies = (await s.execute(select(Copy.barcode, Location.name).join(Location)
                                  .where(Copy.title_id == de_men.id).order_by(Copy.barcode))).all()
        new_shelf = (await s.execute(select(Location).where(Location.name == "Kệ mới"))).scalar_one()
    assert de_men.source_key == "isbn:9786042088480" and de_men.publisher == "Kim Đồng"
    assert [tuple(c) for c in copies] == [("VN-001", "Kệ A — Văn học Việt Nam"), ("VN-002", "Góc đọc lớp 10A1")]
    assert new_shelf.code == "KE-MOI"

    again = await importer.import_file(db, path, library_code="demo")
    assert (again.added, again.updated, again.unchanged, again.copies_added) == (0, 0, 2, 0)
    assert len(again.rejected) == 3
    assert any(r.reason.key == "imports.barcode_taken" and r.reason.params["barcode"] == "VN-001"
               for r in again.rejected)


async def test_xlsx_written_with_openpyxl(db, tmp_path):
    from openpyxl import Workbook

    await load_demo(db)
    book = Workbook()
    sheet = book.active
    sheet.append(["Title", "Author(s)", "ISBN", "Year", "Copies", "Location", "Subjects"])
    sheet.append(["The Hunger Games", "Suzanne Collins", 439023483, 2008, 2, "Kệ B — Thiếu nhi", "Dystopia"])
    sheet.append(["Nhà giả kim", "Paulo Coelho", "9786045827864", "2013", 1, None, None])
    sheet.append([None, None, None, None, None, None, None])
    sheet.append(["Bad copies", "X", None, None, "many", None, None])
    path = tmp_path / "catalog.xlsx"
    book.save(path)
    summary = await importer.import_file(db, path, library_code="demo")
    assert (summary.format, summary.added, summary.copies_added, len(summary.rejected)) == ("xlsx", 2, 3, 1)
    async with db.session() as s:
        hunger = (await s.execute(select(Title).where(Title.title == "The Hunger Games"))).scalar_one()
    assert hunger.isbn13 == "9780439023481" and hunger.year == 2008   # the leading zero came back
    again = await importer.import_file(db, path, library_code="demo")
    assert (again.added, again.updated, again.unchanged, again.copies_added) == (0, 0, 2, 0)


def _marc_with_holdings() -> bytes:
    record = Record(force_utf8=True)
    record.leader = record.leader[:9] + "a" + record.leader[10:]
    record.add_field(Field(tag="001", data="KOHA-77"))
    record.add_field(Field(tag="245", indicators=Indicators("1", "0"),
                           subfields=[Subfield("a", "Tắt đèn /"), Subfield("c", "Ngô Tất Tố.")]))
    record.add_field(Field(tag="100", indicators=Indicators("1", " "), subfields=[Subfield("a", "Ngô, Tất Tố.")]))
    record.add_field(Field(tag="082", indicators=Indicators("0", "4"), subfields=[Subfield("a", "895.9223")]))
    for barcode, shelf in (("TD-1", "Kệ A — Văn học Việt Nam"), ("TD-2", "Kho sách mới")):
        record.add_field(Field(tag="952", indicators=Indicators(" ", " "),
                               subfields=[Subfield("a", "DEMO"), Subfield("c", shelf), Subfield("p", barcode)]))
    record.add_field(Field(tag="852", indicators=Indicators(" ", " "), subfields=[Subfield("b", "Góc đọc lớp 11A1")]))
    return record.as_marc()


async def test_marc_holdings_become_copies_once(db, tmp_path):
    await load_demo(db)
    path = tmp_path / "koha.mrc"
    path.write_bytes(_marc_with_holdings())
    titles_only = await importer.import_file(db, path)
    assert titles_only.added == 1 and titles_only.holdings_ignored == 3
    summary = await importer.import_file(db, path, library_code="demo")
    assert (summary.updated, summary.copies_added) == (1, 3)
    async with db.session() as s:
        rows = (await s.execute(select(Copy.barcode, Location.name).join(Location).join(Title)
                                .where(Title.source_key == "marc001:KOHA-77").order_by(Copy.barcode))).all()
    assert [r[1] for r in rows][:2] == ["Kệ A — Văn học Việt Nam", "Góc đọc lớp 11A1"] or len(rows) == 3
    assert {r[0] for r in rows} >= {"TD-1", "TD-2"}
    again = await importer.import_file(db, path, library_code="demo")
    assert (again.unchanged, again.copies_added) == (1, 0)


async def test_copies_option_for_records_without_holdings(db, tmp_path):
    await load_demo(db)
    path = _copy(tmp_path, "pymarc_test_marc8_20recs.mrc")
    with pytest.raises(DomainError):
        await importer.import_file(db, path, copies=1)          # copies need a library
    with pytest.raises(DomainError):
        await importer.import_file(db, path, library_code="nope")
    first = await importer.import_file(db, path, library_code="demo", copies=2)
    assert first.copies_added == 40
    again = await importer.import_file(db, path, library_code="demo", copies=2)
    assert again.copies_added == 0 and again.unchanged == 20


@pytest.mark.parametrize("name, content, message", [
    ("truncated.mrc", None, "truncated"),
    ("no_title.csv", "author,isbn\nTô Hoài,\n".encode(), "no title column"),
    ("broken.xml", b"<collection><record><datafield tag='245'>", "MARCXML"),
    ("empty.csv", b"   \n", "empty"),
    ("latin1.csv", "title\nCon hổ\n".encode("utf-16"), "UTF-8"),
    ("garbage.xlsx", b"PK\x03\x04 not really a zip", "Excel"),
])
async def test_malformed_file_aborts_and_changes_nothing(db, tmp_path, name, content, message):
    await importer.import_file(db, _copy(tmp_path, "pymarc_test_batch.xml"))
    before = await _count(db)
    if content is None:  # a real MARC file cut in the middle of its 10th record
        data = (DATA / "loc_booksall2016_vie.mrc").read_bytes()
        content = data[: data.index(b"\x1d", 9 * 700) + 300]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(importer.MalformedFile) as caught:
        await importer.import_file(db, path)
    assert message.lower() in caught.value.detail.lower()
    assert await _count(db) == before


def test_header_aliases_and_cleaning():
    found = importer.map_headers(["Nhan đề", "Tác giả", "Số đăng ký cá biệt (ĐKCB)", "Kho/kệ", "số bản",
                                  "Ký hiệu phân loại", "Năm xuất bản", "ISBN-13", "Chủ đề", "language"])
    assert list(found) == ["title", "authors", "barcode", "location", "copies", "call_number", "year",
                           "isbn", "subjects", "language"]
    assert importer.clean("Che\u0301\u0302 Lan Viên") == "Chế Lan Viên"
    assert importer.clean("Nha \u0300xuất bản") == "Nhà xuất bản"
    assert importer.parse_isbn("0-7868-0560-9 (pbk.)") == "9780786805600"
    assert importer.parse_isbn("0786805608") is None
    assert importer.normalize_lccn("61014599 //r83") == "61014599"
