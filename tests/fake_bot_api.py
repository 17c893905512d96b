"""A fake Telegram Bot API server for tests.

Runs a real aiohttp HTTP server on 127.0.0.1 that speaks the Bot API the way
python-telegram-bot (PTB) uses it, so tests drive the *real* PTB stack over
real HTTP::

    async with FakeBotApi() as api:
        app = api.builder().rate_limiter(AIORateLimiter(max_retries=3)).build()
        app.add_handler(CommandHandler("start", start))
        async with run_polling(app):
            api.push_message(42, "/start")
            [call] = await api.wait_for("sendMessage")
            assert call.params["chat_id"] == 42

As a pytest fixture: register this module as a plugin in the top-level
``conftest.py`` (``pytest_plugins = ["tests.fake_bot_api"]``) or import the
fixture into a test module (``from tests.fake_bot_api import fake_bot_api``);
the async fixture ``fake_bot_api`` then yields a started :class:`FakeBotApi`.

What is modelled (see the method table in ``FakeBotApi._methods``): updates via
long polling, messages with per-chat ids, edits (incl. "message is not
modified"), callback/inline answers, bot commands, file uploads (multipart),
webhooks, and fault injection (fail_next, blocked chats, delays, rate limits).
Parameters arrive form-encoded (PTB's way: every non-string value is a JSON
string), as JSON or as multipart; they are decoded to Python values before
being recorded in :attr:`FakeBotApi.calls`.

Only use it from the event loop it was started on (it is not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import json
import logging
import math
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import ClientSession, ClientTimeout, web

__all__ = [
    "ApiError",
    "Call",
    "FakeBotApi",
    "Stats",
    "UploadedFile",
    "fake_bot_api",
    "run_polling",
]

log = logging.getLogger(__name__)

JSONDict = dict[str, Any]

# --- parameter decoding ------------------------------------------------------------------------
# PTB form-encodes every parameter; strings are sent raw and everything else json.dumps'ed, so the
# server has to know each parameter's type to decode it.
JSON_PARAMS = frozenset(
    {
        "reply_markup", "entities", "caption_entities", "results", "commands", "scope",
        "allowed_updates", "link_preview_options", "reply_parameters", "button", "media",
        "input_message_content", "options", "explanation_entities", "question_entities",
        "menu_button", "rights", "prices", "reaction", "message_ids",
    }
)  # fmt: skip
INT_PARAMS = frozenset(
    {
        "message_id", "offset", "limit", "timeout", "cache_time", "user_id", "max_connections",
        "message_thread_id", "reply_to_message_id", "duration", "width", "height", "until_date",
    }
)  # fmt: skip
BOOL_PARAMS = frozenset(
    {
        "disable_notification", "protect_content", "show_alert", "is_personal",
        "drop_pending_updates", "disable_web_page_preview", "allow_sending_without_reply",
        "disable_content_type_detection", "has_spoiler", "allow_paid_broadcast",
        "show_caption_above_media", "supports_streaming",
    }
)  # fmt: skip
CHAT_ID_PARAMS = frozenset({"chat_id", "from_chat_id"})

# Update types delivered when allowed_updates is empty / never set (Telegram's default).
NOT_DELIVERED_BY_DEFAULT = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

# Tags Telegram accepts with parse_mode=HTML.
HTML_TAGS = frozenset(
    {
        "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
        "tg-emoji", "code", "pre", "blockquote",
    }
)  # fmt: skip

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)(\s[^<>]*)?>")

BLOCKED = "Forbidden: bot was blocked by the user"
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

_USE_REGISTERED: Any = object()  # sentinel: "the secret token given to setWebhook"


def _decode_value(name: str, value: Any) -> Any:
    """Decode one form value according to the Bot API type of parameter ``name``."""
    if not isinstance(value, str):
        return value
    try:
        if name in JSON_PARAMS:
            return json.loads(value)
        if name in INT_PARAMS:
            return int(value)
        if name in BOOL_PARAMS:
            return value.lower() == "true"
    except ValueError as exc:
        raise ApiError(400, f"Bad Request: can't parse {name}: {value!r}") from exc
    if name in CHAT_ID_PARAMS and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (the unit of Telegram entity offsets)."""
    return len(text.encode("utf-16-le")) // 2


def command_entities(text: str) -> list[JSONDict]:
    """``bot_command`` entities for every ``/command`` (optionally ``@bot``) token in ``text``."""
    return [
        {"type": "bot_command", "offset": utf16_len(text[: m.start()]), "length": utf16_len(m.group())}
        for m in re.finditer(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]+)?", text)
    ]


def html_to_text(text: str) -> str:
    """Strip Telegram-HTML markup, raising a 400 like Telegram for malformed/unsupported tags."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for lt in re.finditer("<", text):
        if lt.start() < pos:
            continue
        out.append(html.unescape(text[pos : lt.start()]))
        byte_offset = len(text[: lt.start()].encode())
        m = _TAG.match(text, lt.start())
        if m is None:
            raise ApiError(
                400,
                f"Bad Request: can't parse entities: Unsupported start tag at byte offset {byte_offset}",
            )
        closing, tag = m.group(1), m.group(2).lower()
        if not closing:
            if tag not in HTML_TAGS:
                raise ApiError(
                    400,
                    f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}" '
                    f"at byte offset {byte_offset}",
                )
            stack.append(tag)
        elif not stack or stack[-1] != tag:
            expected = f'expected "</{stack[-1]}>", ' if stack else ""
            raise ApiError(
                400,
                f"Bad Request: can't parse entities: Unmatched end tag at byte offset {byte_offset}, "
                f'{expected}found "</{tag}>"',
            )
        else:
            stack.pop()
        pos = m.end()
    if stack:
        raise ApiError(
            400,
            f"Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"{stack[-1]}\"",
        )
    out.append(html.unescape(text[pos:]))
    return "".join(out)


# --- public data types -------------------------------------------------------------------------
class ApiError(Exception):
    """Raised by method handlers to answer ``{"ok": false, ...}`` with an HTTP error status."""

    def __init__(self, status: int, description: str | None = None, retry_after: int | None = None):
        self.status = status
        self.description = description or STATUS_TEXT.get(status, "Error")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.description}")

    def body(self) -> JSONDict:
        """The JSON error reply Telegram would send."""
        body: JSONDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


@dataclass
class UploadedFile:
    """A file the bot uploaded (multipart part) — ``data`` holds the bytes."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes
    file_id: str = ""

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Call:
    """One Bot API request the bot made, recorded after it was answered."""

    method: str
    params: JSONDict
    files: dict[str, UploadedFile]
    at: float  # time.monotonic() when the request arrived
    status: int = 0  # HTTP status of the reply
    response: JSONDict = field(default_factory=dict)  # full JSON reply

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result(self) -> Any:
        return self.response.get("result")

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        return self.params.get("text")


@dataclass
class Stats:
    """Counters over all requests: ``stats.by_status[429]``, ``stats.rate_limited`` ..."""

    requests: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0  # 429s produced by rate_limit() mode
    injected: int = 0  # errors produced by fail_next() / block_chat()

    @property
    def too_many_requests(self) -> int:
        """All 429 answers (injected and rate-limit mode)."""
        return self.by_status[429]


@dataclass
class _Fault:
    method: str
    status: int
    description: str | None
    retry_after: int | None
    remaining: int
    chat_id: Any = None


@dataclass
class _Window:
    """Sliding-window limit: at most ``limit`` requests per ``seconds`` per key."""

    limit: float
    seconds: float
    key: Callable[[JSONDict], Any]
    hits: dict[Any, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def retry_after(self, params: JSONDict, now: float) -> float:
        key = self.key(params)
        if key is None:
            return 0.0
        hits = self.hits[key]
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        return hits[0] + self.seconds - now if len(hits) >= self.limit else 0.0

    def record(self, params: JSONDict, now: float) -> None:
        key = self.key(params)
        if key is not None:
            self.hits[key].append(now)


def _is_group(chat_id: Any) -> bool:
    return isinstance(chat_id, int) and chat_id < 0


# --- the server --------------------------------------------------------------------------------
class FakeBotApi:
    """Fake Bot API server. Start with ``await api.start()`` or ``async with FakeBotApi() as api``."""

    def __init__(self, token: str = "123:ABC", bot_username: str = "docsach_test_bot"):
        self.token = token
        self.bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1
        self.bot_username = bot_username
        self.bot_user: JSONDict = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Docsach Test Bot",
            "username": bot_username,
        }
        self.port: int | None = None
        self.calls: list[Call] = []
        self.stats = Stats()
        self.errors: list[BaseException] = []  # unexpected exceptions inside the fake (bugs)
        self.files: dict[str, UploadedFile] = {}  # file_id -> upload
        self.commands: dict[tuple[str, str], list[JSONDict]] = {}  # (scope json, lang) -> commands
        self.webhook: JSONDict = {"url": ""}  # last setWebhook params
        self.webhook_deliveries: list[tuple[str, JSONDict, int]] = []  # (url, update, status)
        self.blocked_chats: set[Any] = set()

        self._updates: list[JSONDict] = []  # pending (unconfirmed) updates
        self._allowed_updates: set[str] | None = None
        self._next_update_id = 1
        self._next_query_id = 1
        self._next_file_id = 1
        self._message_ids: dict[Any, int] = defaultdict(int)
        self._messages: dict[tuple[Any, int], JSONDict] = {}
        self._bot_message_keys: list[tuple[Any, int]] = []
        self._users: dict[int, JSONDict] = {}
        self._chats: dict[Any, JSONDict] = {}
        self._open_queries: set[str] = set()  # callback / inline query ids not answered yet
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._windows: list[_Window] = []
        self._custom: dict[str, Callable[[JSONDict, dict[str, UploadedFile]], Any]] = {}
        self._changed = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._methods: dict[str, Callable[[JSONDict, dict[str, UploadedFile]], Any]] = {
            "getme": lambda p, f: dict(
                self.bot_user,
                can_join_groups=True,
                can_read_all_group_messages=False,
                supports_inline_queries=True,
                can_connect_to_business=False,
                has_main_web_app=False,
            ),
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "deletemessage": self._delete_message,
            "answercallbackquery": self._answer_query,
            "answerinlinequery": self._answer_inline_query,
            "setmycommands": self._set_my_commands,
            "getmycommands": lambda p, f: self.commands.get(self._commands_key(p), []),
            "deletemycommands": self._delete_my_commands,
            "senddocument": lambda p, f: self._send_file("document", p, f),
            "sendphoto": lambda p, f: self._send_file("photo", p, f),
            "getfile": self._get_file,
            "sendchataction": self._send_chat_action,
            "close": lambda p, f: True,
            "logout": lambda p, f: True,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> FakeBotApi:
        """Start serving on 127.0.0.1 on a free port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._closing = False
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Wake pending long polls and shut the server down."""
        self._closing = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBotApi:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:PORT``."""
        if self.port is None:
            raise RuntimeError("FakeBotApi is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """PTB's ``base_url`` (PTB appends the token)."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """PTB's ``base_file_url`` (PTB appends the token)."""
        return f"{self.url}/file/bot"

    def builder(self) -> Any:
        """A PTB ``ApplicationBuilder`` with token, base_url and base_file_url already set."""
        from telegram.ext import ApplicationBuilder

        return (
            ApplicationBuilder().token(self.token).base_url(self.base_url).base_file_url(self.base_file_url)
        )

    def bot(self, **kwargs: Any) -> Any:
        """A plain PTB ``Bot`` pointed at this server (use ``async with api.bot() as bot``)."""
        from telegram import Bot

        return Bot(self.token, base_url=self.base_url, base_file_url=self.base_file_url, **kwargs)

    # -- update builders (do not enqueue) -------------------------------------------------------
    def user(
        self,
        user_id: int,
        first_name: str | None = None,
        *,
        language_code: str | None = "vi",
        username: str | None = None,
        last_name: str | None = None,
    ) -> JSONDict:
        """Build (and remember) a Telegram ``User`` dict; names left as None keep earlier values."""
        known = self._users.get(user_id, {})
        user: JSONDict = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name or known.get("first_name") or f"User{user_id}",
        }
        for key, value in (("last_name", last_name), ("username", username)):
            if value or known.get(key):
                user[key] = value or known[key]
        if language_code:
            user["language_code"] = language_code
        self._users[user_id] = user
        return user

    def chat(self, chat_id: Any, user: JSONDict | None = None) -> JSONDict:
        """The ``Chat`` dict for ``chat_id`` (private if positive, group/supergroup if negative)."""
        if chat_id in self._chats:
            return self._chats[chat_id]
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id > 0:
            user = user or self._users.get(chat_id) or {"first_name": f"User{chat_id}"}
            chat = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
            if user.get("username"):
                chat["username"] = user["username"]
        elif chat_id <= -(10**12):
            chat = {"id": chat_id, "type": "supergroup", "title": f"Test supergroup {chat_id}"}
        else:
            chat = {"id": chat_id, "type": "group", "title": f"Test group {chat_id}"}
        self._chats[chat_id] = chat
        return chat

    def _new_update_id(self) -> int:
        self._next_update_id += 1
        return self._next_update_id - 1

    def _new_query_id(self) -> str:
        self._next_query_id += 1
        return str(4_000_000 + self._next_query_id - 1)

    def message_update(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        language_code: str | None = "vi",
        first_name: str | None = None,
        username: str | None = None,
        entities: list[JSONDict] | None = None,
        reply_to_message_id: int | None = None,
        **extra: Any,
    ) -> JSONDict:
        """Build a ``message`` update from a user (entities for /commands computed); not queued."""
        if user_id is None:
            user_id = chat_id if chat_id > 0 else 1001
        user = self.user(user_id, first_name, language_code=language_code, username=username)
        chat = self.chat(chat_id, user)
        self._message_ids[chat_id] += 1
        message: JSONDict = {
            "message_id": self._message_ids[chat_id],
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        entities = command_entities(text) if entities is None else entities
        if entities:
            message["entities"] = entities
        if reply_to_message_id is not None and (chat_id, reply_to_message_id) in self._messages:
            message["reply_to_message"] = copy.deepcopy(self._messages[chat_id, reply_to_message_id])
        message.update(extra)
        self._messages[chat_id, message["message_id"]] = message
        return {"update_id": self._new_update_id(), "message": copy.deepcopy(message)}

    def callback_update(
        self,
        chat_id: int,
        message_id: int,
        data: str,
        *,
        user_id: int | None = None,
        language_code: str | None = "vi",
        first_name: str | None = None,
    ) -> JSONDict:
        """Build a ``callback_query`` update for a button press on a (bot) message; not queued."""
        if user_id is None:
            user_id = chat_id if chat_id > 0 else 1001
        user = self.user(user_id, first_name, language_code=language_code)
        message = self._messages.get((chat_id, message_id)) or {
            "message_id": message_id,
            "from": self.bot_user,
            "chat": self.chat(chat_id, user),
            "date": int(time.time()),
            "text": "",
        }
        query_id = self._new_query_id()
        self._open_queries.add(query_id)
        query = {
            "id": query_id,
            "from": user,
            "message": copy.deepcopy(message),
            "chat_instance": str(abs(hash((self.bot_id, chat_id)))),
            "data": data,
        }
        return {"update_id": self._new_update_id(), "callback_query": query}

    def inline_query_update(
        self,
        user_id: int,
        query: str,
        *,
        offset: str = "",
        chat_type: str | None = "sender",
        language_code: str | None = "vi",
        first_name: str | None = None,
    ) -> JSONDict:
        """Build an ``inline_query`` update; not queued."""
        inline: JSONDict = {
            "id": self._new_query_id(),
            "from": self.user(user_id, first_name, language_code=language_code),
            "query": query,
            "offset": offset,
        }
        if chat_type:
            inline["chat_type"] = chat_type
        self._open_queries.add(inline["id"])
        return {"update_id": self._new_update_id(), "inline_query": inline}

    def chosen_inline_result_update(
        self,
        user_id: int,
        result_id: str,
        query: str = "",
        *,
        inline_message_id: str | None = None,
    ) -> JSONDict:
        """Build a ``chosen_inline_result`` update; not queued."""
        chosen: JSONDict = {
            "result_id": result_id,
            "from": self._users.get(user_id) or self.user(user_id),
            "query": query,
        }
        if inline_message_id:
            chosen["inline_message_id"] = inline_message_id
        return {"update_id": self._new_update_id(), "chosen_inline_result": chosen}

    # -- pushing updates (queued for getUpdates) ------------------------------------------------
    def push_raw(self, update: JSONDict) -> JSONDict:
        """Queue an update dict for getUpdates (an ``update_id`` is assigned if missing)."""
        if "update_id" not in update:
            update = {"update_id": self._new_update_id(), **update}
        else:
            self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
        for kind in ("callback_query", "inline_query"):
            if kind in update:
                self._open_queries.add(str(update[kind]["id"]))
        self._updates.append(update)
        self._notify()
        return update

    def push_message(self, chat_id: int, text: str, **kwargs: Any) -> JSONDict:
        """Queue a user's text message; kwargs as for :meth:`message_update`."""
        return self.push_raw(self.message_update(chat_id, text, **kwargs))

    def push_callback(self, chat_id: int, message_id: int, data: str, **kwargs: Any) -> JSONDict:
        """Queue a button press on message ``message_id``; kwargs as for :meth:`callback_update`."""
        return self.push_raw(self.callback_update(chat_id, message_id, data, **kwargs))

    def push_inline_query(self, user_id: int, query: str, **kwargs: Any) -> JSONDict:
        """Queue an inline query; kwargs as for :meth:`inline_query_update`."""
        return self.push_raw(self.inline_query_update(user_id, query, **kwargs))

    def push_chosen_inline_result(
        self, user_id: int, result_id: str, query: str = "", **kwargs: Any
    ) -> JSONDict:
        """Queue a chosen inline result."""
        return self.push_raw(self.chosen_inline_result_update(user_id, result_id, query, **kwargs))

    @property
    def pending_updates(self) -> list[JSONDict]:
        """Updates queued and not yet confirmed by a getUpdates offset."""
        return list(self._updates)

    # -- inspecting what the bot did ------------------------------------------------------------
    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        """Recorded calls of ``method`` (case-insensitive); ``ok=True`` keeps only successes."""
        return [c for c in self.calls if c.method.lower() == method.lower() and (ok is None or c.ok == ok)]

    def sent_messages(self, chat_id: Any = None) -> list[JSONDict]:
        """Messages the bot produced (current state, edits applied, deleted ones left out)."""
        return [
            copy.deepcopy(self._messages[key])
            for key in self._bot_message_keys
            if key in self._messages and (chat_id is None or key[0] == chat_id)
        ]

    def message(self, chat_id: Any, message_id: int) -> JSONDict | None:
        """The current state of any known message (user's or bot's)."""
        msg = self._messages.get((chat_id, message_id))
        return copy.deepcopy(msg) if msg else None

    def last_sent(self, chat_id: Any = None) -> JSONDict | None:
        """The most recent message the bot sent (to ``chat_id``)."""
        sent = self.sent_messages(chat_id)
        return sent[-1] if sent else None

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
        predicate: Callable[[Call], bool] | None = None,
        *,
        ok: bool | None = None,
    ) -> list[Call]:
        """Wait until ``count`` calls of ``method`` (matching ``predicate``/``ok``) were answered.

        Returns all matching calls so far; raises ``AssertionError`` on timeout.
        """

        def matching() -> list[Call]:
            return [c for c in self.calls_to(method, ok=ok) if predicate is None or predicate(c)]

        if await self._wait_until(lambda: len(matching()) >= count, timeout):
            return matching()
        seen = Counter(c.method for c in self.calls)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {count} x {method}; got {len(matching())}. "
            f"Calls so far: {dict(seen)}; fake errors: {self.errors!r}"
        )

    async def wait_for_sent(
        self,
        chat_id: Any = None,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
        predicate: Callable[[JSONDict], bool] | None = None,
    ) -> list[JSONDict]:
        """Wait until the bot has ``count`` messages (in ``chat_id``, matching ``predicate``)."""

        def matching() -> list[JSONDict]:
            return [m for m in self.sent_messages(chat_id) if predicate is None or predicate(m)]

        if await self._wait_until(lambda: len(matching()) >= count, timeout):
            return matching()
        raise AssertionError(
            f"timed out after {timeout}s waiting for {count} message(s) in chat {chat_id}; "
            f"sent so far: {[m.get('text') for m in self.sent_messages(chat_id)]}"
        )

    async def wait_idle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until every pushed update was fetched and confirmed (offset moved past it)."""
        if not await self._wait_until(lambda: not self._updates, timeout):
            raise AssertionError(f"updates not consumed within {timeout}s: {self._updates!r}")

    def reset(self) -> None:
        """Forget recorded calls, stats and all faults (messages and chats are kept)."""
        self.calls.clear()
        self.stats = Stats()
        self.clear_faults()

    # -- fault injection -----------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int | None = 1,
        times: int = 1,
        description: str | None = None,
        *,
        chat_id: Any = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (``"*"`` = any but getUpdates) with an error.

        ``retry_after`` is only sent with status 429. ``chat_id`` limits it to one chat.
        """
        if description is None:
            description = f"Too Many Requests: retry after {retry_after}" if status == 429 else None
        self._faults.append(
            _Fault(
                method.lower(), status, description, retry_after if status == 429 else None, times, chat_id
            )
        )

    def block_chat(self, chat_id: Any) -> None:
        """Calls targeting ``chat_id`` answer 403 "Forbidden: bot was blocked by the user"."""
        self.blocked_chats.add(chat_id)

    def unblock_chat(self, chat_id: Any) -> None:
        self.blocked_chats.discard(chat_id)

    def delay(self, method: str, seconds: float) -> None:
        """Answer every call of ``method`` ``seconds`` late; 0 removes the delay.

        ``"*"`` = any method but getUpdates. The call is processed and recorded at once and only
        the reply is late, so a bot whose request times out has still sent the message.
        """
        if seconds:
            self._delays[method.lower()] = seconds
        else:
            self._delays.pop(method.lower(), None)

    def rate_limit(
        self,
        per_second: float | None = 30,
        per_chat_per_second: float | None = 1,
        per_group_per_minute: float | None = None,
    ) -> None:
        """Answer 429 (with ``retry_after``) when the bot exceeds these rates.

        Sliding windows over real time; only calls with a ``chat_id`` count, and rejected
        calls do not. Pass ``None`` to drop a limit; ``rate_limit(None, None)`` turns it off.
        """
        self._windows = []
        if per_second:
            self._windows.append(_Window(per_second, 1.0, lambda p: "all"))
        if per_chat_per_second:
            self._windows.append(_Window(per_chat_per_second, 1.0, lambda p: p.get("chat_id")))
        if per_group_per_minute:
            self._windows.append(
                _Window(
                    per_group_per_minute,
                    60.0,
                    lambda p: p.get("chat_id") if _is_group(p.get("chat_id")) else None,
                )
            )

    def clear_faults(self) -> None:
        """Remove pending fail_next faults, delays, rate limits and blocked chats."""
        self._faults.clear()
        self._delays.clear()
        self._windows = []
        self.blocked_chats.clear()

    def handle(self, method: str, func: Callable[[JSONDict, dict[str, UploadedFile]], Any]) -> None:
        """Add or override a method: ``func(params, files)`` returns the result or raises ApiError."""
        self._custom[method.lower()] = func

    # -- webhook helper ------------------------------------------------------------------------
    async def post_update_to_webhook(
        self,
        url: str | None,
        update: JSONDict,
        secret_token: str | None = _USE_REGISTERED,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> int:
        """POST ``update`` as JSON to ``url`` (default: the URL given to setWebhook).

        Sends ``X-Telegram-Bot-Api-Secret-Token`` = ``secret_token`` (default: the one given to
        setWebhook; ``None`` = no header). Returns the HTTP status.
        """
        url = url or self.webhook.get("url")
        if not url:
            raise RuntimeError("no webhook URL given and none set via setWebhook")
        if secret_token is _USE_REGISTERED:
            secret_token = self.webhook.get("secret_token")
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret_token} if secret_token else {}
        async with (
            ClientSession(timeout=ClientTimeout(total=timeout)) as session,
            session.post(url, json=update, headers=headers) as resp,
        ):
            await resp.read()
            status = resp.status
        self.webhook_deliveries.append((url, update, status))
        return status

    # -- internals: waiting ---------------------------------------------------------------------
    def _notify(self) -> None:
        """Wake everyone waiting in :meth:`_wait_until` (callable from sync code)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def _wait_until(self, predicate: Callable[[], Any], timeout: float) -> bool:  # noqa: ASYNC109
        """Re-check ``predicate`` on every change until true (True) or ``timeout`` (False)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
                return True
        except TimeoutError:
            return bool(predicate())

    # -- internals: HTTP -----------------------------------------------------------------------
    async def _read_params(self, request: web.Request) -> tuple[JSONDict, dict[str, UploadedFile]]:
        raw: dict[str, Any] = dict(request.query)
        files: dict[str, UploadedFile] = {}
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if not isinstance(body, dict):
                    raise ApiError(400, "Bad Request: JSON object expected")
                raw.update(body)
            else:
                for name, value in (await request.post()).items():
                    if isinstance(value, web.FileField):
                        files[name] = UploadedFile(
                            name, value.filename, value.content_type, value.file.read()
                        )
                    else:
                        raw[name] = value
        return {k: _decode_value(k, v) for k, v in raw.items()}, files

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        call = Call(method, {}, {}, time.monotonic())
        self.stats.requests += 1
        self.stats.by_method[method] += 1
        try:
            call.params, call.files = await self._read_params(request)
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            key = method.lower()
            func = self._custom.get(key) or self._methods.get(key)
            if func is None:
                raise ApiError(404, "Not Found")
            self._check_faults(key, call.params)
            result = func(call.params, call.files)
            if asyncio.iscoroutine(result):
                result = await result
            call.status, call.response = 200, {"ok": True, "result": result}
        except ApiError as exc:
            call.status, call.response = exc.status, exc.body()
        except Exception as exc:  # a bug in the fake: make it visible to the test
            log.exception("FakeBotApi failed handling %s", method)
            self.errors.append(exc)
            call.status = 500
            call.response = ApiError(500, f"Internal Server Error: fake failed: {exc!r}").body()
        self.stats.by_status[call.status] += 1
        self.calls.append(call)
        self._notify()
        seconds = self._delays.get(method.lower(), 0)
        if not seconds and method.lower() != "getupdates":
            seconds = self._delays.get("*", 0)
        if seconds:  # processed already: a client that times out still "sent" it, as with Telegram
            await asyncio.sleep(seconds)
        return web.json_response(call.response, status=call.status)

    async def _handle_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(ApiError(401).body(), status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        upload = self.files.get(file_id)
        if upload is None:
            return web.json_response(ApiError(404).body(), status=404)
        return web.Response(body=upload.data, content_type=upload.content_type or "application/octet-stream")

    def _check_faults(self, method: str, params: JSONDict) -> None:
        chat_id = params.get("chat_id")
        for fault in self._faults:
            any_method = fault.method == "*" and method != "getupdates"
            if (fault.method == method or any_method) and fault.chat_id in (None, chat_id):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                self.stats.injected += 1
                raise ApiError(fault.status, fault.description, fault.retry_after)
        if chat_id is None:
            return
        if chat_id in self.blocked_chats:
            self.stats.injected += 1
            raise ApiError(403, BLOCKED)
        if self._windows:
            now = time.monotonic()
            wait = max(w.retry_after(params, now) for w in self._windows)
            if wait > 0:
                self.stats.rate_limited += 1
                retry = max(1, math.ceil(wait))
                raise ApiError(429, f"Too Many Requests: retry after {retry}", retry)
            for window in self._windows:
                window.record(params, now)

    # -- internals: Bot API methods --------------------------------------------------------------
    async def _get_updates(self, p: JSONDict, files: object) -> list[JSONDict]:
        if self.webhook.get("url"):
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = p.get("offset")
        limit = min(max(int(p.get("limit") or 100), 1), 100)
        if "allowed_updates" in p:
            self._allowed_updates = set(p["allowed_updates"] or ()) or None
        if offset is not None and offset < 0:
            self._updates = self._updates[offset:]
        elif offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        self._notify()  # confirmed updates: wake wait_idle()

        def visible() -> list[JSONDict]:
            return [u for u in self._updates if self._is_allowed(u)][:limit]

        await self._wait_until(lambda: visible() or self._closing, float(p.get("timeout") or 0))
        return visible()

    def _is_allowed(self, update: JSONDict) -> bool:
        kind = next((k for k in update if k != "update_id"), "")
        if self._allowed_updates is None:
            return kind not in NOT_DELIVERED_BY_DEFAULT
        return kind in self._allowed_updates

    def _set_webhook(self, p: JSONDict, files: object) -> bool:
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = dict(p)
        if "allowed_updates" in p:
            self._allowed_updates = set(p["allowed_updates"] or ()) or None
        return True

    def _delete_webhook(self, p: JSONDict, files: object) -> bool:
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = {"url": ""}
        return True

    def _get_webhook_info(self, p: JSONDict, files: object) -> JSONDict:
        info: JSONDict = {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        for key in ("max_connections", "ip_address", "allowed_updates"):
            if key in self.webhook:
                info[key] = self.webhook[key]
        return info

    def _target_chat(self, p: JSONDict) -> JSONDict:
        if p.get("chat_id") in (None, ""):
            raise ApiError(400, "Bad Request: chat_id is empty")
        return self.chat(p["chat_id"])

    def _formatted(self, p: JSONDict, key: str, entities_key: str) -> tuple[str, list[JSONDict] | None]:
        """Plain text of ``p[key]`` after parse_mode (HTML is checked and stripped)."""
        text = str(p.get(key) or "")
        if (p.get("parse_mode") or "").upper() == "HTML":
            return html_to_text(text), None
        return text, p.get(entities_key) or None

    @staticmethod
    def _inline_markup(p: JSONDict) -> JSONDict | None:
        """Validate ``reply_markup``; return it if it is an inline keyboard (what Telegram echoes)."""
        markup = p.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            return None
        for row in markup["inline_keyboard"]:
            for button in row:
                if not button.get("text"):
                    raise ApiError(400, "Bad Request: text buttons are unallowed in the inline keyboard")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= 64:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return markup

    def _store_bot_message(self, chat: JSONDict, p: JSONDict, content: JSONDict) -> JSONDict:
        chat_id = chat["id"]
        self._message_ids[chat_id] += 1
        message: JSONDict = {
            "message_id": self._message_ids[chat_id],
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
            **content,
        }
        reply_to = (p.get("reply_parameters") or {}).get("message_id") or p.get("reply_to_message_id")
        if reply_to and (chat_id, reply_to) in self._messages:
            message["reply_to_message"] = copy.deepcopy(self._messages[chat_id, reply_to])
        markup = self._inline_markup(p)
        if markup:
            message["reply_markup"] = markup
        self._messages[chat_id, message["message_id"]] = message
        self._bot_message_keys.append((chat_id, message["message_id"]))
        return copy.deepcopy(message)

    def _send_message(self, p: JSONDict, files: object) -> JSONDict:
        chat = self._target_chat(p)
        text, entities = self._formatted(p, "text", "entities")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        content: JSONDict = {"text": text}
        if entities:
            content["entities"] = entities
        return self._store_bot_message(chat, p, content)

    def _editable(self, p: JSONDict) -> JSONDict | None:
        """The stored bot message addressed by ``p`` (None for inline messages)."""
        if p.get("inline_message_id"):
            return None
        if p.get("chat_id") is None or p.get("message_id") is None:
            raise ApiError(400, "Bad Request: message identifier is not specified")
        message = self._messages.get((p["chat_id"], p["message_id"]))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != self.bot_id:
            raise ApiError(400, "Bad Request: message can't be edited")
        return message

    def _apply_edit(self, message: JSONDict, changes: JSONDict, markup: JSONDict | None) -> JSONDict:
        new = {k: v for k, v in message.items() if k not in ("reply_markup", "edit_date", *changes)}
        new.update({k: v for k, v in changes.items() if v})
        if markup:
            new["reply_markup"] = markup
        old = {k: v for k, v in message.items() if k != "edit_date"}
        if new == old:
            raise ApiError(400, NOT_MODIFIED)
        new["edit_date"] = int(time.time())
        message.clear()
        message.update(new)
        return copy.deepcopy(message)

    def _edit_message_text(self, p: JSONDict, files: object) -> JSONDict | bool:
        text, entities = self._formatted(p, "text", "entities")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        markup = self._inline_markup(p)
        message = self._editable(p)
        if message is None:
            return True
        if "text" not in message:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        # Like Telegram, omitting reply_markup removes the inline keyboard.
        return self._apply_edit(message, {"text": text, "entities": entities}, markup)

    def _edit_message_reply_markup(self, p: JSONDict, files: object) -> JSONDict | bool:
        markup = self._inline_markup(p)
        message = self._editable(p)
        if message is None:
            return True
        return self._apply_edit(message, {}, markup)

    def _delete_message(self, p: JSONDict, files: object) -> bool:
        if self._messages.pop((p.get("chat_id"), p.get("message_id")), None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    def _answer_query(self, p: JSONDict, files: object) -> bool:
        query_id = str(p.get("callback_query_id") or p.get("inline_query_id") or "")
        if query_id not in self._open_queries:
            raise ApiError(400, QUERY_INVALID)
        self._open_queries.discard(query_id)
        return True

    def _answer_inline_query(self, p: JSONDict, files: object) -> bool:
        results = p.get("results")
        if not isinstance(results, list):
            raise ApiError(400, "Bad Request: results must be an array")
        if len(results) > 50:
            raise ApiError(400, "Bad Request: RESULTS_TOO_MUCH")
        ids = [r.get("id") for r in results]
        if any(not i or not r.get("type") for i, r in zip(ids, results, strict=True)):
            raise ApiError(400, "Bad Request: RESULT_ID_INVALID")
        if len(set(ids)) != len(ids):
            raise ApiError(400, "Bad Request: RESULT_ID_DUPLICATE")
        return self._answer_query(p, files)

    @staticmethod
    def _commands_key(p: JSONDict) -> tuple[str, str]:
        scope = p.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), p.get("language_code") or ""

    def _set_my_commands(self, p: JSONDict, files: object) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: commands must be an array of at most 100 BotCommand")
        for cmd in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(cmd.get("command", ""))):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(cmd.get("description", ""))) <= 256:
                raise ApiError(400, "Bad Request: command description is empty")
        self.commands[self._commands_key(p)] = commands
        return True

    def _delete_my_commands(self, p: JSONDict, files: object) -> bool:
        self.commands.pop(self._commands_key(p), None)
        return True

    def get_commands(self, scope: JSONDict | None = None, language_code: str = "") -> list[JSONDict]:
        """Commands set via setMyCommands for ``scope`` (default scope) and language."""
        return self.commands.get(self._commands_key({"scope": scope, "language_code": language_code}), [])

    def _store_upload(self, kind: str, upload: UploadedFile) -> UploadedFile:
        upload.file_id = f"{kind.upper()}-{self._next_file_id}"
        self._next_file_id += 1
        self.files[upload.file_id] = upload
        return upload

    def _send_file(self, kind: str, p: JSONDict, files: dict[str, UploadedFile]) -> JSONDict:
        chat = self._target_chat(p)
        value = p.get(kind)
        if isinstance(value, str) and value.startswith("attach://"):
            value = files.get(value.removeprefix("attach://"))
        elif kind in files:
            value = files[kind]
        if isinstance(value, UploadedFile):
            upload = self._store_upload(kind, value)
        elif isinstance(value, str) and value in self.files:
            upload = self.files[value]
        elif isinstance(value, str) and value:  # a URL or foreign file_id: no bytes known
            upload = self._store_upload(kind, UploadedFile(kind, value.rsplit("/", 1)[-1], None, b""))
        else:
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        file_info = {
            "file_id": upload.file_id,
            "file_unique_id": f"u{upload.file_id}",
            "file_size": upload.size,
        }
        content: JSONDict
        if kind == "photo":
            content = {"photo": [dict(file_info, width=320, height=320)]}
        else:
            content = {"document": dict(file_info, file_name=upload.filename or "file")}
            if upload.content_type:
                content["document"]["mime_type"] = upload.content_type
        caption, entities = self._formatted(p, "caption", "caption_entities")
        if len(caption) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        if caption:
            content["caption"] = caption
        if entities:
            content["caption_entities"] = entities
        return self._store_bot_message(chat, p, content)

    def _get_file(self, p: JSONDict, files: object) -> JSONDict:
        upload = self.files.get(str(p.get("file_id")))
        if upload is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": upload.file_id,
            "file_unique_id": f"u{upload.file_id}",
            "file_size": upload.size,
            "file_path": f"files/{upload.file_id}",
        }

    def _send_chat_action(self, p: JSONDict, files: object) -> bool:
        self._target_chat(p)
        if not p.get("action"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True


# --- PTB helpers & pytest plugin ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def run_polling(app: Any, *, timeout: int = 1, **kwargs: Any) -> AsyncIterator[Any]:  # noqa: ASYNC109
    """Run a PTB ``Application`` with polling for the duration of the block, then shut it down."""
    await app.initialize()
    try:
        await app.start()
        try:
            await app.updater.start_polling(poll_interval=0, timeout=timeout, **kwargs)
            try:
                yield app
            finally:
                await app.updater.stop()
        finally:
            await app.stop()
    finally:
        await app.shutdown()


@pytest_asyncio.fixture
async def fake_bot_api() -> AsyncIterator[FakeBotApi]:
    """A started :class:`FakeBotApi` (register with ``pytest_plugins = ["tests.fake_bot_api"]``)."""
    async with FakeBotApi() as api:
        yield api
