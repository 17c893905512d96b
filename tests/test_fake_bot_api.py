"""The fake Bot API server driven by the real python-telegram-bot stack over real HTTP."""

from __future__ import annotations

import asyncio
import io
import socket
import time

import pytest
from telegram import (
    BotCommand,
    BotCommandScopeChat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InlineQueryResultArticle,
    InputTextMessageContent,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ExtBot,
    InlineQueryHandler,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from tests.fake_bot_api import FakeBotApi, command_entities, fake_bot_api, run_polling

__all__ = ["fake_bot_api"]  # the plugin fixture, imported here to be used below

CHAT = 42

# PTB itself warns whenever it builds a RetryAfter from an int (the Bot API sends ints).
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")


@pytest.fixture
async def api():
    async with FakeBotApi() as server:
        yield server


def build_app(api: FakeBotApi, errors: asyncio.Queue[BaseException] | None = None) -> Application:
    """A small bot: /start with a keyboard, echo, button presses and inline search."""

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Tìm sách", callback_data="search")]])
        await update.effective_message.reply_text("Xin chào! Mình là Docsach.", reply_markup=keyboard)

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.effective_message.reply_text(f"Bạn nói: {update.effective_message.text}")

    async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        await query.answer("Đang tìm…")
        await query.edit_message_text(f"Đã chọn: {query.data}")

    async def inline(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        q = update.inline_query.query
        await update.inline_query.answer(
            [
                InlineQueryResultArticle(f"book-{i}", f"{q} tập {i}", InputTextMessageContent(f"{q} {i}"))
                for i in (1, 2)
            ],
            cache_time=0,
        )

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if errors is not None:
            errors.put_nowait(context.error)

    app = api.builder().rate_limiter(AIORateLimiter(max_retries=3)).build()
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    app.add_handler(CallbackQueryHandler(button))
    app.add_handler(InlineQueryHandler(inline))
    app.add_error_handler(on_error)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- polling end to end ------------------------------------------------------------------------
async def test_polling_command_callback_and_inline(api: FakeBotApi):
    async with run_polling(build_app(api)):
        update = api.push_message(CHAT, "/start", first_name="Lan")
        assert update["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]

        [call] = await api.wait_for("sendMessage")
        assert call.ok and call.chat_id == CHAT
        assert call.text == "Xin chào! Mình là Docsach."
        # PTB sends reply_markup as a JSON string; the fake decodes it.
        assert call.params["reply_markup"] == {
            "inline_keyboard": [[{"text": "Tìm sách", "callback_data": "search"}]]
        }
        [sent] = api.sent_messages(CHAT)
        assert sent["message_id"] == 2  # per-chat ids: the user's /start was 1
        assert sent["from"]["username"] == "docsach_test_bot"
        assert sent["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "search"

        api.push_message(CHAT, "Harry Potter")
        await api.wait_for("sendMessage", count=2)
        assert api.last_sent(CHAT)["text"] == "Bạn nói: Harry Potter"

        api.push_callback(CHAT, sent["message_id"], "search")
        [answer] = await api.wait_for("answerCallbackQuery")
        assert answer.ok and answer.params["text"] == "Đang tìm…"
        [edit] = await api.wait_for("editMessageText")
        assert edit.ok and edit.params["message_id"] == sent["message_id"]
        edited = api.message(CHAT, sent["message_id"])
        assert edited["text"] == "Đã chọn: search"
        assert "reply_markup" not in edited  # Telegram drops the keyboard when not re-sent
        assert "edit_date" in edited

        api.push_inline_query(7, "Dế Mèn")
        [inline] = await api.wait_for("answerInlineQuery")
        assert inline.ok
        assert [r["id"] for r in inline.params["results"]] == ["book-1", "book-2"]
        assert inline.params["results"][0]["input_message_content"]["message_text"] == "Dế Mèn 1"

        await api.wait_idle()
    methods = {c.method for c in api.calls}
    assert {"getMe", "deleteWebhook", "getUpdates"} <= methods
    assert not api.errors


async def test_429_once_is_retried_by_aio_rate_limiter(api: FakeBotApi):
    api.fail_next("sendMessage", status=429, retry_after=1)
    async with run_polling(build_app(api)):
        started = time.monotonic()
        api.push_message(CHAT, "/start")
        await api.wait_for("sendMessage", ok=True, timeout=5)
        assert time.monotonic() - started >= 1.0  # waited retry_after
    attempts = api.calls_to("sendMessage")
    assert [c.status for c in attempts] == [429, 200]
    assert attempts[0].response["parameters"] == {"retry_after": 1}
    assert len(api.sent_messages(CHAT)) == 1
    assert api.stats.too_many_requests == 1 and api.stats.injected == 1


async def test_blocked_chat_raises_forbidden_in_error_handler(api: FakeBotApi):
    errors: asyncio.Queue[BaseException] = asyncio.Queue()
    api.block_chat(CHAT)
    async with run_polling(build_app(api, errors)):
        api.push_message(CHAT, "/start")
        [call] = await api.wait_for("sendMessage")
        assert call.status == 403
        error = await asyncio.wait_for(errors.get(), timeout=5)
    assert isinstance(error, Forbidden)
    assert "bot was blocked by the user" in str(error)
    assert errors.empty()
    assert api.sent_messages(CHAT) == []


# --- raw Bot: error mapping, uploads, commands, long polling ----------------------------------
async def test_error_statuses_map_to_ptb_exceptions(api: FakeBotApi):
    async with api.bot() as bot:
        api.fail_next("sendMessage", status=502)
        with pytest.raises(NetworkError) as exc:
            await bot.send_message(CHAT, "hi")
        assert not isinstance(exc.value, BadRequest) and "Bad Gateway" in str(exc.value)

        api.fail_next("sendMessage", status=500, times=2)
        for _ in range(2):
            with pytest.raises(NetworkError):
                await bot.send_message(CHAT, "hi")

        api.fail_next("*", status=400, description="Bad Request: chat not found", chat_id=CHAT)
        with pytest.raises(BadRequest, match="(?i)chat not found"):
            await bot.send_message(CHAT, "hi")

        api.fail_next("sendMessage", status=429, retry_after=3)
        with pytest.raises(RetryAfter):
            await bot.send_message(CHAT, "hi")

        with pytest.raises(BadRequest, match="(?i)can't parse entities"):
            await bot.send_message(CHAT, "Sách <Dế Mèn>", parse_mode=ParseMode.HTML)
        msg = await bot.send_message(CHAT, "<b>Dế Mèn</b> &amp; bạn", parse_mode=ParseMode.HTML)
        assert msg.text == "Dế Mèn & bạn"

        too_long = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
        with pytest.raises(BadRequest, match="(?i)button_data_invalid"):
            await bot.send_message(CHAT, "hi", reply_markup=too_long)

        with pytest.raises(BadRequest, match="(?i)not modified"):
            await bot.edit_message_text("Dế Mèn & bạn", chat_id=CHAT, message_id=msg.message_id)
        with pytest.raises(BadRequest, match="(?i)message to edit not found"):
            await bot.edit_message_text("x", chat_id=CHAT, message_id=999)

        with pytest.raises(EndPointNotFound):
            await bot.do_api_request("noSuchMethod")

        assert await bot.send_chat_action(CHAT, "typing") is True
        assert await bot.close() is True and await bot.log_out() is True

    with pytest.raises(InvalidToken):
        async with ExtBot("999:WRONG", base_url=api.base_url):
            pass
    assert api.stats.by_status[401] == 1
    assert api.stats.by_status[502] == 1 and api.stats.by_status[500] == 2


async def test_send_document_and_photo_multipart_upload(api: FakeBotApi):
    payload = b"%PDF-1.4 fake label sheet\n" * 10
    async with api.bot() as bot:
        msg = await bot.send_document(
            CHAT, io.BytesIO(payload), filename="labels.pdf", caption="<b>Nhãn</b> sách", parse_mode="HTML"
        )
        assert msg.document.file_name == "labels.pdf"
        assert msg.document.file_size == len(payload)
        assert msg.caption == "Nhãn sách"
        [call] = api.calls_to("sendDocument")
        assert call.files["document"].data == payload
        assert call.files["document"].filename == "labels.pdf"
        assert api.files[msg.document.file_id].data == payload

        file = await bot.get_file(msg.document.file_id)
        assert bytes(await file.download_as_bytearray()) == payload

        again = await bot.send_document(CHAT, msg.document.file_id)  # resend by file_id
        assert again.document.file_id == msg.document.file_id

        png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
        photo = await bot.send_photo(CHAT, png, caption="QR")
        assert photo.photo[-1].file_size == len(png)
        assert api.files[photo.photo[-1].file_id].data == png
    assert [m.get("caption") for m in api.sent_messages(CHAT)] == ["Nhãn sách", None, "QR"]


async def test_bot_commands_per_scope_and_language(api: FakeBotApi):
    async with api.bot() as bot:
        await bot.set_my_commands([BotCommand("start", "Bắt đầu"), BotCommand("tim", "Tìm sách")])
        await bot.set_my_commands([BotCommand("start", "Start")], language_code="en")
        await bot.set_my_commands([BotCommand("muon", "Mượn")], scope=BotCommandScopeChat(CHAT))
        assert [c.command for c in await bot.get_my_commands()] == ["start", "tim"]
        assert [c.description for c in await bot.get_my_commands(language_code="en")] == ["Start"]
        assert [c.command for c in await bot.get_my_commands(scope=BotCommandScopeChat(CHAT))] == ["muon"]
        assert await bot.delete_my_commands(language_code="en")
        assert await bot.get_my_commands(language_code="en") == ()
        with pytest.raises(BadRequest, match="(?i)bot_command_invalid"):
            await bot.set_my_commands([BotCommand("Bad Command", "x")])
    assert [c["command"] for c in api.get_commands()] == ["start", "tim"]


async def test_get_updates_long_poll_offset_limit_and_allowed_updates(api: FakeBotApi):
    async with api.bot() as bot:
        started = time.monotonic()
        assert await bot.get_updates(timeout=0) == ()

        asyncio.get_running_loop().call_later(0.2, api.push_message, CHAT, "xin chào")
        updates = await bot.get_updates(timeout=5)
        assert 0.15 < time.monotonic() - started < 2  # returned as soon as the update arrived
        assert [u.message.text for u in updates] == ["xin chào"]

        for i in range(3):
            api.push_message(CHAT, f"m{i}")
        first = updates[0].update_id
        batch = await bot.get_updates(offset=first + 1, limit=2, timeout=0)
        assert [u.message.text for u in batch] == ["m0", "m1"]
        batch = await bot.get_updates(offset=batch[-1].update_id + 1, timeout=0)
        assert [u.message.text for u in batch] == ["m2"]

        api.push_inline_query(7, "sách")
        api.push_message(CHAT, "/muon@docsach_test_bot 123")
        batch = await bot.get_updates(offset=batch[-1].update_id + 1, allowed_updates=["message"], timeout=0)
        assert [u.message.text for u in batch] == ["/muon@docsach_test_bot 123"]
        assert batch[0].message.entities[0].length == len("/muon@docsach_test_bot")
        await bot.get_updates(offset=batch[-1].update_id + 1, timeout=0)
        assert api.pending_updates == []

        await bot.set_webhook("https://example.invalid/hook", secret_token="abc")
        info = await bot.get_webhook_info()
        assert info.url == "https://example.invalid/hook"
        with pytest.raises(Conflict, match="(?i)webhook is active"):
            await bot.get_updates(timeout=0)
        await bot.delete_webhook()


async def test_rate_limit_mode(api: FakeBotApi):
    api.rate_limit(per_second=30, per_chat_per_second=1)
    async with api.bot() as bot:
        await bot.send_message(CHAT, "1")
        with pytest.raises(RetryAfter):
            await bot.send_message(CHAT, "2")
        await bot.send_message(CHAT + 1, "other chat is fine")
    assert api.stats.rate_limited == 1

    # AIORateLimiter retries the 429s until every message is delivered exactly once.
    api.reset()
    api.rate_limit(per_second=30, per_chat_per_second=2)
    async with ExtBot(api.token, base_url=api.base_url, rate_limiter=AIORateLimiter(max_retries=3)) as bot:
        await asyncio.gather(*(bot.send_message(7, f"nhắc {i}") for i in range(3)))
    assert sorted(m["text"] for m in api.sent_messages(7)) == ["nhắc 0", "nhắc 1", "nhắc 2"]
    assert api.stats.rate_limited >= 1
    assert len(api.calls_to("sendMessage", ok=True)) == 3


async def test_slow_reply_times_out_after_the_message_was_sent(api: FakeBotApi):
    api.delay("sendMessage", 0.5)
    async with api.bot(request=HTTPXRequest(read_timeout=0.1)) as bot:
        with pytest.raises(TimedOut):
            await bot.send_message(CHAT, "chậm")
        assert api.last_sent(CHAT)["text"] == "chậm"  # Telegram got it; only the reply was lost
        api.delay("sendMessage", 0)
        started = time.monotonic()
        await bot.send_message(CHAT, "nhanh")
        assert time.monotonic() - started < 0.4
    assert [m["text"] for m in api.sent_messages(CHAT)] == ["chậm", "nhanh"]


async def test_command_entities_use_utf16_offsets():
    assert command_entities("😀 /start") == [{"type": "bot_command", "offset": 3, "length": 6}]
    assert command_entities("no commands / here") == []


async def test_plugin_fixture(fake_bot_api: FakeBotApi):
    async with fake_bot_api.bot() as bot:
        me = await bot.get_me()
    assert me.username == "docsach_test_bot" and me.id == 123


# --- webhook ----------------------------------------------------------------------------------
async def test_webhook_secret_token(api: FakeBotApi):
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    app = build_app(api)
    await app.initialize()
    await app.start()
    await app.updater.start_webhook(
        listen="127.0.0.1", port=port, url_path="tg-hook", webhook_url=url, secret_token="s3cret"
    )
    try:
        assert api.webhook["url"] == url and api.webhook["secret_token"] == "s3cret"

        assert await api.post_update_to_webhook(url, api.message_update(CHAT, "/start")) == 200
        [call] = await api.wait_for("sendMessage")
        assert call.text == "Xin chào! Mình là Docsach."

        wrong = api.message_update(CHAT, "/start")
        assert await api.post_update_to_webhook(url, wrong, secret_token="nope") == 403
        assert await api.post_update_to_webhook(url, wrong, secret_token=None) == 403
        # The default secret is the registered one; url=None uses the registered URL.
        assert await api.post_update_to_webhook(None, api.message_update(CHAT, "sách")) == 200
        await api.wait_for("sendMessage", count=2)
        await asyncio.sleep(0.1)  # give a wrongly accepted update a chance to show up
        assert [m["text"] for m in api.sent_messages(CHAT)] == [
            "Xin chào! Mình là Docsach.",
            "Bạn nói: sách",
        ]
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
