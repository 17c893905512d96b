"""What a school prints in its first week, rendered and read back: link-code slips (school, expiry
in school time, one instruction; no QR code without a bot name), shelf labels whose instruction and
call numbers are never cut, and certificates with the place and date line and a signature block."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pypdfium2

from services.campaigns import render_certificate
from services.labels import Label, render_label_sheet
from tests.test_labels import decode_pdf, pdf_text


def test_labels_wrap_instructions_and_call_numbers_instead_of_cutting_them():
    labels = [Label(f"https://t.me/b?start=l{n}", ["Kệ A — Văn học Việt Nam", "KE-A", "Quét để xem sách ở đây"])
              for n in range(3)]
    labels.append(Label("https://t.me/b?start=t9", ["Ngữ văn 10 - Tập một (Kết nối tri thức với cuộc sống)",
                                                    "Bùi Mạnh Hùng (Tổng chủ biên)", "PL4378.9.N42 T78 1999 v.2",
                                                    "DS000709"]))
    pdf = render_label_sheet(labels, columns=3, rows=8, title="Thư viện")
    text = pdf_text(pdf)
    words = " ".join(text.split())
    assert "…" not in text
    assert words.count("Quét để xem sách ở đây") == 3
    for token in ("PL4378.9.N42", "T78", "1999", "v.2", "DS000709"):
        assert token in text.split(), token
    assert len(decode_pdf(pdf)[0]) == 4


def test_a_label_without_a_qr_code_is_text_only():
    pdf = render_label_sheet([Label(None, ["Nguyễn Văn An", "Mã: ABCD-EFGH"])])
    assert decode_pdf(pdf) == [[]] and "ABCD-EFGH" in pdf_text(pdf)


async def test_link_slips_say_school_expiry_and_what_to_do(libs, clock, catalogs):
    from handlers.account import slips_pdf
    from services import accounts

    clock.set(datetime(2026, 12, 1, 18, 30, tzinfo=UTC))     # 01:30 on 2 December in Lào Cai
    issued = await accounts.issue_link_codes(libs.db, await libs.actor("TT001"), class_name="10A1", clock=clock)
    t = catalogs.translator("vi", audience="student")
    pdf = await slips_pdf(issued, link=lambda payload: f"https://t.me/docsach_demo_bot?start={payload}", t=t,
                          school="Trường THPT Demo Lào Cai")
    text = " ".join(pdf_text(pdf).split())
    # 14 days from 2 December in school time (in UTC it is still 1 December: the slip must not say so)
    assert "Dùng được đến hết ngày 16/12/2026" in text and "15/12/2026" not in text
    assert "Trường THPT Demo Lào Cai" in text and "Quét mã QR bằng điện thoại, hoặc nhắn mã này cho trợ lý" in text
    assert all(item.code in text for item in issued)
    assert sorted(decode_pdf(pdf)[0]) == sorted(f"https://t.me/docsach_demo_bot?start={i.payload}" for i in issued)

    bare = await slips_pdf(issued, link=lambda payload: None, t=t, school="Trường THPT Demo Lào Cai")
    # nothing can open a link yet: the QR code holds the code itself (a scanner shows it), never a dead link
    assert sorted(decode_pdf(bare)[0]) == sorted(i.code for i in issued)
    assert "Nhắn mã này cho trợ lý thư viện docsach" in " ".join(pdf_text(bare).split())


async def test_cli_warns_when_printed_codes_cannot_open_anything(libs, monkeypatch, capsys, tmp_path):
    from bot import cli

    monkeypatch.setenv("DOCSACH_DATABASE_URL", libs.db.url)
    for name in ("TELEGRAM_BOT_USERNAME", "TELEGRAM_BOT_TOKEN", "DOCSACH_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "codes.pdf"
    assert await cli._main(["link-codes", "--library", "demo", "--class", "10A1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "DOCSACH_PUBLIC_URL" in err and "--bot" in err           # one translated warning, with the fix
    assert out.exists() and decode_pdf(out.read_bytes())[0]          # QR codes hold the codes themselves


def test_certificate_has_place_date_and_signature_block_in_its_lower_part(catalogs):
    t = catalogs.translator("vi", audience="student")
    pdf = render_certificate(t, school="Trường THPT Demo Lào Cai", name="Nguyễn Văn An", class_name="10A1",
                             campaign="Đại sứ Văn hoá đọc — vòng trường", theme="Sách về tuổi thơ", books=3,
                             reflections=2, day=date(2026, 12, 2))
    page = pypdfium2.PdfDocument(pdf)[0]
    width, height = page.get_size()
    text = page.get_textpage()
    whole = " ".join(text.get_text_range().split())
    assert "Lào Cai, ngày 2 tháng 12 năm 2026" in whole and "HIỆU TRƯỞNG" in whole
    assert "CỘNG HOÀ XÃ HỘI CHỦ NGHĨA VIỆT NAM" in whole and "SỞ GIÁO DỤC VÀ ĐÀO TẠO LÀO CAI" in whole
    # the lower 40 % of the page carries the place/date line and the signer, not blank paper
    lower = " ".join(text.get_text_bounded(0, 0, width, height * 0.4).split())
    assert "HIỆU TRƯỞNG" in lower and "Lào Cai, ngày" in lower
    # nothing is printed within 12 mm of the outer border line (10 mm from the page edge)
    margin = (10 + 12) * 72 / 25.4
    assert text.get_text_bounded(0, 0, margin, height).strip() == ""
    assert text.get_text_bounded(width - margin, 0, width, height).strip() == ""
