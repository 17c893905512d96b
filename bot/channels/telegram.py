"""Telegram: python-telegram-bot 22 wired to the platform-neutral router.

PTB updates become :class:`Incoming` events; the router's :class:`Reply` objects become
sendMessage / editMessageText / answerCallbackQuery / sendDocument / sendPhoto. Updates arrive by
long polling (default) or by a webhook on docsach's shared aiohttp server (``bot/server.py``) that
checks Telegram's secret header. Photos people send are downloaded and stored by docsach
(``services/photos.py``), so moderators on any channel can see them; photos we send are uploaded
from there (older reflections may still hold a Telegram file id, which is sent as it is).

Delivery rules, in one place (:class:`ResilientRateLimiter`): 429 waits ``retry_after`` and
retries (PTB's AIORateLimiter); 5xx and failures where the request was not completely written
(no connection, a reset or timeout before the last byte left: :class:`WriteTracingTransport`
knows) are retried with backoff; a failure after the request was written is retried only for
calls that are safe to repeat (edits, answers, settings) — never sendMessage, which could then
arrive twice. An update PTB cannot parse is skipped, not fetched forever (:class:`PollingRequest`). 403 "blocked"
marks the chat unreachable and nothing more is sent there until the person writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeDefault,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InlineQueryResultArticle,
    InputFile,
    InputTextMessageContent,
    LinkPreviewOptions,
    Message,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    ContextTypes,
    InlineQueryHandler,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from bot.app import App
from bot.channels.base import ChannelError, ChannelProfile, RunOptions
from bot.scheduler import RateLimiter
from handlers.core import Router, clean_text
from handlers.i18n import LANGUAGES, Translator
from handlers.messages import (
    Button,
    ChatUnreachable,
    Delivery,
    DeliveryFailed,
    DeliveryUncertain,
    Incoming,
    Reply,
)
from services import patrons
from services.common import Clock, DomainError
from services.db import Database
from services.photos import PhotoStore, is_ref

log = logging.getLogger(__name__)

CHANNEL = "telegram"
ALLOWED_UPDATES = ["message", "callback_query", "inline_query"]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")   # what setWebhook accepts
MAX_MESSAGE = 4096
MAX_CAPTION = 1024
MAX_TOAST = 200
INLINE_CACHE_SECONDS = 10
INLINE_MAX_RESULTS = 50
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

# Bot API methods that change nothing when repeated, so a timeout may be retried blindly.
IDEMPOTENT = frozenset(m.lower() for m in (
    "getMe", "getFile", "getWebhookInfo", "setWebhook", "deleteWebhook", "setMyCommands",
    "deleteMyCommands", "editMessageText", "editMessageReplyMarkup", "deleteMessage",
    "answerCallbackQuery", "answerInlineQuery", "sendChatAction",
))


def profile(username: str | None) -> ChannelProfile:
    """What Telegram can do, and its deep links (``t.me/<bot>?start=<payload>``)."""
    return ChannelProfile(
        name=CHANNEL, max_text=MAX_MESSAGE, max_input=MAX_MESSAGE, max_payload=64, buttons=True,
        edits=True, toasts=True, photos=True, documents=True,
        link_base=f"https://t.me/{username}?start={{payload}}" if username else None,
        home=f"https://t.me/{username}" if username else None,
    )


def deep_link_url(bot_username: str, payload: str) -> str:
    return f"https://t.me/{bot_username}?start={payload}"


def file_base_url(base_url: str) -> str:
    """``…/bot`` → ``…/file/bot``: where the same Bot API server serves files."""
    if base_url.endswith("/bot"):
        return base_url[: -len("/bot")] + "/file/bot"
    return "https://api.telegram.org/file/bot"


# -- failures: what is safe to repeat ---------------------------------------------------------

class WriteTracingTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, noting on any failure whether the whole request had been written.

    Only that tells "not sent" from "maybe delivered": a failed connect, a pool timeout, or a
    reset/timeout while the headers or body were still being written means the Bot API never
    got a complete request (it cannot act on half of one), so it is safe to send again. Once the
    last byte is written, a read timeout or a connection closed before the answer means the
    message may well have arrived. httpcore reports each phase through the ``trace`` request
    extension; the flag rides on the exception as ``request_written``, and PTB keeps that
    exception as the ``__cause__`` of its NetworkError / TimedOut. ``network_backend`` (httpcore's)
    is for tests that inject failures at the socket level."""

    def __init__(self, *, limits: httpx.Limits, proxy: Any = None, network_backend: Any = None) -> None:
        super().__init__(limits=limits, http1=True, http2=False, proxy=proxy)
        if network_backend is not None:
            import httpcore

            self._pool = httpcore.AsyncConnectionPool(
                max_connections=limits.max_connections, max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry, http1=True, http2=False, network_backend=network_backend)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        written = False
        outer = request.extensions.get("trace")

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal written
            if event.endswith("send_request_body.complete"):
                written = True
            if outer is not None:
                await outer(event, info)

        request.extensions = {**request.extensions, "trace": trace}
        try:
            return await super().handle_async_request(request)
        except httpx.HTTPError as exc:
            exc.request_written = written   # type: ignore[attr-defined]
            raise


class TracedRequest(HTTPXRequest):
    """PTB's HTTPXRequest over :class:`WriteTracingTransport` (a fresh one for each client PTB builds)."""

    def __init__(self, *, network_backend: Any = None, **kwargs: Any) -> None:
        self._network_backend = network_backend
        super().__init__(**kwargs)

    def _build_client(self) -> httpx.AsyncClient:
        kwargs = dict(self._client_kwargs)
        limits, proxy = kwargs["limits"], kwargs.pop("proxy", None)
        kwargs["transport"] = WriteTracingTransport(limits=limits, proxy=proxy, network_backend=self._network_backend)
        if proxy is None:
            # httpx only reads HTTP(S)_PROXY / NO_PROXY when it builds the transport itself; keep
            # honouring them (a school network may need a proxy), each proxy behind our transport.
            kwargs["mounts"] = {pattern: WriteTracingTransport(limits=limits, proxy=url) if url else None
                                for pattern, url in _environment_proxies().items()}
        return httpx.AsyncClient(**kwargs)


def _environment_proxies() -> dict[str, str | None]:
    """httpx's reading of HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY ({URL pattern: proxy})."""
    try:
        from httpx._utils import get_environment_proxies
    except ImportError:   # a future httpx moved it: fall back to no proxy from the environment
        return {}
    return get_environment_proxies()


def outcome(error: BaseException) -> str:
    """"not_sent" (the request was not completely written: safe to repeat), "failed" (the server
    answered with an error) or "uncertain" (written, no answer: it may have arrived)."""
    cause = error.__cause__
    written = getattr(cause, "request_written", None)
    if written is not None:   # our transport saw what happened (see WriteTracingTransport)
        return "uncertain" if written else "not_sent"
    if isinstance(error, TimedOut):
        if isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout) or "Pool timeout" in str(error):
            return "not_sent"
        return "uncertain"
    if isinstance(cause, httpx.ConnectError):
        return "not_sent"
    if isinstance(cause, httpx.HTTPError):
        return "uncertain"   # e.g. the connection dropped mid-request
    return "failed"          # a 5xx status from the Bot API


MESSAGE_ENDPOINTS = ("send", "edit", "copy", "forward")


class PollingRequest(HTTPXRequest):
    """getUpdates over httpx, but one update PTB cannot parse (say, a poll from an older
    self-hosted Bot API server without ``allows_revoting``) no longer fails the whole batch:
    PTB would fetch it again forever and answer no one. It becomes an empty update with the
    same id, so the offset moves past it; it is logged once, with its id."""

    @staticmethod
    def parse_json_payload(payload: bytes) -> dict[str, Any]:
        data = HTTPXRequest.parse_json_payload(payload)
        result = data.get("result") if isinstance(data, dict) else None
        if isinstance(result, list):
            data["result"] = [_parseable(raw) for raw in result]
        return data


def _parseable(raw: Any) -> Any:
    try:
        Update.de_json(raw, None)
        return raw
    except Exception as exc:
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if not isinstance(update_id, int):
            raise
        kinds = ",".join(k for k in raw if k != "update_id")[:80]
        log.warning("telegram: skipped update %s (%s) that could not be read: %s: %s",
                    update_id, kinds, type(exc).__name__, str(exc)[:200])
        return {"update_id": update_id}


class ResilientRateLimiter(AIORateLimiter):
    """PTB's AIORateLimiter (flood limits, 429 + ``retry_after``), plus backoff retries for
    5xx and network failures — only where repeating the call cannot duplicate a message."""

    def __init__(self, *, max_retries: int = 3, backoff: tuple[float, ...] = (0.5, 2.0, 5.0),
                 gate: RateLimiter | None = None, **kwargs: Any) -> None:
        super().__init__(max_retries=max_retries, **kwargs)
        self.backoff = tuple(backoff)
        # AIORateLimiter's leaky bucket lets short bursts through; Telegram counts messages in any
        # one-second window. The gate, applied right before each message request leaves, keeps
        # at most its window per second (replies and pushed reminders share it).
        self.gate = gate

    async def process_request(self, callback, args, kwargs, endpoint, data, rate_limit_args):
        if self.gate is not None and endpoint.lower().startswith(MESSAGE_ENDPOINTS):
            inner, gate = callback, self.gate

            async def callback(*a: Any, **k: Any) -> Any:
                await gate.gate()
                return await inner(*a, **k)

        for attempt in range(len(self.backoff) + 1):
            try:
                return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
            except BadRequest:
                raise
            except NetworkError as exc:
                state = outcome(exc)
                if attempt == len(self.backoff) or (state == "uncertain" and endpoint.lower() not in IDEMPOTENT):
                    raise
                log.warning("telegram %s failed (%s: %s); retry %d in %.1fs", endpoint, state, exc,
                            attempt + 1, self.backoff[attempt])
                await asyncio.sleep(self.backoff[attempt])
        raise AssertionError("unreachable")


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """Many chats at once, but each chat's updates strictly in order (flows depend on it)."""

    def __init__(self, concurrency: int = 16) -> None:
        super().__init__(max_concurrent_updates=1024)   # only bounds waiting tasks
        self._running = asyncio.Semaphore(concurrency)
        self._locks: dict[object, asyncio.Lock] = {}
        self._holders: Counter[object] = Counter()

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = _order_key(update)
        self._holders[key] += 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock, self._running:
                await coroutine
        finally:
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key]
                self._locks.pop(key, None)

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def _order_key(update: object) -> object:
    if isinstance(update, Update):
        if update.effective_chat is not None:
            return ("chat", update.effective_chat.id)
        if update.effective_user is not None:
            return ("user", update.effective_user.id)
    return ("other", id(update))


# -- Reply → Bot API --------------------------------------------------------------------------

def keyboard(rows: list[list[Button]]) -> InlineKeyboardMarkup | None:
    """Our buttons as an inline keyboard. Callback payloads go out exactly as the router signed
    them (≤ 64 bytes); PTB's arbitrary_callback_data stays off."""
    built = []
    for row in rows:
        out = []
        for b in row:
            if b.url:
                out.append(InlineKeyboardButton(b.label, url=b.url))
            elif b.switch_inline is not None:
                out.append(InlineKeyboardButton(b.label, switch_inline_query=b.switch_inline))
            elif b.payload:
                out.append(InlineKeyboardButton(b.label, callback_data=b.payload))
        if out:
            built.append(out)
    return InlineKeyboardMarkup(built) if built else None


def split_text(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Telegram takes at most 4096 characters per message: cut at line breaks, then spaces."""
    text = text or "…"
    parts = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    parts.append(text)
    return [p for p in parts if p] or ["…"]


async def photo_input(reply: Reply, photos: PhotoStore | None) -> InputFile | str | None:
    """What sendPhoto gets for ``reply.photo``: the stored bytes, or an old Telegram file id."""
    if not reply.photo:
        return None
    if is_ref(reply.photo):
        stored = await photos.load(reply.photo) if photos is not None else None
        if stored is None:
            log.warning("stored photo %s is missing; sending the text only", reply.photo[:16])
            return None
        return InputFile(io.BytesIO(stored.data), filename=stored.filename)
    return reply.photo


async def send_reply(bot: Bot, chat_id: int | str, reply: Reply, *, photos: PhotoStore | None = None) -> Message:
    """Send one reply as new message(s); the buttons go under the last part. Returns the last.

    Raises :class:`DeliveryUncertain` when part of a split reply went out and the rest failed,
    so nobody retries it whole.
    """
    markup = keyboard(reply.buttons)
    parts = split_text(reply.text)
    if reply.attachment is not None and len(parts) == 1 and len(parts[0]) <= MAX_CAPTION:
        caption, parts = parts[0], []
    else:
        caption = None
    sent: Message | None = None
    photo = await photo_input(reply, photos)
    try:
        if photo is not None:
            sent = await bot.send_photo(chat_id, photo)
        for n, part in enumerate(parts):
            last = n == len(parts) - 1 and reply.attachment is None
            sent = await bot.send_message(chat_id, part, reply_markup=markup if last else None,
                                          link_preview_options=NO_PREVIEW)
        if reply.attachment is not None:
            document = InputFile(io.BytesIO(reply.attachment.data), filename=reply.attachment.filename)
            sent = await bot.send_document(chat_id, document, caption=caption, reply_markup=markup)
    except TelegramError as exc:
        if sent is not None and not isinstance(exc, Forbidden):
            raise DeliveryUncertain(f"part of a split reply was delivered: {exc}") from exc
        raise
    assert sent is not None
    return sent


class TelegramChannel:
    """Pushed messages (reminders, notices) to a Telegram chat: the :class:`OutputChannel`.

    ``send(chat_id, reply)`` returns a :class:`Delivery` with the message id, or raises
    :class:`ChatUnreachable` (blocked / chat gone: marked in the database, and later sends to
    that chat raise at once without calling Telegram), :class:`DeliveryFailed` (not delivered;
    try again later) or :class:`DeliveryUncertain` (a timeout after the request went out: it
    may have arrived, so do not resend blindly). 429s and 5xx are already retried inside.
    """

    name = CHANNEL

    def __init__(self, bot: Bot, db: Database, *, clock: Clock | None = None,
                 photos: PhotoStore | None = None) -> None:
        self.bot = bot
        self.db = db
        self.clock = clock
        self.photos = photos

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        if await patrons.is_unreachable(self.db, CHANNEL, str(chat_id)):
            raise ChatUnreachable(chat_id)
        try:
            message = await send_reply(self.bot, _chat(chat_id), reply, photos=self.photos)
        except DeliveryUncertain:
            raise
        except (Forbidden, ChatMigrated) as exc:
            await self._unreachable(chat_id, exc)
        except BadRequest as exc:
            if "chat not found" in str(exc).lower() or "user is deactivated" in str(exc).lower():
                await self._unreachable(chat_id, exc)
            log.error("telegram refused a pushed message to %s: %s", chat_id, exc)
            raise DeliveryFailed(str(exc)) from exc
        except RetryAfter as exc:
            raise DeliveryFailed(f"rate limited: {exc}") from exc
        except NetworkError as exc:
            if outcome(exc) == "uncertain":
                raise DeliveryUncertain(str(exc)) from exc
            raise DeliveryFailed(str(exc)) from exc
        except TelegramError as exc:
            raise DeliveryFailed(str(exc)) from exc
        return Delivery(message_ref=str(message.message_id))

    async def _unreachable(self, chat_id: str, exc: Exception) -> None:
        log.info("telegram chat %s is unreachable (%s); not messaging it any more", chat_id, exc)
        await patrons.mark_unreachable(self.db, CHANNEL, str(chat_id), self.clock)
        raise ChatUnreachable(chat_id) from exc


def _chat(chat_id: str | int) -> int | str:
    text = str(chat_id)
    return int(text) if re.fullmatch(r"-?\d+", text) else text


# -- the adapter ------------------------------------------------------------------------------

@dataclass
class Webhook:
    """Webhook mode: Telegram POSTs updates to ``url``, a path on the shared server. ``host`` and
    ``port`` are where :func:`running` listens when it is given no server (tests)."""

    url: str
    host: str = "127.0.0.1"
    port: int = 8080
    secret: str = ""

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"


def menu_commands(router: Router, t: Translator) -> list[BotCommand]:
    """The command menu: commands everyone (guests, students) may use, described from /help."""
    commands = []
    for name, command in router.commands.items():
        if not command.menu or not command.help_key:
            continue
        if command.roles is not None and not command.roles & {"guest", "student"}:
            continue
        text = re.sub(r"^/\S+\s*[—–:-]*\s*", "", t(command.help_key)).strip() or name
        commands.append(BotCommand(name, text[:256]))
    return commands[:100]


class TelegramAdapter:
    """One PTB Application serving the router: a :class:`bot.channels.base.Channel`.
    ``docsach run`` mounts and starts it; :func:`running` does the same for tests."""

    name = CHANNEL
    messaging = True
    finished = None

    def __init__(self, app: App, *, webhook: Webhook | None = None, poll_timeout: int = 30,
                 token: str | None = None, base_url: str | None = None,
                 backoff: tuple[float, ...] = (0.5, 2.0, 5.0), max_retries: int = 3,
                 read_timeout: float | None = None, concurrency: int = 16, network_backend: Any = None) -> None:
        self.app = app
        self.router = app.router
        self.webhook = webhook
        self.poll_timeout = poll_timeout
        self.refusals = RefusalLog()     # wrong-secret webhook requests, counted, logged sparingly
        base_url = base_url or app.settings.telegram_api_base_url
        builder = (
            ApplicationBuilder()
            .token(token or app.settings.telegram_token or "")
            .base_url(base_url)
            .base_file_url(file_base_url(base_url))
            .rate_limiter(ResilientRateLimiter(max_retries=max_retries, backoff=backoff,
                                               gate=RateLimiter(per_second=28)))
            .concurrent_updates(PerChatUpdateProcessor(concurrency))
            .arbitrary_callback_data(False)
            .get_updates_request(PollingRequest(connection_pool_size=1))
        )
        timeouts = {"read_timeout": read_timeout, "write_timeout": read_timeout} if read_timeout is not None else {}
        builder = builder.request(TracedRequest(connection_pool_size=256, network_backend=network_backend, **timeouts))
        self.application: Application = builder.build()
        self.bot: Bot = self.application.bot
        self.channel = TelegramChannel(self.bot, app.db, clock=app.deps.clock, photos=app.deps.photos)
        self.username: str | None = None
        self._poll_lock = None    # bot.workers.LeaderLock while polling is wanted
        self._poll_watch: asyncio.Task | None = None
        self.application.add_handler(MessageHandler(
            filters.UpdateType.MESSAGE & (filters.TEXT | filters.PHOTO), self.on_message))
        self.application.add_handler(CallbackQueryHandler(self.on_callback))
        self.application.add_handler(InlineQueryHandler(self.on_inline_query))
        self.application.add_error_handler(self.on_error)

    # -- lifecycle --------------------------------------------------------------------------
    def mount(self, web_app: web.Application) -> None:
        """Webhook mode: Telegram's POSTs arrive on the shared server at the webhook URL's path."""
        if self.webhook is not None:
            web_app.router.add_post(self.webhook.path, self.receive)

    async def start(self) -> None:
        try:
            await self.application.initialize()          # getMe: fails fast on a wrong token
        except InvalidToken as exc:
            raise ChannelError("Telegram refused TELEGRAM_BOT_TOKEN; check it with @BotFather") from exc
        except NetworkError as exc:
            raise ChannelError(f"cannot reach the Bot API at {self.bot.base_url.rsplit('/bot', 1)[0]}: {exc}",
                               exit_code=1) from exc
        self.username = self.bot.username
        self.app.deps.channels[CHANNEL] = profile(self.username)
        self.app.deps.outbound[CHANNEL] = self.channel
        await self.set_commands()
        await self.application.start()
        if self.webhook is not None:
            await self.bot.set_webhook(self.webhook.url, secret_token=self.webhook.secret,
                                       allowed_updates=ALLOWED_UPDATES)
        else:
            # Telegram allows one long poller per bot: with several workers, the holder of the
            # poll lock polls and the others only send; the lock passes on when its holder dies.
            from bot.workers import LeaderLock

            self._poll_lock = LeaderLock(self.app.db, "poll:telegram")
            if await self._poll_lock.try_acquire():
                await self._start_polling()
            else:
                log.info("another worker polls Telegram; this one sends and waits to take over")
            self._poll_watch = asyncio.create_task(self._watch_poll_lock(), name="telegram-poll-lock")
        log.info("Telegram bot @%s is serving (%s)", self.username,
                 f"webhook {self.webhook.url}" if self.webhook else "long polling")

    async def _start_polling(self) -> None:
        await self.application.updater.start_polling(
            poll_interval=0, timeout=self.poll_timeout, allowed_updates=ALLOWED_UPDATES)

    async def _watch_poll_lock(self, every: float = 3.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                held = await self._poll_lock.try_acquire()
            except Exception:
                log.warning("cannot check the Telegram poll lock; trying again", exc_info=True)
                continue
            polling = bool(self.application.updater and self.application.updater.running)
            if held and not polling:
                log.info("this worker takes over polling Telegram")
                await self._start_polling()
            elif polling and not held:
                log.warning("lost the Telegram poll lock; stopping polling here")
                await self.application.updater.stop()

    async def stop(self) -> None:
        if self.app.deps.outbound.get(CHANNEL) is self.channel:
            del self.app.deps.outbound[CHANNEL]
        self.app.deps.channels.pop(CHANNEL, None)
        watch = self._poll_watch
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            self._poll_watch = None
        if self.application.updater and self.application.updater.running:
            await self.application.updater.stop()
        if self._poll_lock is not None:
            await self._poll_lock.release()
        # In webhook mode the webhook stays set while we are down: updates wait at Telegram.
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()

    async def set_commands(self) -> None:
        """setMyCommands in each language (by language_code) and a default in the school's."""
        catalogs, zone = self.app.deps.catalogs, self.app.deps.timezone
        default = catalogs.translator(self.app.deps.default_language, zone)
        await self.bot.set_my_commands(menu_commands(self.router, default), scope=BotCommandScopeDefault())
        for lang in LANGUAGES:
            await self.bot.set_my_commands(menu_commands(self.router, catalogs.translator(lang, zone)),
                                           scope=BotCommandScopeDefault(), language_code=lang)

    # -- updates → router -------------------------------------------------------------------
    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, user, chat = update.effective_message, update.effective_user, update.effective_chat
        if message is None or user is None or chat is None or user.is_bot:
            return
        text = self.addressed_text(message, chat.type)
        if text is None:
            return
        photo_ref = await self.store_photo(message) if message.photo and chat.type == "private" else None
        event = Incoming(
            channel=CHANNEL, chat_id=str(chat.id), user_id=str(user.id), text=text,
            language_hint=user.language_code, display_name=user.full_name, chat_type=chat.type,
            photo_ref=photo_ref, mentioned=chat.type != "private" and not text.startswith("/"),
        )
        await self.deliver(event, await self.router.dispatch(event))

    async def store_photo(self, message: Message) -> str | None:
        """Download the largest size of a photo and keep it in docsach's photo store."""
        if self.app.deps.photos is None:
            return None
        file = await message.photo[-1].get_file()
        data = bytes(await file.download_as_bytearray())
        try:
            return await self.app.deps.photos.store(data)
        except DomainError as refusal:
            log.info("photo from chat %s not stored: %s", message.chat.id, refusal.key)
            return None

    def addressed_text(self, message: Message, chat_type: str) -> str | None:
        """The text meant for us, or None. Groups: only commands and @mentions (privacy)."""
        text = message.text or message.caption or ""
        me = (self.username or "").lower()
        command = re.match(r"^/[A-Za-z0-9_]+(?:@([A-Za-z0-9_]+))?", text)
        if command:
            target = command.group(1)
            return text if target is None or target.lower() == me else None
        if chat_type == "private":
            return text
        # Entities or not (clients differ), "@ourbot" as a word counts as a mention.
        mention = re.compile(rf"(?<![\w@])@{re.escape(me)}(?!\w)", re.IGNORECASE) if me else None
        if mention is not None and mention.search(text):
            return mention.sub(" ", text).strip()
        return None

    async def on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        message = query.message
        if not isinstance(message, Message):
            # A button on an inline-mode message or one too old to read: there is no chat to
            # bind it to, and our inline results only carry URL buttons.
            t = self.translator(query.from_user.language_code)
            await _quietly(query.answer(t("error.button_expired")))
            return
        event = Incoming(
            channel=CHANNEL, chat_id=str(message.chat.id), user_id=str(query.from_user.id),
            button=query.data or "", message_ref=str(message.message_id),
            language_hint=query.from_user.language_code, display_name=query.from_user.full_name,
            chat_type=message.chat.type,
        )
        await self.deliver(event, await self.router.dispatch(event), query=query, message=message)

    async def deliver(self, event: Incoming, replies: list[Reply], *, query=None,
                      message: Message | None = None) -> None:
        """Answer the button press (with a toast if any), then edit in place or send."""
        chat_id = _chat(event.chat_id)
        if query is not None:
            toast = next((r.toast for r in replies if r.toast), None)
            await _quietly(query.answer(toast[:MAX_TOAST] if toast else None))
        try:
            for reply in replies:
                if query is not None and reply.toast and reply.text == reply.toast \
                        and not reply.buttons and reply.attachment is None:
                    continue   # the toast already said it ("this button has expired")
                if reply.edit and message is not None and reply.attachment is None and not reply.photo \
                        and await self.edit(message, reply):
                    message = None   # one edit per press; further replies are new messages
                    continue
                await send_reply(self.bot, chat_id, reply, photos=self.app.deps.photos)
        except Forbidden as exc:
            log.info("telegram chat %s blocked the bot (%s)", event.chat_id, exc)
            await patrons.mark_unreachable(self.app.db, CHANNEL, event.chat_id, self.app.deps.clock)

    async def edit(self, message: Message, reply: Reply) -> bool:
        """Replace the pressed message's text and buttons; False when it cannot be edited."""
        if len(reply.text) > MAX_MESSAGE or not reply.text:
            return False
        try:
            await self.bot.edit_message_text(
                reply.text, chat_id=message.chat.id, message_id=message.message_id,
                reply_markup=keyboard(reply.buttons), link_preview_options=NO_PREVIEW)
        except BadRequest as exc:
            if "not modified" in str(exc).lower():
                return True
            log.info("could not edit message %s in %s (%s); sending instead",
                     message.message_id, message.chat.id, exc)
            return False
        return True

    async def on_inline_query(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``@bot QUERY``: results from the router's inline handler, personal (language, library)."""
        query = update.inline_query
        results: list = []   # handlers.inline.InlineResult
        next_offset = ""
        if self.router.inline_handler is not None:
            user = query.from_user
            event = Incoming(channel=CHANNEL, chat_id=str(user.id), user_id=str(user.id),
                             text=query.query, language_hint=user.language_code,
                             display_name=user.full_name, chat_type="inline")
            try:
                ctx = await self.router.context_for(event)
                results, next_offset = await self.router.inline_handler(
                    ctx, clean_text(query.query)[:256], query.offset or "")
            except Exception:
                log.exception("inline query from %s failed", user.id)   # never the query text
                results, next_offset = [], ""
        articles = [
            InlineQueryResultArticle(
                id=r.id[:64], title=r.title[:256] or "…",
                input_message_content=InputTextMessageContent(
                    split_text(r.text)[0], link_preview_options=NO_PREVIEW),
                description=r.description[:512] or None, reply_markup=keyboard(r.buttons),
            )
            for r in results[:INLINE_MAX_RESULTS]
        ]
        # Personal: results are in the asker's language and show their library's availability.
        await query.answer(articles, cache_time=INLINE_CACHE_SECONDS, is_personal=True,
                           next_offset=next_offset or None)

    # -- errors -----------------------------------------------------------------------------
    def translator(self, language_code: str | None) -> Translator:
        lang = patrons.pick_language(language_code, default=self.app.deps.default_language)
        return self.app.deps.catalogs.translator(lang, self.app.deps.timezone)

    async def receive(self, request: web.Request) -> web.Response:
        """One webhook POST: refused without the secret header, else handled, then answered 200."""
        assert self.webhook is not None
        supplied = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(supplied.encode(), self.webhook.secret.encode()):
            self.refusals.note(request.remote)
            return web.Response(status=403, text="forbidden")
        try:
            update = Update.de_json(await request.json(), self.bot)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            # RecursionError: a body nested thousands of levels deep ("[[[[…"), which json gives up on
            return web.Response(status=400, text="not an update")
        if update is None:
            return web.Response(status=400, text="not an update")
        # Handled before the 200: a worker that dies mid-update leaves it unanswered, so Telegram
        # delivers it again (to a living worker) instead of it being lost in a queue. Updates of
        # one chat still run one at a time (PerChatUpdateProcessor).
        await self.application.update_processor.process_update(update, self.application.process_update(update))
        return web.Response(text="ok")

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log with context; tell the person something went wrong, in their language."""
        error = context.error
        chat = update.effective_chat if isinstance(update, Update) else None
        user = update.effective_user if isinstance(update, Update) else None
        where = (f"update {update.update_id} chat {chat.id if chat else '-'} user {user.id if user else '-'}"
                 if isinstance(update, Update) else "no update")
        if isinstance(error, Forbidden) and chat is not None:
            log.info("telegram: %s: %s", where, error)
            await patrons.mark_unreachable(self.app.db, CHANNEL, str(chat.id), self.app.deps.clock)
            return
        log.error("telegram: handling %s failed: %r", where, error, exc_info=error)
        if chat is None or (isinstance(error, NetworkError) and not isinstance(error, BadRequest)):
            return   # the network is what failed: an apology would not get through either
        t = self.translator(user.language_code if user else None)
        if isinstance(update, Update) and update.callback_query is not None:
            await _quietly(update.callback_query.answer(t("telegram.error_short")))
        await _quietly(self.bot.send_message(chat.id, t("telegram.error")))


async def _quietly(call: Awaitable[Any]) -> None:
    """For answers that may legitimately fail (a callback query answered too late)."""
    try:
        await call
    except TelegramError as exc:
        log.info("telegram call ignored: %s", exc)


class RefusalLog:
    """Requests refused for a wrong secret, logged at most once per ``interval`` seconds with a
    count, so whoever finds the webhook URL cannot flood the log (one line per request would)."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self.total = 0
        self._unlogged = 0
        self._last: float | None = None

    def note(self, remote: str | None) -> None:
        self.total += 1
        self._unlogged += 1
        now = asyncio.get_running_loop().time()
        if self._last is not None and now - self._last < self.interval:
            return
        log.warning("webhook: refused %d request(s) without the right secret since the last report "
                    "(latest from %s; %d in all)", self._unlogged, remote, self.total)
        self._unlogged, self._last = 0, now


@contextlib.asynccontextmanager
async def running(app: App, *, webhook: Webhook | None = None, poll_timeout: int = 30,
                  **options: Any) -> AsyncIterator[TelegramAdapter]:
    """The bot, serving until the block ends: for tests and tools. In webhook mode it listens on
    ``webhook.host:port`` with a server of its own; ``docsach run`` uses the shared one instead."""
    from bot.server import Server

    adapter = TelegramAdapter(app, webhook=webhook, poll_timeout=poll_timeout, **options)
    server = None
    try:
        if webhook is not None:
            server = Server(app, webhook.host, webhook.port)
            server.mount([adapter])
            await server.start()
        await adapter.start()
        yield adapter
    finally:
        await adapter.stop()
        if server is not None:
            await server.stop()


def configure(app: App, options: RunOptions) -> TelegramAdapter | None:
    """``docsach run``: the Telegram channel when TELEGRAM_BOT_TOKEN is set (webhook mode when a
    webhook URL was given), else None. Raises :class:`ChannelError` on settings that cannot work."""
    settings = app.settings
    if not settings.telegram_token:
        return None
    if settings.secret_key_is_ephemeral:
        log.warning("DOCSACH_SECRET_KEY is not set: buttons already in Telegram chats will stop "
                    "working after a restart. Set it in .env (see .env.example).")
    webhook = None
    if options.telegram_webhook_url:
        url = options.telegram_webhook_url
        if not url.startswith("https://"):
            log.warning("Telegram only calls https:// webhooks; %s is not one", url)
        secret = settings.telegram_webhook_secret or secrets.token_urlsafe(32)
        if not SECRET_PATTERN.match(secret):
            raise ChannelError("TELEGRAM_WEBHOOK_SECRET may only hold A-Z a-z 0-9 _ - (1–256 characters)")
        webhook = Webhook(url=url, host=options.host, port=options.port, secret=secret)
    return TelegramAdapter(app, webhook=webhook)


async def bot_username(token: str, base_url: str) -> str:
    """The bot's @username from getMe (for QR labels when none is configured)."""
    async with Bot(token, base_url=base_url, base_file_url=file_base_url(base_url)) as bot:
        return bot.username
