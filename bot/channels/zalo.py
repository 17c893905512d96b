"""Zalo: the Zalo Bot API wired to the platform-neutral router.

Zalo has no buttons, edits, toasts or documents, so a reply becomes plain text: its buttons
turn into numbered choices ("1. Gia hạn") that the person answers with the number or the label
(remembered per chat in the database, see ``services/choices.py``), long texts are cut into
parts of at most 2,000 characters on paragraph, line or sentence boundaries, and documents
become links to short-lived signed downloads on docsach's own web server.

Updates arrive by long polling (default: one poller per bot across all processes, agreed by a
lease in the database; one poll at a time; bounded backoff) or by the platform's webhook on the
shared server (when ``ZALO_WEBHOOK_SECRET`` is set), whose secret header is checked in constant
time before the body is read. Deliveries may repeat, so every message id is recorded in the
database first and a repeat is dropped.

Delivery outcomes, in one place (:meth:`ZaloSender.send_part`): quota (429) and server errors
(500/502/503) and requests that never left are retried with backoff; a request that went out
without a usable answer (timeout, dropped connection, 504) is never repeated — it may have
arrived — and reports "uncertain"; 403 marks the chat unreachable. A pushed notice is thus
sent / retried later / uncertain / unreachable exactly as on Telegram, and never twice.

The token (it is in every request URL), the webhook secret and message texts are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import socket
import time
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from aiohttp import web

from bot.app import App
from bot.channels.base import ChannelError, ChannelProfile, RunOptions
from bot.channels.zalo_api import (
    MAX_TEXT,
    ZaloApi,
    ZaloApiError,
    ZaloError,
    ZaloNotSent,
    ZaloUncertain,
    ZaloUpdate,
    parse_updates,
)
from bot.scheduler import RateLimiter
from handlers.i18n import Translator
from handlers.messages import (
    ChatUnreachable,
    Delivery,
    DeliveryFailed,
    DeliveryUncertain,
    Incoming,
    Reply,
)
from services import choices, conversations, downloads, inbound, leases, patrons
from services.common import DomainError
from services.photos import is_ref

log = logging.getLogger(__name__)

CHANNEL = "zalo"
SECRET_HEADER = "X-Bot-Api-Secret-Token"
WEBHOOK_PATH = "/zalo/webhook"
FILES_PATH = "/files"
MAX_WEBHOOK_BODY = 64 * 1024          # one update is a few hundred bytes
MAX_PHOTO_BYTES = 10 * 1024 * 1024
PER_CHAT_INTERVAL = 0.5               # seconds between two messages to one chat
HOUSEKEEPING_SECONDS = 3600
RETRYABLE = frozenset({429, 500, 502, 503})   # the request was refused: repeating it is safe
UNCERTAIN = frozenset({408, 504})             # the platform timed out: it may have gone through


# -- texts --------------------------------------------------------------------------------------

def _units(ch: str) -> int:
    """Length in UTF-16 code units (how most platforms count): emoji count two."""
    return 2 if ord(ch) > 0xFFFF else 1


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


def _fit(text: str, limit: int) -> int:
    """The longest prefix of ``text`` that stays within ``limit`` units, not cutting a letter
    from its combining accent."""
    if not _ASTRAL.search(text, 0, limit + 1):
        end = min(len(text), limit)              # one unit per character: no counting needed
    else:
        used, end = 0, len(text)
        for i, ch in enumerate(text):
            used += _units(ch)
            if used > limit:
                end = i
                break
    if end >= len(text):
        return len(text)
    while end > 0 and unicodedata.combining(text[end]):
        end -= 1
    return max(end, 1)


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` characters: at a blank line if there is one
    in the second half of the part, else a line break, a sentence end, a space, and only as a
    last resort inside a word."""
    text = unicodedata.normalize("NFC", text or "").strip() or "…"
    parts: list[str] = []
    while True:
        fit = _fit(text, limit)
        if fit >= len(text):
            parts.append(text)
            break
        window = text[:fit + 1]          # a boundary right after the last character still counts
        cut = -1
        for boundary in ("\n\n", "\n", ". ", "! ", "? ", "… ", "; ", ", ", " "):
            at = window.rfind(boundary, 0, fit + 1)
            if at >= limit // 2:
                cut = at + (1 if boundary[0] in ".!?…;," else 0)
                break
        if cut <= 0:
            cut = fit
        head, text = text[:cut].rstrip(), text[cut:].strip()
        if head:
            parts.append(head)
        if not text:
            break
    return parts


@dataclass
class Rendered:
    parts: list[str]
    photo: str | None = None


# -- sending ------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """How one failed call ended: "retry" (not delivered, try later), "uncertain" (may have
    arrived), "unreachable" (the chat refuses us) or "failed" (refused for good; e.g. a bad
    request — retried later all the same, up to the outbox's attempt limit)."""

    state: str
    retry_after: float | None = None


def classify(error: BaseException) -> Outcome:
    if isinstance(error, ZaloNotSent):
        return Outcome("retry")
    if isinstance(error, ZaloUncertain):
        return Outcome("uncertain")
    if isinstance(error, ZaloApiError):
        code = error.error_code
        if code == 429 or error.http_status == 429:
            return Outcome("retry", error.retry_after)
        if code in UNCERTAIN or error.http_status in UNCERTAIN:
            return Outcome("uncertain")
        if code == 403 or error.http_status == 403:
            return Outcome("unreachable")
        if code in RETRYABLE or error.http_status in RETRYABLE:
            return Outcome("retry", error.retry_after)
        return Outcome("failed")
    return Outcome("uncertain")


class ZaloSender:
    """Turns replies into Zalo messages: numbered choices, parts, document links, pacing and
    the retry rules. Shared by answers to users and pushed notices."""

    def __init__(self, adapter: ZaloAdapter) -> None:
        self.adapter = adapter
        self.api = adapter.api
        self.app = adapter.app
        per_second = max(0.1, float(adapter.app.settings.zalo_messages_per_second))
        self.limiter = RateLimiter(per_second=per_second, per_chat_interval=max(adapter.per_chat_interval, 1 / per_second),
                                   window=max(1, int(per_second)))
        self.backoff = adapter.backoff
        self._warned_public_url = False

    def translator(self, language: str) -> Translator:
        return self.app.deps.catalogs.translator(language, self.app.deps.timezone)

    async def render(self, chat_id: str, reply: Reply, t: Translator, *, fresh: bool) -> Rendered:
        """The reply as Zalo text: body, links, numbered choices (stored for this chat), hint."""
        lines = [reply.text or reply.toast or ""]
        items: list[tuple[str, str]] = []
        for row in reply.buttons:
            for button in row:
                if button.payload:
                    items.append((button.label, button.payload))
                elif button.url:
                    lines.append(f"🔗 {button.label}: {button.url}")
                # switch_inline (Telegram's inline mode) has no Zalo equivalent: left out.
        photo = self.photo_url(reply.photo) if reply.photo else None
        if reply.photo and photo is None:
            lines.append(t("zalo.photo_not_shown"))
        if reply.attachment is not None:
            lines.append(await self.document_line(reply, t))
        text = "\n".join(line for line in lines if line)
        if items:
            numbered = await choices.remember(self.app.db, CHANNEL, chat_id, items,
                                              now=self.app.deps.clock.now(), fresh=fresh,
                                              context=await self.adapter.open_question(chat_id))
            menu = "\n".join(f"{c.n}. {c.label}" for c in numbered)
            text = f"{text}\n\n{menu}\n{t('zalo.choose_hint', example=numbered[0].n)}"
        return Rendered(split_text(text), photo)

    def photo_url(self, ref: str) -> str | None:
        """Zalo's sendPhoto takes a URL: a signed link to the stored photo on our server."""
        base = self.app.settings.public_url
        if not base or not is_ref(ref):
            return None
        return base.rstrip("/") + downloads.photo_path(ref, key=self.app.settings.secret_key,
                                                       now=self.app.deps.clock.now())

    async def document_line(self, reply: Reply, t: Translator) -> str:
        attachment = reply.attachment
        assert attachment is not None
        base = self.app.settings.public_url
        if not base:
            if not self._warned_public_url:
                log.warning("zalo: a document could not be offered because DOCSACH_PUBLIC_URL is not set "
                            "(Zalo cannot carry files; docsach sends download links instead)")
                self._warned_public_url = True
            return t("zalo.document_unavailable", filename=attachment.filename)
        path, expires = await downloads.store(self.app.db, attachment.filename, attachment.mime_type,
                                              attachment.data, key=self.app.settings.secret_key,
                                              now=self.app.deps.clock.now())
        return t("zalo.document_link", filename=attachment.filename, url=base.rstrip("/") + path,
                 until=t.datetime(expires))

    async def send_part(self, method: str, chat_id: str, **params: Any) -> dict[str, Any]:
        """One sendMessage/sendPhoto, paced, with the retries that cannot duplicate a message."""
        attempts = len(self.backoff) + 1
        for attempt in range(attempts):
            await self.limiter.acquire(chat_id)
            await self.limiter.gate()
            try:
                result = await self.api.call(method, chat_id=chat_id, **params)
                return result if isinstance(result, dict) else {}
            except ZaloError as exc:
                outcome = classify(exc)
                if outcome.state != "retry" or attempt == attempts - 1:
                    raise
                wait = outcome.retry_after or self.backoff[attempt]
                if outcome.retry_after:
                    self.limiter.pause(outcome.retry_after)
                log.warning("zalo %s to a chat failed (%s); retry %d in %.1fs", method, exc, attempt + 1, wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def deliver(self, chat_id: str, rendered: Rendered) -> str | None:
        """Send every part; the last message id. Raises :class:`DeliveryUncertain` when a part
        after the first fails (the person has part of it: nobody should resend it whole)."""
        sent = 0
        message_id: str | None = None
        try:
            if rendered.photo:
                try:
                    result = await self.send_part("sendPhoto", chat_id, photo=rendered.photo)
                    sent, message_id = sent + 1, _str(result.get("message_id")) or message_id
                except ZaloApiError as exc:
                    if classify(exc).state != "failed":
                        raise
                    # Zalo would not take the photo (e.g. could not fetch it): the text still goes.
                    log.warning("zalo refused a photo for a chat (%s); sending the text alone", exc)
            for part in rendered.parts:
                result = await self.send_part("sendMessage", chat_id, text=part)
                sent, message_id = sent + 1, _str(result.get("message_id")) or message_id
        except ZaloError as exc:
            if sent and classify(exc).state != "unreachable":
                raise DeliveryUncertain(f"{sent} part(s) delivered, then: {exc}") from exc
            raise
        return message_id

    async def send_replies(self, chat_id: str, replies: list[Reply], language: str, *, fresh: bool) -> None:
        """Answers to something the person did: the first list of choices starts afresh."""
        t = self.translator(language)
        for reply in replies:
            has_choices = any(b.payload for row in reply.buttons for b in row)
            rendered = await self.render(chat_id, reply, t, fresh=fresh and has_choices)
            fresh = fresh and not has_choices
            await self.deliver(chat_id, rendered)


def _str(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


class ZaloChannel:
    """Pushed messages (reminders, notices) to a Zalo chat: the :class:`OutputChannel`.

    Returns a :class:`Delivery`, or raises :class:`ChatUnreachable` (403: marked in the
    database, later sends refused at once), :class:`DeliveryFailed` (not delivered; try again
    later — ``retry_after`` set for a quota refusal) or :class:`DeliveryUncertain` (it may have
    arrived: never resent blindly). Choices on a notice continue the chat's numbering.
    """

    name = CHANNEL

    def __init__(self, adapter: ZaloAdapter) -> None:
        self.adapter = adapter

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        app = self.adapter.app
        if await patrons.is_unreachable(app.db, CHANNEL, str(chat_id)):
            raise ChatUnreachable(chat_id)
        sender = self.adapter.sender
        language = await patrons.chat_language(app.db, CHANNEL, str(chat_id), app.deps.default_language)
        rendered = await sender.render(str(chat_id), reply, sender.translator(language), fresh=False)
        try:
            message_id = await sender.deliver(str(chat_id), rendered)
        except DeliveryUncertain:
            raise
        except ZaloError as exc:
            outcome = classify(exc)
            if outcome.state == "unreachable":
                log.info("zalo chat %s is unreachable (%s); not messaging it any more", chat_id, exc)
                await patrons.mark_unreachable(app.db, CHANNEL, str(chat_id), app.deps.clock)
                raise ChatUnreachable(chat_id) from exc
            if outcome.state == "uncertain":
                raise DeliveryUncertain(str(exc)) from exc
            if isinstance(exc, ZaloApiError) and exc.error_code == 401:
                log.error("zalo refused ZALO_BOT_TOKEN while sending a notice")
            failed = DeliveryFailed(str(exc))
            failed.retry_after = outcome.retry_after   # the sweeper honours it for everyone
            raise failed from exc
        return Delivery(message_ref=message_id)


# -- the adapter --------------------------------------------------------------------------------

@dataclass
class ZaloWebhook:
    """Webhook mode: Zalo POSTs updates to ``url`` with ``secret`` in the header."""

    url: str
    secret: str


@dataclass
class _ChatQueue:
    """Each chat's updates in order; many chats at once."""

    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    holders: Counter = field(default_factory=Counter)


class ZaloAdapter:
    """Serves the router on Zalo. Start with :func:`running` (or ``start``/``stop``)."""

    name = CHANNEL
    messaging = True
    finished = None

    def __init__(self, app: App, *, webhook: ZaloWebhook | None = None, token: str | None = None,
                 base_url: str | None = None, poll_timeout: int = 30,
                 backoff: tuple[float, ...] = (0.5, 2.0, 5.0), poll_backoff: float = 0.5,
                 max_poll_backoff: float = 30.0, lease_wait: float = 5.0, concurrency: int = 16,
                 request_timeout: float = 15.0, per_chat_interval: float = PER_CHAT_INTERVAL) -> None:
        self.app = app
        self.router = app.router
        settings = app.settings
        self.api = ZaloApi(token or settings.zalo_token or "", base_url or settings.zalo_api_base_url,
                           timeout=request_timeout)
        self.poll_timeout = poll_timeout
        self.backoff = tuple(backoff)
        self.poll_backoff = poll_backoff
        self.lease_wait = lease_wait
        # One poller per bot across every process (see services/leases.py).
        self.lease = f"zalo-poll:{self.api.bot_id}"[:80]
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:120]
        self.max_poll_backoff = max_poll_backoff
        self.per_chat_interval = per_chat_interval
        self.sender = ZaloSender(self)
        self.channel = ZaloChannel(self)
        self.bot: dict[str, Any] = {}
        self.webhook = webhook
        self._stopping = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._housekeeping: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._queue = _ChatQueue()
        self._running = asyncio.Semaphore(concurrency)
        self.polls = 0                   # long polls answered
        self.handled = 0                 # updates handled (answered, dropped as repeats, or ignored)

    # -- lifecycle ----------------------------------------------------------------------------
    def mount(self, web_app: web.Application) -> None:
        """On the shared server: document and photo links, and the webhook in webhook mode."""
        web_app.router.add_get(FILES_PATH + "/{id:\\d+}/{expires:\\d+}/{sig}/{name}", self.serve_file)
        web_app.router.add_get(FILES_PATH + "/photo/{ref:[0-9a-f]{64}}/{expires:\\d+}/{sig}", self.serve_photo)
        if self.webhook is not None:
            web_app.router.add_post(WEBHOOK_PATH, self.receive)

    async def start(self) -> None:
        try:
            self.bot = await self.api.get_me()       # fails fast on a wrong token
        except ZaloError as exc:
            await self.api.close()                   # docsach run stops only channels that started
            if isinstance(exc, ZaloApiError) and exc.error_code in (401, 403, 404):
                raise ChannelError("Zalo refused ZALO_BOT_TOKEN; copy it again from Zalo Bot Manager.") from None
            if isinstance(exc, ZaloApiError):
                raise ChannelError(f"The Zalo Bot API refused to start the bot: {exc}", exit_code=1) from None
            raise ChannelError(f"Cannot reach the Zalo Bot API (ZALO_API_BASE_URL): {exc}", exit_code=1) from None
        self.app.deps.channels[CHANNEL] = profile(self.app)
        self.app.deps.outbound[CHANNEL] = self.channel
        self._stopping.clear()
        if self.webhook is not None:
            try:
                await self.api.set_webhook(self.webhook.url, self.webhook.secret)
            except ZaloError as exc:
                await self.stop()
                raise ChannelError(f"Zalo refused the webhook {self.webhook.url}: {exc}", exit_code=1) from None
        else:
            # Polling and the webhook exclude each other: a webhook left from an earlier
            # deployment would make every poll fail.
            with contextlib.suppress(ZaloError):
                await self.api.delete_webhook()
            self._poller = asyncio.create_task(self._poll(), name="zalo-poller")
        self._housekeeping = asyncio.create_task(self._tidy(), name="zalo-housekeeping")
        log.info("Zalo bot %s is serving (%s)", self.display_name,
                 f"webhook {self.webhook.url}" if self.webhook else "long polling")

    async def stop(self, *, grace: float = 15.0) -> None:
        """Stop polling at once, let answers being written finish (up to ``grace`` seconds)."""
        self._stopping.set()
        if self.app.deps.outbound.get(CHANNEL) is self.channel:
            del self.app.deps.outbound[CHANNEL]
            self.app.deps.channels.pop(CHANNEL, None)
        for task in (self._poller, self._housekeeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._poller = self._housekeeping = None
        with contextlib.suppress(Exception):
            await leases.release(self.app.db, self.lease, self.worker)   # another process may poll now
        if self._tasks:
            done, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
        # The webhook stays set: updates wait at Zalo until the next start.
        await self.api.close()

    @property
    def display_name(self) -> str:
        return str(self.bot.get("account_name") or self.bot.get("id") or "?")

    # -- polling ------------------------------------------------------------------------------
    async def _poll(self) -> None:
        """One long poll at a time; every update handed to its chat's queue."""
        failures = 0
        waiting = False
        while not self._stopping.is_set():
            try:
                holding = await leases.acquire(self.app.db, self.lease, self.worker, now=self.app.deps.clock.now(),
                                               ttl=timedelta(seconds=self.poll_timeout + 30))
            except Exception as exc:
                log.warning("zalo: cannot reach the database to take the polling lease (%s)", exc)
                await self._sleep(self.lease_wait)
                continue
            if not holding:
                if not waiting:
                    log.info("zalo: another process is polling this bot; this one sends and takes over "
                             "if that one stops")
                    waiting = True
                await self._sleep(self.lease_wait)
                continue
            waiting = False
            started = time.monotonic()
            try:
                updates = await self.api.get_updates(timeout=self.poll_timeout)
            except asyncio.CancelledError:
                raise
            except ZaloError as exc:
                failures += 1
                wait = min(self.max_poll_backoff, self.poll_backoff * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
                if isinstance(exc, ZaloApiError) and exc.error_code == 401:
                    log.error("zalo refused ZALO_BOT_TOKEN while polling; retrying in %.0fs", wait)
                elif isinstance(exc, ZaloApiError) and exc.error_code == 409:
                    log.error("zalo: a webhook is set for this bot, so polling fails; unset "
                              "ZALO_WEBHOOK_SECRET everywhere or use the webhook (retrying in %.0fs)", wait)
                else:
                    log.warning("zalo getUpdates failed (%s); retrying in %.1fs", exc, wait)
                await self._sleep(wait)
                continue
            except Exception:
                failures += 1
                log.exception("zalo: reading an update failed")
                await self._sleep(min(self.max_poll_backoff, 2.0 * failures))
                continue
            failures = 0
            self.polls += 1
            for update in updates:
                await self.submit(update)
            if not updates and time.monotonic() - started < 0.5:
                await self._sleep(1.0)   # a server answering idle polls at once: do not spin

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def submit(self, update: ZaloUpdate) -> None:
        """Handle ``update`` in the background, after earlier updates of the same chat."""
        while len(self._tasks) >= 512:           # backpressure: do not read faster than we answer
            await asyncio.wait(list(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._ordered(update))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ordered(self, update: ZaloUpdate) -> None:
        key = update.chat_id or update.user_id or ""
        queue = self._queue
        queue.holders[key] += 1
        lock = queue.locks.setdefault(key, asyncio.Lock())
        try:
            async with lock, self._running:
                await self.handle(update)
        except Exception:
            log.exception("zalo: handling a %s update in chat %s failed", update.kind, update.chat_id)
            await self._apologise(update)
        finally:
            self.handled += 1
            queue.holders[key] -= 1
            if not queue.holders[key]:
                del queue.holders[key]
                queue.locks.pop(key, None)

    async def _apologise(self, update: ZaloUpdate) -> None:
        """Something broke below the router (the database, most likely): say so in the school's
        language rather than stay silent; no database is needed for that."""
        if update.chat_type != "private" or not update.chat_id or update.kind == "unknown":
            return
        t = self.sender.translator(self.app.deps.default_language)
        with contextlib.suppress(ZaloError):
            await self.api.send_message(update.chat_id, t("zalo.error"))

    async def _tidy(self) -> None:
        """Forget old message ids, expired downloads and choice lists nobody can answer."""
        while not self._stopping.is_set():
            now = self.app.deps.clock.now()
            try:
                await inbound.prune(self.app.db, now=now)
                await downloads.prune(self.app.db, now=now)
                await choices.prune(self.app.db, now=now)
            except Exception:
                log.exception("zalo housekeeping failed")
            await self._sleep(HOUSEKEEPING_SECONDS)

    # -- one update ---------------------------------------------------------------------------
    async def handle(self, update: ZaloUpdate) -> None:
        if update.kind == "unknown":
            log.info("zalo: ignoring an event we do not know: %s", update.event)
            return
        if update.is_bot or not update.chat_id or not update.user_id:
            return
        if update.date_ms and time.time() * 1000 - update.date_ms > inbound.KEEP.total_seconds() * 1000:
            # Older than the ids we keep: a repeat of it could no longer be recognised, so no
            # message that old is answered at all (Zalo's own clock: real time, not ours).
            log.info("zalo: message %s is more than %s old; not answered", update.message_id, inbound.KEEP)
            return
        if update.message_id and not await inbound.first_delivery(
                self.app.db, CHANNEL, update.message_id, now=self.app.deps.clock.now()):
            log.info("zalo: message %s delivered again; answered already", update.message_id)
            return
        event = Incoming(channel=CHANNEL, chat_id=update.chat_id, user_id=update.user_id,
                         text=update.text, display_name=update.display_name, chat_type=update.chat_type)
        if update.chat_type != "private" and not update.text.lstrip().startswith("/"):
            return   # groups: only commands (privacy; Zalo groups are beta)
        if update.kind in ("sticker", "voice", "unsupported"):
            if update.chat_type == "private":
                await self._friendly(event, update.kind)
            return
        if update.kind == "image":
            event = await self._with_photo(event, update)
            if event is None:
                return
        if event.text and event.photo_ref is None and update.chat_type == "private":
            answer = await self._choice(event)
            if isinstance(answer, Reply):
                await self._answer(event, [answer], fresh=False)
                return
            if answer is not None:
                event = answer
        # An answer to something the person did: its choices replace the chat's list.
        await self._answer(event, await self.router.dispatch(event), fresh=True)

    async def _choice(self, event: Incoming) -> Incoming | Reply | None:
        """A typed number or label that picks one of the chat's numbered choices → the button
        press; a number that picks nothing → a polite answer; anything else → None (text)."""
        picked = await choices.pick(self.app.db, CHANNEL, event.chat_id, event.text, now=self.app.deps.clock.now())
        if picked.kind == "text":
            return None
        question = await self.open_question(event.chat_id)
        if picked.kind == "choice":
            assert picked.choice is not None
            if question is not None and picked.context != question:
                return None      # the list is older than the question now open: this answers it
            return replace(event, text="", button=picked.choice.payload, message_ref=str(picked.choice.n))
        if question is not None:
            return None          # a number that is no choice: the open question may be asking for one
        t = await self._translator(event)
        key = {"unknown_number": "zalo.unknown_number", "stale": "zalo.stale_number"}.get(picked.kind, "zalo.no_list")
        return Reply(t(key, number=picked.number, highest=picked.highest))

    async def open_question(self, chat_id: str) -> str | None:
        """The step of the conversation open in this chat ("checkout:copy"), or None."""
        state = await conversations.get_state(self.app.db, CHANNEL, chat_id)
        if state is None or state.flow not in self.router.flows:
            return None
        return f"{state.flow}:{(state.data or {}).get('step', '')}"

    async def _translator(self, event: Incoming) -> Translator:
        ctx = await self.router.context_for(event)
        return ctx.t

    async def _friendly(self, event: Incoming, kind: str) -> None:
        t = await self._translator(event)
        # The web chat's address, when it runs at a public one (a phone cannot open 127.0.0.1).
        web_chat, public = self.app.deps.channels.get("web"), self.app.settings.public_url
        if web_chat and web_chat.home and public and web_chat.home.startswith(public):
            where = t("zalo.web_chat", url=web_chat.home)
        else:
            where = t("zalo.web_chat_none")
        await self._answer(event, [Reply(t(f"zalo.{kind}") + "\n\n" + where)], fresh=False)

    async def _with_photo(self, event: Incoming, update: ZaloUpdate) -> Incoming | None:
        """A photo (a reflection's handwritten page): fetched now — Zalo's links expire — and
        kept in docsach's photo store, where every channel and the web can show it."""
        t = await self._translator(event)
        try:
            data, _ = await self.api.download(update.photo_url or "", max_bytes=MAX_PHOTO_BYTES)
        except ZaloError as exc:
            log.info("zalo: fetching a photo in chat %s failed: %s", event.chat_id, exc)
            key = "zalo.photo_too_large" if "too large" in str(exc) else "zalo.photo_failed"
            await self._answer(event, [Reply(t(key, mb=MAX_PHOTO_BYTES // (1024 * 1024)))], fresh=False)
            return None
        if self.app.deps.photos is None:
            return replace(event, photo_ref=None) if event.text else None
        try:
            ref = await self.app.deps.photos.store(data)
        except DomainError as refusal:
            await self._answer(event, [Reply(t(refusal.key, **refusal.params))], fresh=False)
            return None
        return replace(event, photo_ref=ref)

    async def _answer(self, event: Incoming, replies: list[Reply], *, fresh: bool) -> None:
        if not replies:
            return
        language = await patrons.chat_language(self.app.db, CHANNEL, event.chat_id, self.app.deps.default_language)
        try:
            await self.sender.send_replies(event.chat_id, replies, language, fresh=fresh)
        except DeliveryUncertain as exc:
            log.warning("zalo: an answer in chat %s was cut short: %s", event.chat_id, exc)
        except ZaloError as exc:
            if classify(exc).state == "unreachable":
                await patrons.mark_unreachable(self.app.db, CHANNEL, event.chat_id, self.app.deps.clock)
            log.warning("zalo: answering in chat %s failed: %s", event.chat_id, exc)

    # -- HTTP: the webhook and document downloads ---------------------------------------------
    async def receive(self, request: web.Request) -> web.Response:
        """Zalo's POST: the secret first (constant time, before reading anything), then a body
        of bounded size; the update is answered in the background (Zalo expects a quick 200)."""
        webhook = self.webhook
        supplied = request.headers.get(SECRET_HEADER, "")
        if webhook is None or not hmac.compare_digest(supplied.encode(), webhook.secret.encode()):
            log.warning("zalo webhook: a request from %s without the right secret was refused", request.remote)
            return web.Response(status=403, text="forbidden")
        if (request.content_length or 0) > MAX_WEBHOOK_BODY:
            return web.Response(status=413, text="too large")
        body = bytearray()
        async for chunk in request.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > MAX_WEBHOOK_BODY:       # a chunked body that never said its length
                return web.Response(status=413, text="too large")
        try:
            updates = parse_updates(json.loads(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            return web.Response(status=400, text="not an update")
        if not updates:
            return web.Response(status=400, text="not an update")
        for update in updates:
            await self.submit(update)
        return web.json_response({"ok": True})

    async def serve_photo(self, request: web.Request) -> web.Response:
        """A stored photo behind a signed, expiring link (Zalo's sendPhoto takes only URLs)."""
        ref, sig = request.match_info["ref"], request.match_info["sig"]
        if not downloads.photo_link_valid(ref, int(request.match_info["expires"]), sig,
                                          key=self.app.settings.secret_key, now=self.app.deps.clock.now()):
            raise web.HTTPNotFound(text="This link has expired or does not exist.")
        photo = await self.app.deps.photos.load(ref) if self.app.deps.photos is not None else None
        if photo is None:
            raise web.HTTPNotFound(text="This link has expired or does not exist.")
        return web.Response(body=photo.data, content_type=photo.mime_type,
                            headers={"Cache-Control": "private, max-age=86400"})

    async def serve_file(self, request: web.Request) -> web.Response:
        try:
            download_id, expires = int(request.match_info["id"]), int(request.match_info["expires"])
        except ValueError:
            raise web.HTTPNotFound() from None
        found = await downloads.fetch(self.app.db, download_id, expires, request.match_info["sig"],
                                      key=self.app.settings.secret_key, now=self.app.deps.clock.now())
        if found is None:
            raise web.HTTPNotFound(text="This link has expired or does not exist.")
        disposition = "inline" if found.mime_type.startswith("image/") else "attachment"
        return web.Response(body=found.data, content_type=found.mime_type, headers={
            "Content-Disposition": f'{disposition}; filename="{found.filename}"',
            "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})


def profile(app: App) -> ChannelProfile:
    """What Zalo can do: text up to 2,000 characters, no buttons, edits, pop-ups or files; photos
    only as a link (so only when the server has a public address). Zalo has no deep links: "open
    in Zalo" (a landing page's button) opens the chat with the bot through its share link
    (ZALO_BOT_LINK), where a code or a title is then typed — which is why it is never printed in
    a QR code in place of the book it should open."""
    link = app.settings.zalo_bot_link or None
    return ChannelProfile(
        name=CHANNEL, max_text=MAX_TEXT, max_input=MAX_TEXT, max_payload=64, buttons=False, edits=False,
        toasts=False, photos=bool(app.settings.public_url), documents=False, link_base=link, home=link,
        printable=False,
    )


def webhook_for(app: App) -> ZaloWebhook | None:
    """Webhook mode is on when ZALO_WEBHOOK_SECRET is set; it needs DOCSACH_PUBLIC_URL."""
    settings = app.settings
    if not settings.zalo_webhook_secret:
        return None
    if not settings.public_url:
        raise ChannelError("ZALO_WEBHOOK_SECRET is set but DOCSACH_PUBLIC_URL is not: Zalo needs the public "
                           "https:// address to deliver to (or unset the secret to use long polling).")
    if not 8 <= len(settings.zalo_webhook_secret) <= 256:
        raise ChannelError("ZALO_WEBHOOK_SECRET must be 8 to 256 characters long.")
    return ZaloWebhook(url=settings.public_url.rstrip("/") + WEBHOOK_PATH, secret=settings.zalo_webhook_secret)


def configure(app: App, options: RunOptions) -> ZaloAdapter | None:
    """``docsach run``: the Zalo channel when ZALO_BOT_TOKEN is set, else None. Raises
    :class:`ChannelError` on settings that cannot work."""
    settings = app.settings
    if not settings.zalo_token:
        return None
    if ":" not in settings.zalo_token:
        raise ChannelError("ZALO_BOT_TOKEN does not look like a Zalo bot token (<bot id>:<secret>); copy it "
                           "again from Zalo Bot Manager.")
    if settings.secret_key_is_ephemeral:
        log.warning("DOCSACH_SECRET_KEY is not set: numbered choices already in Zalo chats and download "
                    "links will stop working after a restart. Set it in .env (see .env.example).")
    return ZaloAdapter(app, webhook=webhook_for(app))


@contextlib.asynccontextmanager
async def running(app: App, *, webhook: ZaloWebhook | None = None, listen: tuple[str, int] | None = None,
                  **options: Any) -> AsyncIterator[ZaloAdapter]:
    """The adapter serving until the block ends, as ``docsach run`` starts it; with ``listen``,
    on its own shared server (webhook, download links) at that address (tests)."""
    from bot.server import Server

    adapter = ZaloAdapter(app, webhook=webhook, **options)
    server = None
    try:
        if listen is not None:
            server = Server(app, *listen)
            server.mount([adapter])
            await server.start()
        await adapter.start()
        yield adapter
    finally:
        await adapter.stop()
        if server is not None:
            await server.stop()
