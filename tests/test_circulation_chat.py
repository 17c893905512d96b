"""A new reader end to end through the router: link with a code, reserve, borrow, renew, return —
and every refusal on the way, in Vietnamese and in English."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from handlers.messages import Incoming, Reply
from services import patrons
from tests.conftest import ChatDriver, Libraries


async def librarian(libs: Libraries, user: str = "lib", language: str | None = None) -> ChatDriver:
    driver = ChatDriver(libs.app, user=user, language=language)
    actor = await patrons.resolve_actor(libs.db, "test", user, user)
    await patrons.link_trusted(libs.db, actor, "demo", "TT001")
    return driver


def code_for(text: str, card: str) -> str:
    line = next(line for line in text.splitlines() if f"({card})" in line)
    return re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}", line).group(0)


async def show_card(driver: ChatDriver, title_id: int) -> None:
    """What the search feature's book card shows: the buttons features add to it."""
    ctx = await driver.app.router.context_for(Incoming(
        channel=driver.channel, chat_id=driver.user, user_id=driver.user, language_hint=driver.language))
    rows = []
    for provider in driver.app.router.card_buttons:
        rows += await provider(ctx, title_id)
    driver.last = [Reply("book card", buttons=rows)]


async def test_new_reader_end_to_end_in_vietnamese(libs: Libraries, clock):
    app = libs.app
    lib = await librarian(libs)
    await lib.say("/codes 10a1")
    assert "Mã liên kết lớp 10a1" in lib.text and "HS001" in lib.text
    code_an, code_hoa = code_for(lib.text, "HS001"), code_for(lib.text, "HS002")

    an = ChatDriver(app, user="an")
    await an.say("/loans")
    assert "liên kết" in an.text  # not linked yet
    await an.say("ABCD-EFGH")
    assert "Mã liên kết không đúng" in an.text
    await an.say(code_an.lower())
    assert "Đã liên kết! Chào Nguyễn Văn An, lớp 10A1" in an.text
    await an.say("/me")
    assert "HS001" in an.text and "học sinh" in an.text and "0/5" in an.text
    thief = ChatDriver(app, user="thief")
    await thief.say(f"/link {code_an}")
    assert "đã được dùng" in thief.text

    hoa = ChatDriver(app, user="hoa")
    await hoa.say(f"/start k{code_hoa.replace('-', '')}")  # scanned the QR on the slip
    assert "Lò Thị Hoa" in hoa.text

    # An finds a book with one copy and reserves it: set aside at once
    title_id, [barcode] = await libs.title_with_copies(1)
    await show_card(an, title_id)
    reserve = an.find_button("Đặt trước")
    await an.press(reserve)
    assert "để riêng cho em" in an.text and "04/12/2026" in an.text
    await an.press(reserve)  # double tap on the same card
    assert "đã được để riêng cho em rồi" in an.text
    await show_card(an, title_id)
    assert an.find_button("Đặt trước") is None  # no Reserve button on a book you already hold
    await show_card(hoa, title_id)
    await hoa.press("Đặt trước")
    assert "thứ 1 trong hàng chờ" in hoa.text
    await hoa.say("/holds")
    assert "vị trí 1" in hoa.text

    # the librarian checks out: barcode, then a name that matches two people, then the right card
    await lib.say("/checkout")
    assert "mã vạch" in lib.text
    await lib.say("NOPE-123")
    assert "Không tìm thấy cuốn sách" in lib.text
    await lib.say(barcode)
    assert "để riêng cho người đặt trước" in lib.text
    await lib.say("Hoa")
    assert "2 bạn đọc khớp" in lib.text
    await lib.press("Lò Thị Hoa")
    assert "để riêng cho bạn đọc HS001" in lib.text
    await lib.say(f"/checkout {barcode} HS001")
    assert "Đã cho mượn" in lib.text and "15/12/2026" in lib.text and "1/5" in lib.text
    assert "đặt trước của bạn đọc này đã hoàn tất" in lib.text

    # An renews: refused while Hoa waits, fine once she cancels; a double tap renews once
    await an.say("/loans")
    assert "Sách đang mượn (1)" in an.text and "hạn trả 15/12/2026" in an.text
    await an.press("Gia hạn")
    assert "có 1 bạn đang chờ" in an.text
    await hoa.say("/holds")
    cancel = hoa.find_button("Huỷ")
    await hoa.press(cancel)
    assert "Đã huỷ đặt trước" in hoa.text
    await hoa.press(cancel)
    assert "đã kết thúc hoặc đã được huỷ" in hoa.text
    await an.say("/loans")
    renew = an.find_button("Gia hạn")
    await an.press(renew)
    assert "Hạn trả mới: 29/12/2026" in an.text
    await an.press(renew)
    assert "vừa được gia hạn rồi" in an.text

    # students cannot use librarian commands, forged buttons are refused
    await an.say(f"/return {barcode}")
    assert "không có quyền" in an.text
    await an.press("1:renew:1:1~AAAAAAAA")
    assert "hết hạn" in an.text

    # return: back to the shelf, and the double scan says so
    await lib.say(f"/tra {barcode}")
    assert "Đã nhận trả" in lib.text and "Nguyễn Văn An" in lib.text and "lên kệ" in lib.text
    await lib.say(f"/return {barcode}")
    assert "không có ai mượn" in lib.text
    await lib.say("/history HS001")
    assert "Lịch sử mượn của Nguyễn Văn An" in lib.text and barcode in lib.text
    await an.say("/history")
    assert barcode in an.text
    await an.say("/unlink")
    await an.press("Có")
    assert "Đã huỷ liên kết" in an.text
    await an.say("/loans")
    assert "liên kết" in an.text


async def test_refusals_read_clearly_in_english(libs: Libraries, clock):
    app = libs.app
    lib = await librarian(libs, language="en")
    await lib.say("/language en")
    await lib.say("/codes 11A1")
    assert "Link codes for class 11A1" in lib.text
    code = code_for(lib.text, "HS003")
    pao = ChatDriver(app, user="pao", language="en")
    for _ in range(5):
        await pao.say("/link ZZZZ-ZZZZ")
        assert "not right" in pao.text
    await pao.say(f"/link {code}")
    assert pao.text == "Too many tries. Please try again in 15 minutes."
    clock.set(datetime(2026, 12, 1, 2, 16, tzinfo=UTC))
    await pao.say(code)
    assert "Linked! Hello Giàng A Páo, class 11A1" in pao.text

    title_id, [barcode] = await libs.title_with_copies(1)
    await lib.say(f"/checkout {barcode} HS004")
    assert "Lent" in lib.text and "Due 15 Dec 2026" in lib.text
    await show_card(pao, title_id)
    await pao.press("Reserve")
    assert "You are number 1 in the queue" in pao.text
    await lib.say(f"/renew {barcode}")
    assert "cannot be renewed: other readers are waiting for it (1 in the queue)" in lib.text
    await lib.say("/return")
    await lib.say(barcode)
    assert "Checked in" in lib.text and "put this copy aside for Giàng A Páo (HS003)" in lib.text
    await lib.say("/cancel")
    await pao.say("/holds")
    assert "set aside for you, pick up by 4 Dec 2026" in pao.text
    await lib.say(f"/checkout {barcode} HS004")
    assert "is set aside for reader HS003" in lib.text
    # overdue block and the language of dates in refusals
    await lib.say(f"/checkout {barcode} HS003")
    clock.set(datetime(2027, 1, 20, 2, 0, tzinfo=UTC))
    other_title, _ = await libs.title_with_copies(2)
    await show_card(pao, other_title)
    await pao.press("Reserve")
    assert "You have a book 36 days overdue" in pao.text
    await pao.say("/loans")
    assert "(36 days overdue)" in pao.text
    await pao.press("Renew")
    assert "cannot be renewed: it is 36 days overdue" in pao.text
    await pao.say("/me")
    assert "1 overdue" in pao.text


async def test_librarian_of_another_school_cannot_reach_our_readers(libs: Libraries):
    other = ChatDriver(libs.app, user="other-lib", language="en")
    actor = await patrons.resolve_actor(libs.db, "test", "other-lib", "other-lib")
    await patrons.link_trusted(libs.db, actor, "other", "OT001")
    await other.say("/codes 10A1")
    assert "has no readers in this library" in other.text
    await other.say("/checkout DS000001 HS001")
    assert "No copy with barcode" in other.text
    await other.say("/history HS001")
    assert "No copy with barcode" in other.text
    await other.say("/unlink HS001")
    assert "not in your library" in other.text
