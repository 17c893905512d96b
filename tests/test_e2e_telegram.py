"""The "Done when" of accounts/circulation (issue 5) and reflections/campaigns (issue 7), end to end
through the real python-telegram-bot stack over real HTTP against the fake Bot API server.

People are Telegram users with private chats; everything they do goes through Telegram (the
adapter, the router, the handlers, the services, the database). Setup that a school does outside
chat (the operator issuing the librarian's first link code, a circulation rule) uses the services.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
import segno
from sqlalchemy import select

from bot.channels import telegram
from services import accounts, rules
from services.models import (
    AuditEntry,
    Campaign,
    Copy,
    Hold,
    HoldStatus,
    Library,
    Loan,
    Notification,
    Patron,
    Reflection,
    ReflectionStatus,
    Title,
)
from tests.fake_bot_api import Call, FakeBotApi, UploadedFile
from tests.test_reminders import sweeper_for

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")

LIBRARIAN, AN, PAO = 7001, 5001, 5003      # Telegram user ids = their private chat ids
OUTPUTS = ("sendmessage", "senddocument", "sendphoto", "editmessagetext")
BOOK = "Nỗi cô đơn còn lại : tiểu thuyết"     # one copy in the demo library
PHOTO = "AgACAgUAAxkBAAIBZ2handwritten"         # a Telegram file_id the student's photo arrived as
# The photo's bytes at Telegram (a real PNG): docsach downloads and keeps them, so moderators on
# any channel see the page, and sends them on as an upload.


def _png() -> bytes:
    out = io.BytesIO()
    segno.make("Trang viết tay của An").save(out, kind="png", scale=4)
    return out.getvalue()


PAGE_BYTES = _png()


def uploaded(call: Call) -> bytes:
    """The bytes a sendPhoto call uploaded (multipart), or b"" when it sent a file id."""
    value = call.params.get("photo")
    if isinstance(value, str) and value.startswith("attach://"):
        return call.files[value.removeprefix("attach://")].data
    upload = call.files.get("photo")
    return upload.data if upload is not None else b""
SCHOOL_CHANNEL = -1001234567890                 # where the school publishes approved reflections


class TgUser:
    """One person in a private chat with the bot, over the fake Bot API.

    ``say``/``press`` push an update and wait until the bot has produced ``replies`` messages or
    edits in this chat (0 for a press answered only by a toast); ``last`` holds them.
    """

    def __init__(self, api: FakeBotApi, user_id: int, language: str) -> None:
        self.api = api
        self.id = user_id
        self.language = language
        self.last: list[dict[str, Any]] = []
        self.toast: str | None = None
        self.pressed: tuple[int, str] = (0, "")

    def _outputs(self) -> list[Call]:
        return [c for c in self.api.calls if c.ok and c.method.lower() in OUTPUTS and c.chat_id == self.id]

    async def _await(self, before: int, replies: int, done: Callable[[list[Call]], bool] | None) -> None:
        def ready() -> bool:
            new = self._outputs()[before:]
            return len(new) >= replies and (done is None or done(new))

        ok = await self.api._wait_until(ready, 5.0)   # re-checked whenever the bot calls the fake
        new = self._outputs()[before:]
        assert ok, f"chat {self.id}: wanted {replies} replies, got {[c.text for c in new]}"
        self.last = [self.api.message(self.id, c.result["message_id"]) for c in new]

    async def say(self, text: str, replies: int = 1, done: Callable[[list[Call]], bool] | None = None) -> str:
        before = len(self._outputs())
        self.api.push_message(self.id, text, language_code=self.language)
        await self._await(before, replies, done)
        return self.text

    async def press(self, label: str | None, replies: int = 1) -> str:
        """Press the newest button labelled ``label``; None presses the previous button again
        (a double tap: Telegram still shows the old message with its buttons)."""
        message_id, data = self.button(label) if label is not None else self.pressed
        self.pressed = (message_id, data)
        before = len(self._outputs())
        update = self.api.push_callback(self.id, message_id, data, language_code=self.language)
        query_id = update["callback_query"]["id"]
        [answer] = await self.api.wait_for(
            "answerCallbackQuery", predicate=lambda c: c.params.get("callback_query_id") == query_id)
        self.toast = answer.params.get("text")
        await self._await(before, replies, None)
        return self.text if replies else (self.toast or "")

    async def send_photo(self, file_id: str) -> str:
        """A photo without a caption (e.g. of a handwritten page)."""
        update = self.api.message_update(self.id, "", language_code=self.language,
                                         photo=[{"file_id": file_id, "file_unique_id": "u" + file_id,
                                                 "width": 960, "height": 1280}])
        del update["message"]["text"]
        before = len(self._outputs())
        self.api.push_raw(update)
        await self._await(before, 1, None)
        return self.text

    def button(self, label: str) -> tuple[int, str]:
        """The newest button whose label contains ``label``: (its message id, its callback data)."""
        for message in reversed(self.last):
            for row in (message.get("reply_markup") or {}).get("inline_keyboard", []):
                for b in row:
                    if label.lower() in b["text"].lower() and b.get("callback_data"):
                        assert len(b["callback_data"].encode()) <= 64
                        return message["message_id"], b["callback_data"]
        raise AssertionError(f"no button {label!r} in {[m.get('text') for m in self.last]}")

    def buttons(self) -> list[str]:
        return [b["text"] for m in self.last for row in (m.get("reply_markup") or {}).get("inline_keyboard", [])
                for b in row]

    @property
    def text(self) -> str:
        return "\n".join(m.get("text") or m.get("caption") or "" for m in self.last)


def options(api: FakeBotApi) -> dict:
    return dict(token=api.token, base_url=api.base_url, poll_timeout=1, backoff=(0.05, 0.1))


def code_for(text: str, card: str) -> str:
    line = next(line for line in text.splitlines() if f"({card})" in line)
    return re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}", line).group(0)


async def title(db, name: str) -> tuple[int, list[str]]:
    async with db.session() as s:
        title_id = (await s.execute(select(Title.id).where(Title.title == name))).scalar_one()
        barcodes = list((await s.execute(select(Copy.barcode).where(Copy.title_id == title_id)
                                         .order_by(Copy.id))).scalars())
    return title_id, barcodes


async def librarian_code(db, clock) -> str:
    """What the operator does once on the server: a link code for the librarian's own card."""
    operator = await accounts.operator_actor(db, "demo")
    async with db.session() as s:
        librarian = (await s.execute(select(Patron.id).where(Patron.card_number == "TT001"))).scalar_one()
    [issued] = await accounts.issue_link_codes(db, operator, patron_ids=[librarian], clock=clock)
    return issued.code


# -- issue 5: link, find, reserve, borrow, renew, return ------------------------------------------

async def test_new_reader_links_reserves_borrows_renews_and_returns(demo_app, fake_bot_api, clock):
    app, api, db = demo_app, fake_bot_api, demo_app.db
    title_id, [barcode] = await title(db, BOOK)
    lib, an, pao = TgUser(api, LIBRARIAN, "vi"), TgUser(api, AN, "vi"), TgUser(api, PAO, "en")

    async with telegram.running(app, **options(api)):
        # The librarian links their own chat with the code the operator printed, then asks for codes.
        assert "Đã liên kết! Chào Hoàng Minh Tuấn" in await lib.say(await librarian_code(db, clock))
        await lib.say("/codes 10A1", done=lambda new: any(c.method == "sendDocument" for c in new))
        assert "Mã liên kết lớp 10A1: 2 học sinh" in lib.text          # students only, not the homeroom teacher
        assert "GV001" not in lib.text
        assert "https://t.me/docsach_test_bot?start=k" in lib.text      # the QR deep link on each slip
        [slips] = [c for c in api.calls_to("sendDocument") if c.chat_id == LIBRARIAN]
        assert slips.files["document"].data.startswith(b"%PDF") and slips.files["document"].filename.endswith(".pdf")
        code_an = code_for(lib.text, "HS001")

        # A new student: not linked yet, a wrong code, then the right one (typed in lower case).
        assert (await an.say("/start")).startswith("Xin chào!")
        assert "cần liên kết thẻ thư viện" in await an.say("/loans")
        assert "Mã liên kết không đúng" in await an.say("ABCD-EFGH")
        assert "Đã liên kết! Chào Nguyễn Văn An, lớp 10A1" in await an.say(code_an.lower())
        # Someone else who got hold of the slip cannot reuse it (and reads why in English).
        assert "This code has already been used" in await pao.say(f"/link {code_an}")

        # Finds the book by typing its title without diacritics; opens the card from the result button.
        results = await an.say("noi co don con lai")
        assert BOOK in results
        await an.press("Nỗi cô đơn")
        card = an.text
        assert card.startswith(f"📖 {BOOK}") and barcode in card and "(1/1 có sẵn)" in card
        assert "📌 Đặt trước" in an.buttons()
        reserved = await an.press("Đặt trước")
        assert "sách đã được để riêng cho bạn" in reserved and "4 thg 12, 2026" in reserved
        assert an.toast and an.toast.startswith("Đã đặt trước «Nỗi cô đơn")
        # A double tap on the same card's button is answered, not repeated.
        assert "đã được để riêng cho bạn rồi" in await an.press(None, replies=0)

        # The librarian checks the copy out: /checkout, the barcode, then the student's card.
        assert "mã vạch" in await lib.say("/checkout")
        assert "để riêng cho người đặt trước" in await lib.say(barcode)
        lent = await lib.say("HS001")
        assert "✅ Đã cho mượn" in lent and "Nguyễn Văn An (HS001)" in lent and "15 thg 12, 2026" in lent
        assert "đặt trước của bạn đọc này đã hoàn tất" in lent

        # The student sees the loan and renews it (a second tap on the same button renews once).
        loans = await an.say("/loans")
        assert "Sách đang mượn (1)" in loans and "hạn trả 15 thg 12, 2026" in loans
        [listing] = an.last
        renewed = await an.press("Gia hạn 1")
        assert an.toast == f"Đã gia hạn «{BOOK}». Hạn trả mới: 29 thg 12, 2026 (còn 1 lần gia hạn)."
        # The list is edited in place, so it no longer shows the old due date.
        assert an.last[0]["message_id"] == listing["message_id"]
        assert renewed.startswith(an.toast) and "hạn trả 29 thg 12, 2026" in renewed and "15 thg 12" not in renewed
        assert "vừa được gia hạn rồi" in await an.press(None, replies=0)

        # A second student, in English: a wrong code, then linked; reserves the borrowed book.
        code_pao = code_for(await lib.say("/codes 11a1", done=lambda new: any(
            c.method == "sendDocument" for c in new)), "HS003")
        assert "That link code is not right" in await pao.say("/link ZZZZ-ZZZZ")
        assert "Linked! Hello Giàng A Páo, class 11A1" in await pao.say(code_pao)
        await pao.say("noi co don")
        await pao.press("Nỗi cô đơn")
        assert "on loan" in pao.text and "📌 Reserve" in pao.buttons()
        queued = await pao.press("Reserve")
        assert "You are number 1 in the queue" in queued
        assert "You have already reserved" in await pao.press(None, replies=0)   # the same button again

        # Now the student's renewal is refused (someone is waiting), clearly, in Vietnamese.
        await an.say("/loans")
        refusal = await an.press("Gia hạn 1", replies=0)
        assert refusal == (f"Không gia hạn được «{BOOK}»: có 1 bạn đang chờ mượn cuốn này. "
                           "Hãy trả đúng hạn nhé.")
        assert "không có quyền" in await an.say(f"/return {barcode}")   # a student cannot check in

        # The reservation limit, in English (the school set it to 1; Páo already holds one).
        operator = await accounts.operator_actor(db, "demo")
        await rules.set_rule(db, operator, "max_holds", 1, role="student")
        await pao.say("voi voi ang ten")
        await pao.press("Vời vợi")
        limit = await pao.press("Reserve", replies=0)
        assert limit == "You already have the most reservations allowed (1). Cancel one in /holds and try again."

        # The librarian takes the book back: it goes aside for Páo, who sees it ready in /holds.
        returned = await lib.say(f"/return {barcode}")
        assert "✅ Đã nhận trả" in returned and "Nguyễn Văn An (HS001)" in returned
        assert "để riêng cuốn này cho Giàng A Páo (HS003)" in returned
        assert "set aside for you, pick up by Dec 4, 2026" in await pao.say("/holds")
        assert "không có ai mượn" in await lib.say(f"/return {barcode}")   # scanned twice
        assert await an.say("/loans") == "Bạn không mượn cuốn sách nào."

    # The database agrees: one loan, renewed once and returned; every step audited as "telegram".
    async with db.session() as s:
        an_id = (await s.execute(select(Patron.id).where(Patron.card_number == "HS001"))).scalar_one()
        [loan] = (await s.execute(select(Loan).where(Loan.patron_id == an_id))).scalars().all()
        assert loan.returned_at is not None and loan.renewals == 1
        hold = (await s.execute(select(Hold).where(Hold.title_id == title_id, Hold.status == HoldStatus.READY)
                                )).scalar_one()
        assert hold.patron_id != an_id
        entries = (await s.execute(select(AuditEntry.action, AuditEntry.channel)
                                   .where(AuditEntry.entity.in_(("loan", "hold", "patron"))))).all()
    by_action: dict[str, set] = {}
    for action, channel in entries:
        by_action.setdefault(action, set()).add(channel)
    for action in ("account.link", "hold.place", "hold.fulfil", "loan.checkout", "loan.renew", "loan.return",
                   "hold.ready"):
        assert by_action.get(action) == {"telegram"}, (action, by_action.get(action))
    assert api.errors == []


# -- issue 7: reflect with a prompt, moderate, notify, book card, leaderboard, export -------------

async def test_reflection_with_prompt_moderated_shown_ranked_and_exported(demo_app, fake_bot_api, clock,
                                                                          tmp_path):
    from bot.cli import build_parser, cmd_export

    app, api, db = demo_app, fake_bot_api, demo_app.db
    title_id, [barcode] = await title(db, BOOK)
    lib, an = TgUser(api, LIBRARIAN, "vi"), TgUser(api, AN, "vi")
    campaign = "Đại sứ văn hoá đọc 2026"

    async with telegram.running(app, **options(api)):
        await lib.say(await librarian_code(db, clock))
        await lib.say("/codes 10A1", done=lambda new: any(c.method == "sendDocument" for c in new))
        await an.say(code_for(lib.text, "HS001"))

        # The librarian starts a campaign in chat (a short guided flow; the list of books is skipped).
        assert "Tên chiến dịch là gì?" in await lib.say("/newcampaign")
        assert "Từ ngày nào đến ngày nào?" in await lib.say(campaign)
        await lib.say("01/11/2026 - 31/01/2027")
        await lib.say("1 1")
        await lib.say("Sách về quê hương")
        assert "Độ dài cảm nhận" in await lib.press("Bỏ qua")
        created = await lib.say("20 300")
        assert created.startswith("✅ Đã tạo chiến dịch") and f"{campaign} (1/11/26 – 31/1/27)" in created
        async with db.session() as s:
            campaign_id = (await s.execute(select(Campaign.id))).scalar_one()

        # The student borrows and returns the book at the desk, joins, then writes with a prompt.
        await lib.say(f"/checkout {barcode} HS001")
        await lib.say(f"/return {barcode}")
        assert f'Em đã tham gia "{campaign}"' in await an.say("/join")
        await an.say("/reflect")
        assert an.buttons() == [BOOK, "✖️ Thoát (giữ bản nháp)"]   # the book just read
        prompts = await an.press(BOOK)
        first_prompt = "Điều gì trong cuốn sách làm em xúc động nhất? Vì sao?"
        assert f"1. {first_prompt}" in prompts
        # long prompts are shortened on a word boundary, with an ellipsis
        assert "1. Điều gì trong cuốn sách làm em xúc động nhất? Vì…" in an.buttons()
        chosen = await an.press("1. ")                       # the prompt picker is edited in place
        assert chosen.startswith(f"Gợi ý: {first_prompt}") and "từ 20 đến 300 chữ" in chosen
        part1 = "Cuốn tiểu thuyết kể về nỗi cô đơn của những người lính trở về sau chiến tranh."
        part2 = ("Em xúc động nhất khi nhân vật chính tìm lại được gia đình. "
                 "Em sẽ giới thiệu cuốn sách này cho các bạn trong lớp 10A1.")
        assert await an.say(part1) == "Đã lưu: 17 chữ (cần 20–300). Gửi tiếp, hoặc bấm «Xong»."
        assert await an.say(part2) == "Đã lưu: 43 chữ (cần 20–300). Gửi tiếp, hoặc bấm «Xong»."
        api.files[PHOTO] = UploadedFile("photo", "page.png", "image/png", PAGE_BYTES, file_id=PHOTO)
        assert await an.send_photo(PHOTO) == "Đã đính kèm ảnh. Gửi tiếp bài viết, hoặc bấm «Xong»."
        assert "mấy sao?" in await an.press("Xong")
        preview = await an.press("5⭐")
        assert preview == (f"📖 Cảm nhận về: {BOOK}\n💬 {first_prompt}\n\n{part1}\n\n{part2}\n\n"
                           "📷 Có ảnh đính kèm\n43 chữ (cần 20–300) · ★★★★★ · bản nháp")
        # text typed after the preview (a search, say) is not added to the reflection
        nudge = await an.say("tat den")
        assert "chưa thêm tin nhắn vừa rồi" in nudge and "📨 Nộp bài" in an.buttons()
        submitted = await an.press("Nộp bài")
        assert submitted.startswith(f'📨 Đã nộp bài cảm nhận về "{BOOK}" (43 chữ)')
        async with db.transaction() as s:      # the school's channel, set up by the operator
            (await s.execute(select(Library))).scalar_one().publish_chat_id = str(SCHOOL_CHANNEL)

        # The librarian approves it from the moderation queue.
        queue = await lib.say("/moderate", replies=2)
        # The moderator sees the photo itself (uploaded from docsach's store), then the text to judge.
        [photo] = [c for c in api.calls_to("sendPhoto") if c.chat_id == LIBRARIAN]
        assert uploaded(photo) == PAGE_BYTES and "photo" in lib.last[0] and "📷 Có ảnh đính kèm" in queue
        assert "Chờ duyệt: 1 bài" in queue and "Nguyễn Văn An, lớp 10A1 · ★★★★★ · 43 chữ" in queue
        assert first_prompt in queue and part2 in queue
        approved = await lib.press("Duyệt")
        assert approved.startswith(f'✅ Đã duyệt bài của Nguyễn Văn An về "{BOOK}"')
        assert approved.endswith("Không có bài nào chờ duyệt. 🎉")
        # published to the school's channel: the photo, then the text (first name and class only)
        [published_photo] = [c for c in api.calls_to("sendPhoto") if c.chat_id == SCHOOL_CHANNEL]
        assert uploaded(published_photo) == PAGE_BYTES
        post = api.last_sent(SCHOOL_CHANNEL)["text"]
        assert "An, lớp 10A1" in post and part2 in post and "Nguyễn Văn An" not in post

        # The student is told: the approval is in the outbox, and one reminder sweep delivers it
        # through the running Telegram adapter, in the student's language.
        async with db.session() as s:
            an_id = (await s.execute(select(Patron.id).where(Patron.card_number == "HS001"))).scalar_one()
            notice = (await s.execute(select(Notification).where(Notification.kind == "reflection_approved"))
                      ).scalar_one()
        assert notice.patron_id == an_id and notice.payload["title"] == BOOK
        report = await sweeper_for(app).sweep()
        assert report.messages >= 1
        told = f'🎉 Bài cảm nhận của em về "{BOOK}" đã được duyệt! Cảm ơn em đã chia sẻ.'
        assert [m["text"] for m in api.sent_messages(AN)].count(told) == 1
        async with db.session() as s:
            assert (await s.get(Notification, notice.id)).status.value == "sent"
        assert (await sweeper_for(app).sweep()).messages == 0  # once, never twice

        # It shows on the book card (first name and class only) ...
        await an.say(f"/start t{title_id}")
        assert "💬 Cảm nhận (1)" in an.buttons()
        shown = await an.press("Cảm nhận (1)")
        assert shown == f'💬 Cảm nhận về "{BOOK}" (1):\n\n★★★★★ An, lớp 10A1\n{part1}\n\n{part2}'

        # ... and on the campaign leaderboard; the campaign is complete, with a certificate.
        board = await an.say("/leaderboard")
        assert board.startswith(f"🏆 {campaign} — bảng xếp hạng toàn trường")
        assert "1. An (10A1) — 3 điểm: 1 sách, 1 cảm nhận ← em" in board
        progress = await an.say("/progress")
        assert "1/1 sách · 1/1 cảm nhận" in progress and "Hoàn thành!" in progress
        assert "Giấy chứng nhận của em đây" in await an.press("Giấy chứng nhận")
        [certificate] = [c for c in api.calls_to("sendDocument") if c.chat_id == AN]
        assert certificate.files["document"].data.startswith(b"%PDF")

    # `docsach export reflections` contains it, shortlisted or not.
    out = tmp_path / "reflections.csv"
    parser, _ = build_parser()
    args = parser.parse_args(["export", "reflections", "--campaign", campaign, "-o", str(out)])
    assert await cmd_export(app, args) == 0
    [row] = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8-sig"))))[1:]
    assert row[:5] == ["Nguyễn Văn An", "10A1", BOOK, "43", "5"] and row[5] == f"{part1}\n\n{part2}"
    async with db.session() as s:
        r = (await s.execute(select(Reflection))).scalar_one()
        kinds = set((await s.execute(select(Notification.kind).where(Notification.patron_id == an_id))).scalars())
        audit = set((await s.execute(select(AuditEntry.action, AuditEntry.channel)
                                     .where(AuditEntry.entity.in_(("reflection", "campaign"))))).all())
    assert r.status == ReflectionStatus.APPROVED and r.prompt and r.rating == 5 and r.campaign_id == campaign_id
    assert {"reflection_approved", "campaign_completed", "badge_earned"} <= kinds
    assert {("reflection.submit", "telegram"), ("reflection.approve", "telegram"),
            ("campaign.create", "telegram"), ("campaign.join", "telegram")} <= audit
