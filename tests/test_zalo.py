"""Zalo end to end: the adapter over real HTTP against the fake Zalo Bot API server, the router,
handlers, services and the database (SQLite, and PostgreSQL when configured).

People are Zalo users in private chats; everything they do goes through Zalo (numbers typed for
buttons). Setup a school does outside chat (the operator's link codes, the librarian's desk work)
uses the services, as in tests/test_e2e_telegram.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from datetime import date, timedelta

import pytest
from aiohttp import ClientSession
from sqlalchemy import func, select

from bot.app import App, build_app
from bot.channels import zalo
from handlers.messages import (
    Attachment,
    Button,
    ChannelProfile,
    ChatUnreachable,
    DeliveryFailed,
    DeliveryUncertain,
    Reply,
)
from services import accounts, circulation
from services.models import (
    ChatIdentity,
    Copy,
    Download,
    Loan,
    Notification,
    NotificationStatus,
    Patron,
    SeenMessage,
    StoredPhoto,
    Title,
)
from tests.fake_zalo_api import FakeZaloApi
from tests.test_reminders import at, lend, sweeper_for

BOOK = "Nỗi cô đơn còn lại : tiểu thuyết"     # one copy in the demo library
AN, PAO = "e4ea2cd5189df1c3a88c", "7a1b9c0d2e3f4a5b6c7d"   # Zalo chat ids are opaque strings
_MENU_LINE = re.compile(r"^(\d{1,3})\. (.+)$", re.MULTILINE)


class ZaloUser:
    """One person in a private Zalo chat with the bot.

    ``say`` pushes a message and waits until the adapter has handled it; ``last`` holds the texts
    the bot sent back (every part), ``text`` joins them."""

    def __init__(self, api: FakeZaloApi, adapter: zalo.ZaloAdapter, chat_id: str, name: str) -> None:
        self.api = api
        self.adapter = adapter
        self.chat_id = chat_id
        self.name = name
        self.last: list[str] = []

    async def say(self, text: str, *, times: int = 1) -> str:
        before_handled, before_sent = self.adapter.handled, len(self.api.texts(self.chat_id))
        self.api.push_text(self.chat_id, text, display_name=self.name, times=times)
        assert await self.api.wait_until(lambda: self.adapter.handled >= before_handled + times, 10), \
            f"{self.name}: {text!r} not handled"
        self.last = self.api.texts(self.chat_id)[before_sent:]
        if os.environ.get("ZALO_SHOW"):       # to read a conversation: ZALO_SHOW=1 pytest -s …
            print(f"\n[{self.name}] {text}\n" + "\n---\n".join(self.last))
        return self.text

    @property
    def text(self) -> str:
        return "\n".join(self.last)

    def number(self, label: str) -> str:
        """The number shown beside the newest choice whose label contains ``label``."""
        found = [n for n, shown in _MENU_LINE.findall(self.text) if label.lower() in shown.lower()]
        assert found, f"no choice {label!r} in {self.text!r}"
        return found[-1]


def options(api: FakeZaloApi) -> dict:
    return dict(token=api.token, base_url=api.base_url, poll_timeout=1, backoff=(0.05, 0.1), poll_backoff=0.1,
                per_chat_interval=0.01, lease_wait=0.1)     # pacing has its own test


@pytest.fixture
async def api():
    async with FakeZaloApi() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def fast(demo_app: App) -> App:
    demo_app.settings.zalo_messages_per_second = 200    # pacing is tested on its own
    return demo_app


async def link_code(db, card: str, clock) -> str:
    operator = await accounts.operator_actor(db, "demo")
    async with db.session() as s:
        patron_id = (await s.execute(select(Patron.id).where(Patron.card_number == card))).scalar_one()
    [issued] = await accounts.issue_link_codes(db, operator, patron_ids=[patron_id], clock=clock)
    return issued.code


@contextlib.asynccontextmanager
async def served(app: App, api: FakeZaloApi):
    """The adapter mounted on docsach's shared web server on a free local port, which is also the
    public address (webhook and download links), as ``docsach run`` does."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.settings.listen = f"127.0.0.1:{port}"
    app.settings.public_url = f"http://127.0.0.1:{port}"
    async with zalo.running(app, webhook=zalo.webhook_for(app), listen=("127.0.0.1", port), **options(api)) as adapter:
        yield adapter, app.settings.public_url


def all_within_limit(api: FakeZaloApi) -> bool:
    return all(1 <= len(c.params["text"]) <= 2000 for c in api.calls_to("sendMessage"))


# -- the issue's "Done when", in Vietnamese and English --------------------------------------------

async def test_link_search_pick_reserve_renew_from_a_reminder_and_hold_ready_once(fast, api, libs, clock):
    app, db = fast, fast.db
    librarian = await libs.actor("TT001")
    async with zalo.running(app, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "Nguyễn Văn An")
        pao = ZaloUser(api, adapter, PAO, "Giàng A Páo")
        # A new student links the chat with the code on the slip (typed in lower case).
        assert "Mã liên kết không đúng" in await an.say("ABCD-EFGH")
        assert "Đã liên kết! Chào Nguyễn Văn An, lớp 10A1" in await an.say((await link_code(db, "HS001", clock)).lower())

        # Finds the book without diacritics; the results are numbered choices.
        results = await an.say("noi co don con lai")
        assert BOOK in results and "Trả lời bằng số để chọn" in results
        card = await an.say(an.number("Nỗi cô đơn"))
        assert card.startswith(f"📖 {BOOK}") and "(1/1 có sẵn)" in card
        reserved = await an.say(an.number("Đặt trước"))
        assert "sách đã được để riêng cho em" in reserved

        # The librarian lends it at the desk; two days before it is due, the reminder comes to Zalo.
        async with db.session() as s:
            [barcode] = (await s.execute(select(Copy.barcode).join(Title, Title.id == Copy.title_id)
                                         .where(Title.title == BOOK))).scalars().all()
        await circulation.check_out(db, librarian, barcode, "HS001", clock=clock)
        clock.set(at(2026, 12, 13, 9))
        assert (await sweeper_for(app).sweep()).messages == 1
        [reminder] = api.texts(AN)[-1:]
        assert "15/12/2026" in reminder and "Gia hạn" in reminder
        an.last = [reminder]
        renewed = await an.say(an.number("Gia hạn"))          # answering the reminder with its number
        assert "Đã gia hạn" in renewed and "29/12/2026" in renewed
        async with db.session() as s:
            loan = (await s.execute(select(Loan).where(Loan.returned_at.is_(None)))).scalar_one()
            assert loan.due_date == date(2026, 12, 29) and loan.renewals == 1

        # A second student, in English: links, searches, picks by number, reserves by the label.
        assert "Đã liên kết! Chào Giàng A Páo" in await pao.say(await link_code(db, "HS003", clock))
        assert "English" in await pao.say("/language en")
        await pao.say("noi co don")
        assert "on loan" in await pao.say(pao.number("Nỗi cô đơn"))
        assert "You are number 1 in the queue" in await pao.say("reserve")      # the label works too

        # The book comes back: Páo hears it is ready, once, however often reminders are swept.
        await circulation.check_in(db, librarian, barcode, clock=clock)
        before = len(api.texts(PAO))
        first = await sweeper_for(app).sweep()
        second = await sweeper_for(app).sweep()
        assert first.messages == 1 and second.messages == 0
        ready = api.texts(PAO)[before:]
        assert len(ready) == 1 and "ready" in ready[0].lower() and BOOK.split(" :")[0] in ready[0]
    assert all_within_limit(api)


async def language_of(db, chat_id: str) -> str | None:
    async with db.session() as s:
        return (await s.execute(select(ChatIdentity.language).where(ChatIdentity.chat_id == chat_id))).scalar_one()


async def test_choices_by_number_or_label_and_a_number_off_the_list(fast, api, clock):
    async with zalo.running(fast, **options(api)) as adapter:
        pao = ZaloUser(api, adapter, PAO, "Giàng A Páo")
        menu = await pao.say("/language")
        assert "1. Tiếng Việt" in menu and "2. English" in menu
        await pao.say(pao.number("English"))
        assert await language_of(fast.db, PAO) == "en"
        await pao.say("/language")
        assert "Reply with a number to choose (for example: 1)." in pao.text
        assert "There is no option 7 in the latest list" in await pao.say("7")
        await pao.say("tieng viet")                     # the label, typed without diacritics
        assert await language_of(fast.db, PAO) == "vi"


async def test_no_list_and_stale_numbers_get_a_polite_answer(fast, api, clock):
    async with zalo.running(fast, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        assert "Chưa có danh sách nào để chọn số 2" in await an.say("2")
        await an.say("/language")
        clock.set(clock.now() + timedelta(days=8))
        assert "Danh sách có số 1 đã cũ" in await an.say("1")


async def test_numbers_survive_a_restart_and_a_second_worker(fast, api, clock, settings, catalogs):
    async with zalo.running(fast, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        await an.say("noi co don con lai")
        number = an.number("Nỗi cô đơn")
    # Another process (a restart, or a second worker) with its own app on the same database.
    other = build_app(settings, db=fast.db, clock=clock, catalogs=catalogs)
    other.settings.zalo_messages_per_second = 200
    async with zalo.running(other, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        assert (await an.say(number)).startswith(f"📖 {BOOK}")


async def test_a_repeated_delivery_is_answered_once(fast, api):
    async with zalo.running(fast, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        await an.say("/start", times=3)
        assert len(an.last) == 1 and an.last[0].startswith("Xin chào")
    async with fast.db.session() as s:
        assert (await s.execute(select(func.count()).select_from(SeenMessage))).scalar_one() == 1


async def test_a_message_older_than_the_remembered_ids_is_not_answered(fast, api):
    import time

    async with zalo.running(fast, **options(api)) as adapter:
        old = api.message(AN, text="/start")
        old["message"]["date"] = int((time.time() - 8 * 86400) * 1000)      # delivered again after 8 days
        api.push(old)
        assert await api.wait_until(lambda: adapter.handled >= 1)
        assert api.texts(AN) == []
        assert "Xin chào" in await ZaloUser(api, adapter, AN, "An").say("/start")


async def test_a_6000_character_reply_arrives_in_parts_within_the_limit(fast, api):
    paragraphs = [(f"Đoạn {i}: " + "Sách là người bạn tốt. " * 22).strip() for i in range(12)]
    long_text = "\n\n".join(paragraphs)
    assert len(long_text) >= 6000
    async with zalo.running(fast, **options(api)) as adapter:
        buttons = [[Button("Gia hạn", payload=fast.router.encode(AN, "lang", "vi"))]]
        delivery = await adapter.channel.send(AN, Reply(long_text, buttons=buttons))
    sent = api.texts(AN)
    assert len(sent) >= 4 and all(len(part) <= 2000 for part in sent)
    assert delivery.message_ref == api.sent(AN)[-1].response["result"]["message_id"]
    # Cut on paragraph boundaries: every part starts a paragraph, nothing lost or duplicated.
    assert all(part.startswith("Đoạn ") for part in sent)
    assert "\n\n".join(sent).startswith(long_text) and sent[-1].endswith("(ví dụ: 1).")
    assert "1. Gia hạn" in sent[-1]


async def test_stickers_voice_and_hidden_content_get_a_friendly_answer(fast, api):
    # The web chat, when it runs, registers its profile with its address (bot/channels/web.py).
    fast.settings.public_url = "https://docsach.example.edu.vn"
    fast.deps.channels["web"] = ChannelProfile(name="web", home="https://docsach.example.edu.vn/chat")
    async with zalo.running(fast, **options(api)) as adapter:
        for push, expected in ((api.push_sticker, "nhãn dán"), (api.push_voice, "tin nhắn thoại"),
                               (api.push_unsupported, "Zalo đã ẩn nội dung")):
            before, sent = adapter.handled, len(api.texts(AN))
            push(AN)
            assert await api.wait_until(lambda b=before: adapter.handled > b)
            [answer] = api.texts(AN)[sent:]
            assert expected in answer and "https://docsach.example.edu.vn/chat" in answer
        # An event nobody knows is logged and ignored: no answer, nothing breaks.
        before, sent = adapter.handled, len(api.texts(AN))
        api.push(api.message(AN, "message.location.received", location={"lat": 22.48, "lng": 103.97}))
        assert await api.wait_until(lambda: adapter.handled > before)
        assert api.texts(AN)[sent:] == []
        assert "Xin chào" in await ZaloUser(api, adapter, AN, "An").say("/start")
        # Without a public address (the web chat only on 127.0.0.1), the library is the way out.
        fast.settings.public_url = None
        fast.deps.channels["web"] = ChannelProfile(name="web", home="http://127.0.0.1:8080/chat")
        sent = len(api.texts(AN))
        api.push_unsupported(AN)
        assert await api.wait_until(lambda: len(api.texts(AN)) > sent)
        assert "Thư viện trường có thể hướng dẫn" in api.texts(AN)[-1] and "http" not in api.texts(AN)[-1]


async def test_photos_in_are_stored_and_photos_out_go_as_signed_links(fast, api, clock):
    jpeg = b"\xff\xd8\xff\xe0" + b"handwritten page" * 100
    async with served(fast, api) as (adapter, base):
        before = adapter.handled
        api.push_image(AN, api.host_file(jpeg))
        assert await api.wait_until(lambda: adapter.handled > before)
        assert "/camnhan" in api.texts(AN)[-1]                          # reflections answered: no draft yet
        api.push_image(AN, f"{api.url}/cdn/gone.jpg")                  # Zalo's link no longer works
        assert await api.wait_until(lambda: adapter.handled > before + 1)
        assert "Không tải được ảnh này" in api.texts(AN)[-1]
        api.push_image(AN, api.host_file(b"not an image at all", "image/jpeg"))
        assert await api.wait_until(lambda: adapter.handled > before + 2)
        assert "không phải là ảnh" in api.texts(AN)[-1]
        async with fast.db.session() as s:
            [stored] = (await s.execute(select(StoredPhoto))).scalars().all()
        assert stored.mime_type == "image/jpeg" and stored.size == len(jpeg)

        # A moderator's review shows the photo: Zalo gets a signed link to it on our server.
        await adapter.channel.send(PAO, Reply("Cảm nhận chờ duyệt", photo=stored.sha256))
        [photo] = [c for c in api.calls_to("sendPhoto") if c.chat_id == PAO]
        url = photo.params["photo"]
        assert url.startswith(base + "/files/photo/" + stored.sha256)
        async with ClientSession() as http:
            async with http.get(url) as got:
                assert got.status == 200 and await got.read() == jpeg
            async with http.get(url[:-3] + "AAA") as forged:
                assert forged.status == 404
        assert api.texts(PAO)[-1] == "Cảm nhận chờ duyệt"
        api.fail_next("sendPhoto", 400, description="cannot download the photo")
        await adapter.channel.send(PAO, Reply("Vẫn có chữ", photo=stored.sha256))
        assert api.texts(PAO)[-1] == "Vẫn có chữ"                       # Zalo refused the photo, not the text
    fast.settings.public_url = None        # no public address: the photo cannot be shown, said so
    async with zalo.running(fast, **options(api)) as adapter:
        await adapter.channel.send(PAO, Reply("Cảm nhận", photo=stored.sha256))
        assert "không hiển thị được trên Zalo" in api.texts(PAO)[-1]


async def test_documents_are_links_when_a_public_address_is_set(fast, api, clock):
    db = fast.db
    fast.settings.public_url = None
    reply = Reply("Phiếu mã liên kết", attachment=Attachment("slips-10A1.pdf", b"%PDF-1.4 slips"))
    async with zalo.running(fast, **options(api)) as adapter:
        await adapter.channel.send(AN, reply)
        assert "chưa có địa chỉ công khai" in api.texts(AN)[-1]
    async with served(fast, api) as (adapter, base):
        await adapter.channel.send(AN, reply)
        [url] = re.findall(r"https?://\S+/files/\S+", api.texts(AN)[-1])
        assert url.startswith(base) and "slips-10A1.pdf" in url
        async with ClientSession() as http:
            async with http.get(url) as got:
                assert got.status == 200 and await got.read() == b"%PDF-1.4 slips"
                assert got.headers["Content-Disposition"].startswith("attachment")
            async with http.get(url.replace("/files/", "/files/9")) as forged:
                assert forged.status == 404
            clock.set(clock.now() + timedelta(hours=25))
            async with http.get(url) as expired:
                assert expired.status == 404
    async with db.session() as s:
        assert (await s.execute(select(func.count()).select_from(Download))).scalar_one() == 1


async def test_webhook_refuses_a_wrong_or_missing_secret_and_answers_the_right_one(fast, api):
    fast.settings.zalo_webhook_secret = "s3cret-for-the-webhook"
    async with served(fast, api) as (adapter, base):
        assert api.webhook["url"] == base + "/zalo/webhook"
        assert api.webhook["secret_token"] == "s3cret-for-the-webhook"
        update = api.message(AN, text="/start")
        assert await api.post_to_webhook(update, secret="wrong-secret-value") == 403
        assert await api.post_to_webhook(update, secret=None) == 403
        assert await api.post_to_webhook(update, body=b"{" + b" " * 70_000 + b"}") == 413
        assert await api.post_to_webhook(update, body=b"not json") == 400

        async def endless():                    # chunked, with no Content-Length to refuse early
            for _ in range(10):
                yield b" " * 10_000

        async with ClientSession() as http:
            async with http.post(base + "/zalo/webhook", data=endless(),
                                 headers={"X-Bot-Api-Secret-Token": "s3cret-for-the-webhook"}) as chunked:
                assert chunked.status == 413
        assert api.texts(AN) == []                                # nothing refused was handled
        assert await api.post_to_webhook(update) == 200
        assert await api.post_to_webhook(update, envelope=False) == 200     # the bare shape, repeated
        assert await api.wait_until(lambda: adapter.handled >= 2)
        [answer] = api.texts(AN)
        assert answer.startswith("Xin chào")
        # A pushed update is POSTed by the platform itself while the webhook is set.
        api.push_text(AN, "noi co don con lai")
        assert await api.wait_until(lambda: adapter.handled >= 3)
        assert BOOK in api.texts(AN)[-1]
        assert api.calls_to("getUpdates") == []                   # polling and webhook exclude each other


# -- delivery outcomes: sent / retry later / uncertain / unreachable -------------------------------

async def test_quota_and_server_errors_are_retried_inside_and_outcomes_classified(fast, api):
    async with zalo.running(fast, **options(api)) as adapter:
        channel = adapter.channel
        api.fail_next("sendMessage", 429)                            # ok:false 429 inside HTTP 200
        api.fail_next("sendMessage", 502, http_status=502)           # a real HTTP 502
        assert (await channel.send(AN, Reply("một"))).message_ref
        assert api.texts(AN) == ["một"]
        api.fail_next("sendMessage", 429, http_status=429, times=3)  # quota, more often than we retry
        with pytest.raises(DeliveryFailed):
            await channel.send(AN, Reply("hai"))
        api.fail_next("sendMessage", 400, description="text is invalid")
        with pytest.raises(DeliveryFailed):
            await channel.send(AN, Reply("ba"))
        api.fail_next("sendMessage", 504, http_status=504)           # the gateway gave up: it may have gone
        with pytest.raises(DeliveryUncertain):
            await channel.send(AN, Reply("bốn"))
        await ZaloUser(api, adapter, PAO, "Páo").say("/start")      # Páo has written to the bot once
        api.block_chat(PAO)
        with pytest.raises(ChatUnreachable):
            await channel.send(PAO, Reply("năm"))
        with pytest.raises(ChatUnreachable):                         # now refused without asking Zalo
            await channel.send(PAO, Reply("sáu"))
    assert [c.text for c in api.calls_to("sendMessage") if c.chat_id == PAO][1:] == ["năm"]
    assert api.texts(AN) == ["một"]


async def test_a_slow_answer_is_uncertain_and_the_reminder_is_never_sent_twice(fast, api, clock):
    db = fast.db
    async with zalo.running(fast, **options(api), request_timeout=0.3) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        await an.say(await link_code(db, "HS001", clock))
        clock.set(at(2026, 12, 1, 9))
        await lend(db, "HS001", date(2026, 12, 3))
        api.delay("sendMessage", 1.0)                 # processed at once, answered too late
        report = await sweeper_for(fast).sweep()
        assert report.uncertain == 1 and report.messages == 0
        api.delay("sendMessage", 0)
        clock.set(clock.now() + timedelta(hours=1))
        again = await sweeper_for(fast).sweep()
        assert again.messages == 0                     # it may have arrived: not sent again
    reminders = [c for c in api.calls_to("sendMessage") if c.chat_id == AN and "03/12/2026" in c.params["text"]]
    assert len(reminders) == 1
    async with db.session() as s:
        [notice] = (await s.execute(select(Notification))).scalars().all()
    assert notice.status == NotificationStatus.UNCERTAIN


async def test_polling_backs_off_on_errors_and_recovers(fast, api):
    api.fail_next("getUpdates", 500, http_status=500, times=3)
    async with zalo.running(fast, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        assert "Xin chào" in await an.say("/start")
    failed = [c for c in api.calls_to("getUpdates") if not c.ok and c.status == 500]
    assert len(failed) == 3
    gaps = [b.at - a.at for a, b in zip(failed, failed[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.3                     # backing off, not hammering


async def test_pacing_keeps_the_configured_rate_and_two_a_second_per_chat(demo_app, api):
    demo_app.settings.zalo_messages_per_second = 10
    async with zalo.running(demo_app, **dict(options(api), per_chat_interval=zalo.PER_CHAT_INTERVAL)) as adapter:
        await asyncio.gather(*(adapter.channel.send(f"chat{i}", Reply(f"tin {i}")) for i in range(12)))
        times = sorted(c.at for c in api.calls_to("sendMessage"))
        for i in range(len(times) - 10):
            assert times[i + 10] - times[i] >= 0.9         # never more than 10 in any second
        await adapter.channel.send("chat0", Reply("\n\n".join(["x" * 1500] * 3)))   # three parts, one chat
    parts = [c.at for c in api.calls_to("sendMessage") if c.chat_id == "chat0"][1:]
    assert len(parts) == 3 and all(b - a >= 0.45 for a, b in zip(parts, parts[1:], strict=False))


async def test_cli_remind_once_reaches_zalo_chats(fast, api, clock, capsys):
    from bot.cli import build_parser, cmd_remind
    from tests.test_reminders import link

    fast.settings.zalo_token, fast.settings.zalo_api_base_url = api.token, api.base_url
    await link(fast.db, "HS001", channel="zalo", language="vi")      # chat id "HS001" on Zalo
    clock.set(at(2026, 12, 1, 9))
    await lend(fast.db, "HS001", date(2026, 12, 3))
    parser, _ = build_parser()
    assert await cmd_remind(fast, parser.parse_args(["remind", "--once"])) == 0
    assert "sent 1 messages" in capsys.readouterr().out
    [reminder] = api.texts("HS001")
    assert "03/12/2026" in reminder and re.search(r"^1\. .*Gia hạn", reminder, re.MULTILINE)
    assert api.calls_to("getUpdates") == []                          # a one-off sweep does not poll


async def test_one_poller_per_bot_across_workers_and_a_takeover(fast, api, settings, clock, catalogs):
    other = build_app(settings, db=fast.db, clock=clock, catalogs=catalogs)
    other.settings.zalo_messages_per_second = 200
    async with zalo.running(fast, **dict(options(api), lease_wait=0.05)) as first:
        async with zalo.running(other, **dict(options(api), lease_wait=0.05)) as second:
            await ZaloUser(api, first, AN, "An").say("/start")
            await asyncio.sleep(0.3)
            assert first.polls >= 1 and second.polls == 0          # the second one waits
            # Both still send: pushed notices go out from either process.
            await second.channel.send(AN, Reply("từ tiến trình thứ hai"))
            await first.stop()
            assert "Xin chào" in await ZaloUser(api, second, AN, "An").say("/start")   # taken over
            assert second.polls >= 1
    assert api.texts(AN)[1] == "từ tiến trình thứ hai"


async def test_settings_that_cannot_work_are_one_clear_sentence(demo_app, api):
    from bot.channels import configured
    from bot.channels.base import ChannelError, RunOptions

    settings = demo_app.settings
    settings.zalo_token = "not-a-token"
    with pytest.raises(ChannelError, match="does not look like a Zalo bot token"):
        configured(demo_app, RunOptions())
    settings.zalo_token, settings.zalo_webhook_secret = api.token, "long-enough-secret"
    with pytest.raises(ChannelError, match="DOCSACH_PUBLIC_URL is not"):
        configured(demo_app, RunOptions())
    settings.public_url, settings.zalo_webhook_secret = "https://thuvien.example.vn", "short"
    with pytest.raises(ChannelError, match="8 to 256 characters"):
        configured(demo_app, RunOptions())
    settings.zalo_webhook_secret = None
    running = configured(demo_app, RunOptions())                 # Zalo (and the web chat): no terminal chat
    assert [c.name for c in running] == ["zalo", "web"]
    adapter = running[0]
    assert adapter.messaging and adapter.webhook is None
    wrong = zalo.ZaloAdapter(demo_app, token="1:wrong", base_url=api.base_url)
    with pytest.raises(ChannelError, match="Zalo refused ZALO_BOT_TOKEN") as refused:
        await wrong.start()
    assert "wrong" not in str(refused.value)
    unreachable = zalo.ZaloAdapter(demo_app, token=api.token, base_url="http://127.0.0.1:1/bot")
    with pytest.raises(ChannelError, match="Cannot reach the Zalo Bot API") as down:
        await unreachable.start()
    assert down.value.exit_code == 1 and api.token not in str(down.value)


async def test_a_card_linked_on_zalo_and_telegram_gets_each_notice_once_where_it_was_used_last(fast, api, clock):
    from datetime import UTC, datetime

    from sqlalchemy import update

    from handlers.messages import CollectingChannel
    from tests.test_reminders import link

    db = fast.db
    telegram = CollectingChannel("telegram")
    fast.deps.outbound["telegram"] = telegram
    await link(db, "HS001", channel="telegram", language="vi")          # linked on Telegram earlier
    async with zalo.running(fast, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        assert "Đã liên kết" in await an.say(await link_code(db, "HS001", clock))   # and now on Zalo
        clock.set(at(2026, 12, 1, 9))
        await lend(db, "HS001", date(2026, 12, 3))
        assert (await sweeper_for(fast).sweep()).messages == 1
        assert "03/12/2026" in api.texts(AN)[-1] and telegram.sent == []
        # The student goes back to Telegram: the next notice (due today) follows them there, once.
        async with db.transaction() as s:
            await s.execute(update(ChatIdentity).where(ChatIdentity.channel == "telegram")
                            .values(last_seen_at=datetime.now(UTC) + timedelta(minutes=5)))
        sent_on_zalo = len(api.texts(AN))
        clock.set(at(2026, 12, 3, 9))
        assert (await sweeper_for(fast).sweep()).messages == 1
        assert (await sweeper_for(fast).sweep()).messages == 0
        assert len(telegram.sent) == 1 and len(api.texts(AN)) == sent_on_zalo


async def test_a_broken_database_gets_an_apology_not_silence(fast, api):
    async with zalo.running(fast, **options(api)) as adapter:
        an = ZaloUser(api, adapter, AN, "An")
        assert "Xin chào" in await an.say("/start")
        await fast.db.engine.dispose()
        real = fast.db.sessions
        fast.db.sessions = None          # every database call now fails
        try:
            assert "docsach đang gặp trục trặc" in await an.say("/help")
        finally:
            fast.db.sessions = real
        assert "docsach — trợ lý thư viện" in await an.say("/help")     # and it recovers


async def test_qr_landing_pages_offer_to_continue_in_zalo(fast, api):
    from bot.server import Server

    fast.settings.zalo_bot_link = "https://zalo.me/s/1234567890/"
    async with db_title(fast.db) as title_id, zalo.running(fast, **options(api)) as adapter:
        server = Server(fast, "127.0.0.1", 0)
        server.mount([adapter])
        server.mount_configured()
        await server.start()
        try:
            async with ClientSession() as http, http.get(f"{server.url}/b/t{title_id}") as page:
                html = await page.text()
        finally:
            await server.stop()
    assert page.status == 200 and BOOK.split(" :")[0] in html
    assert 'href="https://zalo.me/s/1234567890/"' in html and "Zalo" in html


@contextlib.asynccontextmanager
async def db_title(db):
    async with db.session() as s:
        yield (await s.execute(select(Title.id).where(Title.title == BOOK))).scalar_one()


async def test_a_number_answers_the_open_question_not_an_older_list(fast, api, clock):
    async with zalo.running(fast, **options(api)) as adapter:
        lib = ZaloUser(api, adapter, "lib1", "Thủ thư")
        assert "Đã liên kết" in await lib.say(await link_code(fast.db, "TT001", clock))
        await lib.say("noi co don")                          # a list: 1–5 and "Tiếp ▶"
        assert "Nhận trả" in await lib.say("/return")          # a question with no choices of its own
        answer = await lib.say("3")                           # a (numeric) barcode, not book 3
        assert not answer.startswith("📖") and "Nhận trả" not in answer
        await lib.say("/cancel")
        # A question that comes with its own choices: the number picks one of them.
        assert "1. ↩️ Huỷ" in await lib.say("/newcampaign")
        assert "Đã huỷ" in await lib.say("1")
