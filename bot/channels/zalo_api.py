"""A small aiohttp client for the Zalo Bot API, and the update shapes it delivers.

Why our own: the contract is a handful of JSON calls (see the README's Zalo section), and the
one Python client (python-zalo-bot 0.1.x, a partial fork of python-telegram-bot) treats any
HTTP 2xx as success without reading ``ok``, and logs request URLs and parameters — the token
is in the URL and the parameters are children's messages. This client reads ``ok``, tells
"never sent" apart from "sent, answer lost", and keeps the token out of every error and log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://bot-api.zaloplatforms.com/bot"
MAX_TEXT = 2000
_CONNECT_FAILED: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,) + (
    (aiohttp.ConnectionTimeoutError,) if hasattr(aiohttp, "ConnectionTimeoutError") else ())

EVENT_KINDS = {
    "message.text.received": "text",
    "message.image.received": "image",
    "message.sticker.received": "sticker",
    "message.voice.received": "voice",
    "message.unsupported.received": "unsupported",   # content hidden: the sender is protected
}


class ZaloError(Exception):
    """Base of everything this client raises; messages never contain the token."""


class ZaloApiError(ZaloError):
    """The Bot API answered, and not with ``ok: true``: ``error_code`` (Zalo's, or the HTTP
    status when the body had none), ``http_status`` and ``description``."""

    def __init__(self, method: str, error_code: int, description: str, http_status: int = 200,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{method}: {error_code} {description}".strip())
        self.method = method
        self.error_code = error_code
        self.description = description
        self.http_status = http_status
        self.retry_after = retry_after


class ZaloNotSent(ZaloError):
    """The request never reached the server (connection refused, DNS, connect timeout)."""


class ZaloUncertain(ZaloError):
    """The request went out but no usable answer came back (read timeout, dropped connection,
    an unreadable body): the call may have taken effect."""


class ZaloApi:
    """``await api.call("sendMessage", chat_id=…, text=…)`` → the ``result``; errors above."""

    def __init__(self, token: str, base_url: str = DEFAULT_BASE_URL, *, timeout: float = 15.0,
                 connect_timeout: float = 5.0) -> None:
        if not token:
            raise ValueError("a Zalo bot token is required")
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def bot_id(self) -> str:
        return self._token.split(":", 1)[0]

    def redact(self, text: str) -> str:
        return text.replace(self._token, "<token>")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No connection reuse across a dead peer: pooled keep-alive connections are fine.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def call(self, method: str, *, read_timeout: float | None = None, **params: Any) -> Any:
        """POST ``params`` as JSON to ``<base>/<token>/<method>`` and return ``result``."""
        url = f"{self.base_url}{self._token}/{method}"
        read = read_timeout if read_timeout is not None else self.timeout
        limits = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout,
                                       sock_read=read)
        body = {k: v for k, v in params.items() if v is not None}
        try:
            async with self._client().post(url, json=body, timeout=limits) as response:
                raw = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except _CONNECT_FAILED as exc:
            raise ZaloNotSent(f"{method}: cannot connect ({type(exc).__name__})") from None
        except aiohttp.InvalidURL:
            raise ZaloNotSent(f"{method}: ZALO_API_BASE_URL is not a valid URL") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ZaloUncertain(f"{method}: no answer ({type(exc).__name__}: {self.redact(str(exc))[:200]})") \
                from None
        return self._result(method, status, raw, retry_after)

    def _result(self, method: str, status: int, raw: bytes, retry_after: str | None) -> Any:
        try:
            payload = json.loads(raw.decode("utf-8", "replace")) if raw else None
        except ValueError:
            payload = None
        wait = _seconds(retry_after)
        if isinstance(payload, dict) and payload.get("ok") is True and 200 <= status < 300:
            return payload.get("result")
        if isinstance(payload, dict) and payload.get("ok") is False:
            code = payload.get("error_code")
            code = int(code) if isinstance(code, int | str) and str(code).lstrip("-").isdigit() else status
            params = payload.get("parameters") if isinstance(payload.get("parameters"), dict) else {}
            wait = _seconds(params.get("retry_after")) or wait
            description = self.redact(str(payload.get("description") or ""))[:300]
            raise ZaloApiError(method, code, description, status, wait)
        if status >= 300:
            raise ZaloApiError(method, status, f"HTTP {status}", status, wait)
        raise ZaloUncertain(f"{method}: HTTP {status} with an unreadable answer")

    # -- the documented calls ----------------------------------------------------------------
    async def get_me(self) -> dict[str, Any]:
        result = await self.call("getMe")
        return result if isinstance(result, dict) else {}

    async def get_updates(self, timeout: int = 30) -> list[ZaloUpdate]:  # noqa: ASYNC109
        """One long poll. Idle (``ok:false`` 408, or an empty result) → []."""
        try:
            result = await self.call("getUpdates", read_timeout=timeout + 10, timeout=timeout)
        except ZaloApiError as exc:
            if exc.error_code == 408:
                return []
            raise
        return parse_updates(result)

    async def set_webhook(self, url: str, secret_token: str) -> Any:
        return await self.call("setWebhook", url=url, secret_token=secret_token)

    async def delete_webhook(self) -> Any:
        return await self.call("deleteWebhook")

    async def get_webhook_info(self) -> dict[str, Any]:
        result = await self.call("getWebhookInfo")
        return result if isinstance(result, dict) else {}

    async def send_message(self, chat_id: str, text: str) -> dict[str, Any]:
        result = await self.call("sendMessage", chat_id=chat_id, text=text)
        return result if isinstance(result, dict) else {}

    async def send_photo(self, chat_id: str, photo: str, caption: str | None = None) -> dict[str, Any]:
        result = await self.call("sendPhoto", chat_id=chat_id, photo=photo, caption=caption)
        return result if isinstance(result, dict) else {}

    async def send_chat_action(self, chat_id: str, action: str = "typing") -> Any:
        return await self.call("sendChatAction", chat_id=chat_id, action=action)

    async def download(self, url: str, *, max_bytes: int, timeout: float = 20.0) -> tuple[bytes, str]:  # noqa: ASYNC109
        """Fetch a file a user sent (a photo on Zalo's CDN): (bytes, content type). Refuses
        anything larger than ``max_bytes`` without reading it all."""
        if not url.startswith(("https://", "http://")):
            raise ZaloError("not a downloadable URL")
        limits = aiohttp.ClientTimeout(total=timeout, connect=self.connect_timeout)
        try:
            async with self._client().get(url, timeout=limits) as response:
                if response.status != 200:
                    raise ZaloError(f"download answered HTTP {response.status}")
                if (response.content_length or 0) > max_bytes:
                    raise ZaloError("file too large")
                data = await response.content.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise ZaloError("file too large")
                return data, response.content_type or "application/octet-stream"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ZaloError(f"download failed ({type(exc).__name__})") from None


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


# -- updates ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZaloUpdate:
    """One event from Zalo, read defensively (ids are strings; ``date`` is in milliseconds)."""

    event: str
    kind: str                  # text, image, sticker, voice, unsupported or unknown
    message_id: str | None
    chat_id: str | None
    chat_type: str             # "private" or "group"
    user_id: str | None
    display_name: str | None
    is_bot: bool = False
    text: str = ""
    photo_url: str | None = None
    date_ms: int | None = None


def _str(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def parse_update(obj: Any) -> ZaloUpdate | None:
    """An update object (``{"event_name", "message"}``) → :class:`ZaloUpdate`; None when it is
    not an update at all. Unknown events parse, with ``kind="unknown"``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("event_name"), str):
        return None
    event = obj["event_name"]
    message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
    chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
    sender = message.get("from") if isinstance(message.get("from"), dict) else {}
    kind = EVENT_KINDS.get(event, "unknown")
    text = message.get("text") if kind == "text" else message.get("caption") if kind == "image" else None
    date = message.get("date")
    return ZaloUpdate(
        event=event[:80], kind=kind,
        message_id=_str(message.get("message_id")),
        chat_id=_str(chat.get("id")) or _str(sender.get("id")),
        chat_type="group" if str(chat.get("chat_type") or "").upper() == "GROUP" else "private",
        user_id=_str(sender.get("id")) or _str(chat.get("id")),
        display_name=str(sender.get("display_name"))[:200] if sender.get("display_name") else None,
        is_bot=sender.get("is_bot") is True,
        text=text if isinstance(text, str) else "",
        photo_url=_str(message.get("photo")) if kind == "image" else None,
        date_ms=date if isinstance(date, int) and not isinstance(date, bool) else None,
    )


def parse_updates(body: Any) -> list[ZaloUpdate]:
    """A getUpdates ``result`` or a webhook body, with or without the ``ok/result`` envelope;
    one update or (defensively) a list of them."""
    if isinstance(body, dict) and "result" in body and "event_name" not in body:
        body = body.get("result")
    items = body if isinstance(body, list) else [body] if body else []
    return [u for u in (parse_update(item) for item in items) if u is not None]
