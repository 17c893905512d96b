"""Rejected-row reasons of the catalog and roster imports, in the operator's language (issue 15, CLI)."""

from __future__ import annotations

import csv
import io

from bot import cli
from services import importer
from services.common import Reason
from tests.conftest import Libraries

CATALOG = (
    "Nhan đề;Tác giả;ISBN;Số bản;Kho/kệ\n"
    "Dế Mèn phiêu lưu ký;Tô Hoài;978-604-2-08848-0;1;Kệ A\n"
    ";Không tên;;;\n"
    "Sách hỏng;Ai đó;978-0-00-000000-1;;\n"
    "=cmd|' /C calc'!A0;Ai đó;;nhiều;\n"
    f"Truyện dài;{'Nam Cao ' * 100};;;\n"
)


def _report(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


async def test_cli_import_prints_and_reports_reasons_in_vietnamese(libs: Libraries, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    monkeypatch.setenv("DOCSACH_DEFAULT_LANGUAGE", "vi")
    path = tmp_path / "kho.csv"
    path.write_text(CATALOG, encoding="utf-8")
    assert await cli._main(["import", str(path), "--library", "demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "thêm 2, cập nhật 0, không đổi 0, từ chối 3; thêm 1 bản sách; 1 dòng đã nhập nhưng bị rút gọn" in out
    report = tmp_path / "kho.csv.rejected.csv"
    assert f"Các dòng bị từ chối hoặc rút gọn, kèm lý do: {report}" in out
    header, *rows = _report(report)
    assert header == ["vị trí", "nhan đề", "lý do"]
    assert ["dòng 3", "", "thiếu nhan đề"] in rows
    assert ["dòng 4", "Sách hỏng", "ISBN không hợp lệ: 978-0-00-000000-1"] in rows
    # A title that looks like a formula stays text (the one CSV writer neutralises it).
    assert ["dòng 5", "'=cmd|' /C calc'!A0", "cột số bản không phải là số: nhiều"] in rows
    [shortened] = [row for row in rows if row[0] == "dòng 6"]
    assert shortened[2] == "đã nhập, nhưng tác giả có 799 ký tự; chỉ giữ 500 ký tự đầu"
    assert not any("imports." in cell or "missing" in cell for row in rows for cell in row)


async def test_cli_import_speaks_english_when_the_school_does(libs: Libraries, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    monkeypatch.setenv("DOCSACH_DEFAULT_LANGUAGE", "en")
    path = tmp_path / "kho.csv"
    path.write_text(CATALOG, encoding="utf-8")
    assert await cli._main(["import", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "added 2, updated 0, unchanged 0, rejected 3; copies added 0" in out
    header, *rows = _report(tmp_path / "kho.csv.rejected.csv")
    assert header == ["position", "title", "reason"] and ["row 3", "", "missing title"] in rows
    roster = tmp_path / "hs.csv"
    roster.write_text("card,name,grade\nHS1,An,10\nHS1,Bình,10\nHS2,Chi,13\n", encoding="utf-8")
    assert await cli._main(["import-patrons", str(roster), "--library", "demo"]) == 0
    out = capsys.readouterr().out
    assert "demo: 1 created, 0 updated, 0 unchanged, 2 rejected" in out
    assert "  line 3: card number appears twice in the file (HS1)" in out
    assert "  line 4: grade '13' is not 1–12 (HS2)" in out


def test_every_reason_the_services_give_has_both_languages(libs: Libraries):
    catalogs = libs.app.deps.catalogs
    keys = {"imports.missing_title", "imports.no_title_marc", "imports.invalid_isbn", "imports.copies_not_number",
            "imports.copies_out_of_range", "imports.barcode_too_long", "imports.encoding_error",
            "imports.unclosed_quotes", "imports.barcode_taken", "imports.barcode_twice", "imports.shortened",
            "imports.field_cut", "imports.missing_card", "imports.card_characters", "imports.card_twice",
            "imports.name_missing", "imports.unknown_role", "imports.class_too_long", "imports.grade_range",
            "imports.patrons_summary", "imports.patrons_summary_encoding"}
    keys |= {f"imports.field_{name}" for name in [*importer.LIMITS, "location"]}
    for lang in ("vi", "en"):
        assert keys <= catalogs.keys(lang)
    vi = catalogs.translator("vi", audience="staff")
    reason = Reason("imports.barcode_taken", {"barcode": "VN-1", "title_id": 7})
    assert reason.text(vi) == "mã vạch VN-1 đã thuộc về một nhan đề khác (id 7)"
    assert str(reason) == "imports.barcode_taken (barcode=VN-1, title_id=7)"
