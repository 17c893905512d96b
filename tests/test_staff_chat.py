"""The staff commands in chat: /status, /addbook, /cancelhold, /overdue, /settings — what a
librarian types and reads, in both languages, and who may not use them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from services import circulation as circ
from services.models import Copy, CopyStatus
from tests.conftest import ChatDriver, Libraries


async def test_status_command_with_buttons_and_typed_words(libs: Libraries, link_chat, clock):
    lib = await link_chat("lib", "TT001")
    _, [barcode] = await libs.title_with_copies(1)
    await lib.say(f"/status {barcode}")
    assert f"({barcode}): có sẵn" in lib.text or f"({barcode})" in lib.text
    assert lib.find_button("Bị hỏng") and not lib.find_button("Trả về kệ")
    await lib.press("Bị hỏng")
    assert "→ bị hư hỏng" in lib.text
    await lib.say(f"/status {barcode.lower()} ke")
    assert "bị hư hỏng → " in lib.text
    await lib.say(f"/status {barcode} vo")
    assert "Không hiểu tình trạng «vo»" in lib.text
    async with libs.db.session() as s:
        assert (await s.execute(select(Copy.status).where(Copy.barcode == barcode))).scalar_one() == \
            CopyStatus.AVAILABLE
    # on loan: only "lost", and the reply says how to go on
    await circ.check_out(libs.db, await libs.actor("TT001"), barcode, "HS001", clock=clock)
    await lib.say(f"/status {barcode} hong")
    assert f"/return {barcode}" in lib.text
    await lib.say(f"/status {barcode} mat")
    assert "Nguyễn Văn An (HS001)" in lib.text and "đã được đóng" in lib.text

    student = await link_chat("an", "HS001")
    await student.say(f"/status {barcode}")
    assert "không có quyền" in student.text.lower() or "not allowed" in student.text.lower()


async def test_addbook_by_isbn_and_by_hand(libs: Libraries, link_chat, clock):
    lib = await link_chat("lib", "TT001", language="en")
    await lib.say("/addbook 978-604-0-00000-2")
    assert "does not have ISBN" in lib.text
    await lib.say("Ngữ văn 6, tập một; Nguyễn Thị Hồng Nam; 2021; Giáo dục Việt Nam")
    assert "Added the new book «Ngữ văn 6, tập một» — Nguyễn Thị Hồng Nam, 1 copies" not in lib.text
    assert "Added the new book «Ngữ văn 6, tập một» — Nguyễn Thị Hồng Nam" in lib.text
    assert "barcode DS" in lib.text
    await lib.say("/addbook 9786040000002 x2")
    assert "already has «Ngữ văn 6, tập một»" in lib.text and lib.text.count("barcode DS") == 2
    await lib.say("/addbook 978-604-0-00000-1")
    assert "is not a valid ISBN" in lib.text
    await lib.say("/addbook Truyện cổ tích Việt Nam; Nguyễn Đổng Chi; 20x0")
    assert "The year «20x0» is not valid" in lib.text


async def test_cancelhold_for_a_reader_and_overdue_by_class(libs: Libraries, link_chat, clock):
    lib = await link_chat("lib", "TT001")
    title_id, [barcode] = await libs.title_with_copies(1)
    await circ.place_hold(libs.db, await libs.actor("HS002"), title_id, clock=clock)
    await lib.say("/cancelhold hs002")
    assert "Lượt đặt trước của Lò Thị Hoa · 10A1 · HS002 (1)" in lib.text
    await lib.press("Huỷ 1.")
    assert "Đã huỷ lượt đặt trước" in lib.text
    await lib.say("/cancelhold HS002")
    assert "không có lượt đặt trước nào" in lib.text

    await circ.check_out(libs.db, await libs.actor("TT001"), barcode, "HS001", clock=clock)
    clock.set(datetime(2026, 12, 16, 2, 0, tzinfo=UTC))
    await lib.say("/overdue")
    assert "Sách quá hạn ngày 16/12/2026: 1 cuốn" in lib.text and "Lớp 10A1 (1):" in lib.text
    assert "Nguyễn Văn An (HS001)" in lib.text and "quá hạn 1 ngày" in lib.text
    await lib.say("/quahan 11a1")
    assert "Lớp 11A1 không có sách quá hạn" in lib.text

    teacher = await link_chat("gv", "GV001", language="en")
    await teacher.say("/overdue")
    assert "Overdue on 16 Dec 2026: 1 book" in teacher.text and "1 day overdue" in teacher.text
    student = await link_chat("an", "HS001")
    await student.say("/overdue")
    assert "HS001" not in student.text


async def test_settings_command_changes_quiet_hours_and_days(libs: Libraries, link_chat):
    lib = await link_chat("lib", "TT001")
    await lib.say("/settings")
    assert "20:00–07:00" in lib.text and "1, 7, 14" in lib.text
    await lib.say("/settings quiet 21h 6h30")
    assert "Đã lưu." in lib.text and "21:00–06:30" in lib.text
    await lib.say("/caidat overdue 2 9")
    assert "2, 9" in lib.text
    await lib.say("/settings quiet 25:00 7")
    assert "Giờ «25:00» không hợp lệ" in lib.text
    teacher = await link_chat("gv", "GV001")
    await teacher.say("/settings quiet 22:00 05:00")
    assert "21:00" not in teacher.text and "22:00–05:00" not in teacher.text


async def test_checkout_by_name_ranks_the_exact_name_first_without_empty_fields(libs: Libraries, link_chat):
    from services.models import Patron, Role

    async with libs.db.transaction() as s:
        lib_id = (await s.execute(select(Copy.library_id).where(Copy.barcode.like("DS%")).limit(1))).scalar_one()
        s.add_all([Patron(library_id=lib_id, card_number="HS101", full_name="Nguyễn Văn Anh", role=Role.STUDENT,
                          class_name="12A1", preferences={}),
                   Patron(library_id=lib_id, card_number="HS102", full_name="Trần Văn An Khang", role=Role.STUDENT,
                          class_name=None, preferences={})])
    lib: ChatDriver = await link_chat("lib", "TT001")
    _, [barcode] = await libs.title_with_copies(1)
    await lib.say(f"/checkout {barcode} van an")
    labels = [b.label for r in lib.last for row in r.buttons for b in row]
    assert labels[0] == "Nguyễn Văn An · 10A1 · HS001"
    assert "Trần Văn An Khang · HS102" in labels and not any("·  ·" in label for label in labels)
