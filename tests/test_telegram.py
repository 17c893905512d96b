"""Telegram end to end: the real python-telegram-bot stack over real HTTP against the fake Bot API.

Each test runs the demo library behind ``bot.channels.telegram.running`` — the same code ``docsach run``
uses — pointed at :class:`tests.fake_bot_api.FakeBotApi`.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from bot.channels import telegram
from bot.config import parse_listen
from handlers.messages import Button, ChatUnreachable, DeliveryFailed, DeliveryUncertain, Reply
from services import patrons
from tests.fake_bot_api import FakeBotApi

# PTB itself warns whenever it builds a RetryAfter from an int (the Bot API sends ints).
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")

CHAT = 4242
GROUP = -100777


def options(api: FakeBotApi, **extra) -> dict:
    return dict(token=api.token, base_url=api.base_url, poll_timeout=1, backoff=(0.05, 0.1), **extra)


@pytest.fixture
async def tg(app, fake_bot_api: FakeBotApi):
    """The bot on an empty library (the catalog tests use ``demo_app``)."""
    async with telegram.running(app, **options(fake_bot_api)) as adapter:
        yield adapter


# Pure transport behaviour (retries, splitting, webhook HTTP) does not depend on the database.
transport_only = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


def texts(api: FakeBotApi, chat_id: int) -> list[str]:
    return [m.get("text") or m.get("caption") or "" for m in api.sent_messages(chat_id)]


async def test_start_help_and_language_from_language_code(tg, fake_bot_api: FakeBotApi, app):
    api = fake_bot_api
    # from getMe: the channel profile's links
    assert app.deps.channels["telegram"].home == "https://t.me/docsach_test_bot"
    assert app.deps.outbound["telegram"] is tg.channel

    api.push_message(CHAT, "/start", language_code="en-US")
    [hello] = await api.wait_for_sent(CHAT)
    assert hello["text"].startswith("Hello! I am docsach")

    api.push_message(CHAT + 1, "/start", language_code="vi")
    [xin_chao] = await api.wait_for_sent(CHAT + 1)
    assert xin_chao["text"].startswith("Xin chào!")

    api.push_message(CHAT, "/help@docsach_test_bot", language_code="en")
    help_text = (await api.wait_for_sent(CHAT, count=2))[-1]["text"]
    assert "/language" in help_text and "/help" in help_text

    # The /language keyboard: pressing a button answers the query and edits the message in place.
    api.push_message(CHAT, "/language", language_code="en")
    chooser = (await api.wait_for_sent(CHAT, count=3))[-1]
    buttons = chooser["reply_markup"]["inline_keyboard"][0]
    assert [b["text"] for b in buttons] == ["Tiếng Việt", "English"]
    assert all(len(b["callback_data"].encode()) <= 64 for b in buttons)
    api.push_callback(CHAT, chooser["message_id"], buttons[0]["callback_data"], language_code="en")
    await api.wait_for("editMessageText")
    await api.wait_for("answerCallbackQuery")
    edited = api.message(CHAT, chooser["message_id"])
    assert edited["text"] == "Đã chuyển sang Tiếng Việt."
    assert len(api.sent_messages(CHAT)) == 3              # edited, not sent anew
    # The choice sticks over Telegram's language_code.
    api.push_message(CHAT, "/start", language_code="en")
    assert (await api.wait_for_sent(CHAT, count=4))[-1]["text"].startswith("Xin chào!")


async def test_set_my_commands_in_vietnamese_and_english(tg, fake_bot_api: FakeBotApi):
    api = fake_bot_api
    vi = {c["command"]: c["description"] for c in api.get_commands(language_code="vi")}
    en = {c["command"]: c["description"] for c in api.get_commands(language_code="en")}
    default = {c["command"] for c in api.get_commands()}
    assert {"help", "language", "cancel"} <= set(en) == set(vi) == default
    assert en["help"] == "the commands you can use"
    assert vi["help"] != en["help"] and not vi["help"].startswith("/")


async def test_forged_and_foreign_buttons_say_expired(tg, fake_bot_api: FakeBotApi, app):
    api = fake_bot_api
    api.push_message(CHAT, "/language", language_code="en")
    [chooser] = await api.wait_for_sent(CHAT)
    real = chooser["reply_markup"]["inline_keyboard"][0][1]["callback_data"]
    forged = real[:-3] + ("AAA" if not real.endswith("AAA") else "BBB")
    api.push_callback(CHAT, chooser["message_id"], forged, language_code="en")
    # A payload signed for another chat is refused too.
    other = app.router.encode(str(CHAT + 5), "lang", "en")
    api.push_callback(CHAT, chooser["message_id"], other, language_code="en")
    answers = await api.wait_for("answerCallbackQuery", count=2)
    assert [a.params.get("text") for a in answers] == ["This button has expired. Please start again."] * 2
    assert api.calls_to("editMessageText") == []
    assert len(api.sent_messages(CHAT)) == 1          # the toast said it; no extra message


@transport_only
async def test_429_is_retried_and_delivered_once(tg, fake_bot_api: FakeBotApi):
    api = fake_bot_api
    api.fail_next("sendMessage", 429, retry_after=1)
    api.push_message(CHAT, "/start", language_code="en")
    await api.wait_for("sendMessage", ok=True, timeout=8)
    calls = api.calls_to("sendMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 1.0               # honoured retry_after
    assert len(api.sent_messages(CHAT)) == 1


@transport_only
async def test_5xx_is_retried_with_backoff(tg, fake_bot_api: FakeBotApi):
    api = fake_bot_api
    api.fail_next("sendMessage", 502, times=2)
    api.push_message(CHAT, "/start", language_code="en")
    await api.wait_for("sendMessage", ok=True)
    assert [c.status for c in api.calls_to("sendMessage")] == [502, 502, 200]
    assert len(api.sent_messages(CHAT)) == 1
    # A push that keeps failing is reported as failed (safe to try later), not lost silently.
    api.fail_next("sendMessage", 500, times=3)
    with pytest.raises(DeliveryFailed):
        await tg.channel.send(str(CHAT), Reply("reminder"))
    await tg.channel.send(str(CHAT), Reply("reminder"))
    assert texts(api, CHAT)[-1] == "reminder" and len(api.sent_messages(CHAT)) == 2


async def test_403_marks_the_chat_unreachable_and_stops_pushes(tg, fake_bot_api: FakeBotApi, app):
    api = fake_bot_api
    db = app.db
    delivery = await tg.channel.send(str(CHAT), Reply("hi", buttons=[[Button("docs", url="https://t.me/x")]]))
    assert delivery.message_ref == str(api.last_sent(CHAT)["message_id"])

    api.block_chat(CHAT)
    api.push_message(CHAT, "/start", language_code="en")       # the reply is refused with 403
    [refused] = await api.wait_for("sendMessage", ok=False)
    assert refused.status == 403
    await api.wait_idle()
    for _ in range(50):                                         # marked right after the 403
        if await patrons.is_unreachable(db, "telegram", str(CHAT)):
            break
        await asyncio.sleep(0.02)
    assert await patrons.is_unreachable(db, "telegram", str(CHAT))

    calls = len(api.calls)
    with pytest.raises(ChatUnreachable):
        await tg.channel.send(str(CHAT), Reply("your book is due"))
    assert len(api.calls) == calls                              # Telegram was not even asked

    # A pushed message that meets the block marks the chat, too.
    api.push_message(CHAT + 1, "/start", language_code="en")
    await api.wait_for_sent(CHAT + 1)
    api.block_chat(CHAT + 1)
    with pytest.raises(ChatUnreachable):
        await tg.channel.send(str(CHAT + 1), Reply("your book is due"))
    assert await patrons.is_unreachable(db, "telegram", str(CHAT + 1))

    # Writing again (after unblocking) makes the chat reachable again.
    api.unblock_chat(CHAT)
    api.push_message(CHAT, "/help", language_code="en")
    await api.wait_for_sent(CHAT, count=2)
    assert not await patrons.is_unreachable(db, "telegram", str(CHAT))


@transport_only
async def test_push_timeout_is_uncertain_and_not_repeated(app, fake_bot_api: FakeBotApi):
    api = fake_bot_api
    async with telegram.running(app, **options(api, read_timeout=0.3)) as adapter:
        api.delay("sendMessage", 1.0)
        with pytest.raises(DeliveryUncertain):
            await adapter.channel.send(str(CHAT), Reply("due tomorrow"))
        assert len(api.calls_to("sendMessage")) == 1          # never blindly repeated
        assert texts(api, CHAT) == ["due tomorrow"]           # (it did arrive)
        api.delay("sendMessage", 0)


@transport_only
async def test_error_handler_apologises_in_the_users_language(tg, fake_bot_api: FakeBotApi, caplog):
    api = fake_bot_api
    api.fail_next("sendMessage", 400, description="Bad Request: can't parse entities")
    api.push_message(CHAT, "/start", language_code="vi")
    [sorry] = await api.wait_for_sent(CHAT)
    assert sorry["text"].startswith("Xin lỗi, đã có lỗi xảy ra")
    assert any("handling update" in r.getMessage() and f"chat {CHAT}" in r.getMessage()
               for r in caplog.records)


async def test_groups_only_hear_commands_and_mentions(tg, fake_bot_api: FakeBotApi, app):
    api = fake_bot_api
    api.push_message(GROUP, "any good books about dragons?", user_id=CHAT, language_code="en")
    api.push_message(GROUP, "/help@some_other_bot", user_id=CHAT, language_code="en")
    api.push_message(GROUP, "/help@docsach_test_bot", user_id=CHAT, language_code="en")
    api.push_message(GROUP, "@docsach_test_bot /language", user_id=CHAT, language_code="en")
    await api.wait_idle()
    sent = await api.wait_for_sent(GROUP, count=2)
    assert "/language" in sent[0]["text"]
    assert len(api.sent_messages(GROUP)) == 2
    # The person's own (private) chat is still where pushes go, not the group.
    async with app.db.transaction() as s:
        from sqlalchemy import select

        from services.models import ChatIdentity
        identity = (await s.execute(select(ChatIdentity).where(
            ChatIdentity.channel == "telegram", ChatIdentity.external_id == str(CHAT)))).scalar_one()
    assert identity.chat_id == str(CHAT)


@transport_only
async def test_long_replies_are_split_and_attachments_sent(tg, fake_bot_api: FakeBotApi):
    from handlers.messages import Attachment

    api = fake_bot_api
    long = "\n".join(f"dòng {n} " + "x" * 60 for n in range(100))
    await tg.channel.send(str(CHAT), Reply(long, buttons=[[Button("ok", url="https://t.me/docsach_test_bot")]]))
    parts = api.sent_messages(CHAT)
    assert len(parts) == 2 and all(len(p["text"]) <= 4096 for p in parts)
    assert "\n".join(p["text"] for p in parts) == long
    assert "reply_markup" in parts[-1] and "reply_markup" not in parts[0]
    await tg.channel.send(str(CHAT), Reply("nhãn QR", attachment=Attachment("labels.pdf", b"%PDF-1.4 test")))
    [doc] = await api.wait_for("sendDocument")
    assert doc.params["caption"] == "nhãn QR" and doc.files["document"].data == b"%PDF-1.4 test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@transport_only
async def test_webhook_mode_checks_the_secret(app, fake_bot_api: FakeBotApi):
    api = fake_bot_api
    port = free_port()
    hook = telegram.Webhook(url=f"http://127.0.0.1:{port}/tg/hook", host="127.0.0.1", port=port,
                            secret="s3cret-Token_1")
    async with telegram.running(app, webhook=hook, **options(api)):
        assert api.webhook["url"] == hook.url and api.webhook["secret_token"] == "s3cret-Token_1"
        assert api.calls_to("getUpdates") == []
        update = api.message_update(CHAT, "/start", language_code="en")
        assert await api.post_update_to_webhook(None, update, secret_token="wrong") == 403
        assert await api.post_update_to_webhook(None, update, secret_token=None) == 403
        assert api.calls_to("sendMessage") == []
        assert await api.post_update_to_webhook(None, update) == 200
        [hello] = await api.wait_for_sent(CHAT)
        assert hello["text"].startswith("Hello!")


def test_split_text_and_file_url():
    assert telegram.split_text("a" * 5000) == ["a" * 4096, "a" * 904]
    assert telegram.split_text("") == ["…"]
    assert telegram.file_base_url("http://127.0.0.1:8081/bot") == "http://127.0.0.1:8081/file/bot"
    assert parse_listen("0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_listen("[::]:8443") == ("::", 8443)


# -- the catalog over Telegram: search → book card → deep link → inline (uses search) --------------

async def _title_id(app, words: str) -> int:
    from sqlalchemy import select

    from services.models import Title
    async with app.db.transaction() as s:
        return (await s.execute(select(Title.id).where(Title.title.contains(words)))).scalars().first()


async def test_search_card_deep_link_and_inline(demo_app, fake_bot_api: FakeBotApi):
    api = fake_bot_api
    title_id = await _title_id(demo_app, "Charlotte Doyle")
    async with telegram.running(demo_app, **options(api)):
        # Plain text searches (typo and all); each hit is a button.
        api.push_message(CHAT, "true confesions charlote doyle", language_code="en")
        [results] = await api.wait_for_sent(CHAT)
        assert "Charlotte Doyle" in results["text"]
        book = next(b for row in results["reply_markup"]["inline_keyboard"] for b in row
                    if "Charlotte Doyle" in b["text"])
        assert len(book["callback_data"].encode()) <= 64
        api.push_callback(CHAT, results["message_id"], book["callback_data"], language_code="en")
        card = (await api.wait_for_sent(CHAT, predicate=lambda m: m["text"].startswith("📖")))[-1]
        assert "The true confessions of Charlotte Doyle" in card["text"] and "Avi" in card["text"]
        await api.wait_for("answerCallbackQuery")

        # A QR code / t.me link: /start t<id> opens the same card.
        api.push_message(CHAT, f"/start t{title_id}", language_code="en")
        cards = await api.wait_for_sent(CHAT, count=2, predicate=lambda m: m["text"].startswith("📖"))
        assert cards[-1]["text"] == card["text"]

        # Inline mode: results with availability, a deep link back to the bot, paging.
        api.push_inline_query(CHAT, "charlotte doyle", language_code="en")
        [answer] = await api.wait_for("answerInlineQuery")
        assert answer.ok and answer.params["is_personal"] is True and answer.params["cache_time"] <= 60
        first = answer.params["results"][0]
        assert first["type"] == "article" and "Charlotte Doyle" in first["title"]
        assert "on the shelf" in first["description"] or "out on loan" in first["description"]
        assert first["input_message_content"]["message_text"].startswith("📖 The true confessions")
        [[open_button]] = first["reply_markup"]["inline_keyboard"]
        assert open_button["url"] == f"https://t.me/docsach_test_bot?start=t{title_id}"

        api.push_inline_query(CHAT, "the", language_code="vi")
        page1 = (await api.wait_for("answerInlineQuery", count=2))[-1].params
        assert len(page1["results"]) == 10 and page1["next_offset"] == "10"
        api.push_inline_query(CHAT, "the", offset="10", language_code="vi")
        page2 = (await api.wait_for("answerInlineQuery", count=3))[-1].params
        assert {r["id"] for r in page2["results"]}.isdisjoint({r["id"] for r in page1["results"]})

        api.push_inline_query(CHAT, "", language_code="vi")
        hint = (await api.wait_for("answerInlineQuery", count=4))[-1].params
        [only] = hint["results"]
        assert only["id"] == "hint" and only["title"].startswith("Gõ tên sách")
        assert only["reply_markup"]["inline_keyboard"][0][0]["url"] == "https://t.me/docsach_test_bot"
