"""A fake Zalo Bot API server for tests: real HTTP on 127.0.0.1, the contract of
``shared/reference/zalo-bot-api.md``.

    async with FakeZaloApi() as api:
        # point the adapter at api.base_url ("http://127.0.0.1:PORT/bot"), token api.token
        api.push_text("u1", "Xin chào")
        [call] = await api.wait_for("sendMessage")

What is modelled: ``getMe``; ``getUpdates`` as a long poll that hands out **one** update per call
(no offset: an update fetched is gone) and answers an idle poll with ``ok:false`` 408 (or an
empty result, ``idle="empty"``); ``setWebhook`` (secret 8–256 characters), ``deleteWebhook``,
``getWebhookInfo``, and, while a webhook is set, every pushed update POSTed to it with the
``X-Bot-Api-Secret-Token`` header; ``sendMessage`` (1–2000 characters), ``sendPhoto``,
``sendSticker``, ``sendChatAction``. Photos users "send" are served by the fake itself
(:meth:`host_file`), as Zalo's CDN would. Faults: :meth:`fail_next` (``ok:false`` with any
error code inside HTTP 200, or a real HTTP status such as 429 or 502), :meth:`delay` (the call
is processed at once, only the answer is late, so a client that times out has still sent it),
:meth:`block_chat`, and repeated deliveries (:meth:`push`'s ``times``). Every call is recorded
in :attr:`calls` with its parameters; the token never appears in them.

Use it only from the event loop it was started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

JSONDict = dict[str, Any]
MAX_TEXT = 2000
SECRET_HEADER = "X-Bot-Api-Secret-Token"
_UNSET = object()


@dataclass
class Call:
    method: str
    params: JSONDict
    status: int = 200
    response: JSONDict = field(default_factory=dict)
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        return self.params.get("text")


@dataclass
class _Fault:
    method: str
    http_status: int
    error_code: int
    description: str
    times: int
    chat_id: Any = None


class FakeZaloApi:
    """The fake server. ``async with FakeZaloApi() as api`` or ``await api.start()``."""

    def __init__(self, token: str = "1234567890:fakeSecretForTests", *, idle: str = "408") -> None:
        self.token = token
        self.bot_id = token.split(":", 1)[0]
        self.idle = idle                      # what an idle long poll answers: "408" or "empty"
        self.port: int | None = None
        self.calls: list[Call] = []
        self.webhook: JSONDict = {"url": "", "secret_token": None, "updated_at": 0}
        self.webhook_deliveries: list[tuple[JSONDict, int]] = []   # (update, HTTP status)
        self.blocked_chats: set[str] = set()
        self.errors: list[BaseException] = []
        self.max_poll_seconds = 30.0          # cap on a long poll's wait
        self._updates: list[JSONDict] = []
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._every: dict[str, list[tuple[int, int, int]]] = {}
        self._counts: Counter = Counter()
        self._files: dict[str, tuple[bytes, str]] = {}
        self._message_ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self._methods: dict[str, Callable[[JSONDict], Any]] = {
            "getme": lambda p: {"id": self.bot_id, "account_name": "docsach.test", "account_type": "BASIC",
                                "can_join_groups": False},
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": lambda p: {"url": self.webhook["url"], "updated_at": self.webhook["updated_at"]},
            "sendmessage": self._send_message,
            "sendphoto": self._send_photo,
            "sendsticker": self._send_sticker,
            "sendchataction": lambda p: self._require_chat(p) or True,
        }

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> FakeZaloApi:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/cdn/{name}", self._serve_file)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeZaloApi:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What ZALO_API_BASE_URL holds: everything up to and including ``/bot``."""
        return f"{self.url}/bot"

    # -- updates -----------------------------------------------------------------------------
    def message(self, chat_id: str, event: str = "message.text.received", *, text: str | None = None,
                display_name: str = "Nguyễn Văn A", message_id: str | None = None, chat_type: str = "PRIVATE",
                from_id: str | None = None, **content: Any) -> JSONDict:
        """An update as Zalo sends it (the ``result`` object of getUpdates, without envelope)."""
        msg: JSONDict = {
            "message_id": message_id or secrets.token_hex(10),
            "date": int(time.time() * 1000),
            "chat": {"id": chat_id, "chat_type": chat_type},
            "from": {"id": from_id or chat_id, "display_name": display_name, "is_bot": False},
        }
        if text is not None:
            msg["text"] = text
        msg.update(content)
        return {"event_name": event, "message": msg}

    def push(self, update: JSONDict, *, times: int = 1) -> JSONDict:
        """Queue ``update`` for getUpdates — or, while a webhook is set, POST it there.
        ``times`` > 1 delivers the very same update again (Zalo may repeat deliveries)."""
        for _ in range(times):
            if self.webhook["url"]:
                task = asyncio.get_running_loop().create_task(self.post_to_webhook(update))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._updates.append(copy.deepcopy(update))
        self._notify()
        return update

    def push_text(self, chat_id: str, text: str, *, times: int = 1, **kwargs: Any) -> JSONDict:
        return self.push(self.message(chat_id, text=text, **kwargs), times=times)

    def push_image(self, chat_id: str, photo_url: str, caption: str | None = None, **kwargs: Any) -> JSONDict:
        extra = {"photo": photo_url} | ({"caption": caption} if caption is not None else {})
        return self.push(self.message(chat_id, "message.image.received", **extra, **kwargs))

    def push_sticker(self, chat_id: str, **kwargs: Any) -> JSONDict:
        return self.push(self.message(chat_id, "message.sticker.received", sticker="a1b2c3",
                                      url=f"{self.url}/cdn/sticker.webp", **kwargs))

    def push_voice(self, chat_id: str, **kwargs: Any) -> JSONDict:
        return self.push(self.message(chat_id, "message.voice.received", url=f"{self.url}/cdn/voice.aac",
                                      **kwargs))

    def push_unsupported(self, chat_id: str, **kwargs: Any) -> JSONDict:
        """What Zalo sends instead of the content when the sender is protected (a minor)."""
        return self.push(self.message(chat_id, "message.unsupported.received", **kwargs))

    def host_file(self, data: bytes, content_type: str = "image/jpeg", name: str | None = None) -> str:
        """Serve ``data`` like Zalo's CDN; returns its URL (what an image update carries)."""
        name = name or secrets.token_hex(8) + ".jpg"
        self._files[name] = (data, content_type)
        return f"{self.url}/cdn/{name}"

    @property
    def pending_updates(self) -> list[JSONDict]:
        return list(self._updates)

    async def post_to_webhook(self, update: JSONDict, *, secret: Any = _UNSET, envelope: bool = True,
                              body: bytes | None = None, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        """POST one update to the registered webhook; returns the HTTP status.

        ``secret``: default the registered one, None for no header, or any string. ``envelope``
        wraps it in ``{"ok": true, "result": …}`` (receivers see both shapes); ``body`` sends raw
        bytes instead (e.g. something huge or not JSON)."""
        url = self.webhook["url"]
        if not url:
            raise RuntimeError("no webhook set")
        if secret is _UNSET:
            secret = self.webhook["secret_token"]
        headers = {SECRET_HEADER: secret} if secret is not None else {}
        payload = body if body is not None else json.dumps(
            {"ok": True, "result": update} if envelope else update).encode()
        async with (ClientSession(timeout=ClientTimeout(total=timeout)) as session,
                    session.post(url, data=payload, headers=headers | {"Content-Type": "application/json"})
                    as resp):
            await resp.read()
            status = resp.status
        self.webhook_deliveries.append((update, status))
        self._notify()
        return status

    # -- what the bot did --------------------------------------------------------------------
    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower() and (ok is None or c.ok == ok)]

    def sent(self, chat_id: str | None = None) -> list[Call]:
        """Successful sendMessage / sendPhoto calls (to ``chat_id``), in order."""
        return [c for c in self.calls if c.ok and c.method.lower() in ("sendmessage", "sendphoto")
                and (chat_id is None or c.chat_id == chat_id)]

    def texts(self, chat_id: str | None = None) -> list[str]:
        return [c.params.get("text") or c.params.get("caption") or "" for c in self.sent(chat_id)]

    async def wait_for(self, method: str, count: int = 1, timeout: float = 5.0,  # noqa: ASYNC109
                       predicate: Callable[[Call], bool] | None = None) -> list[Call]:
        def matching() -> list[Call]:
            return [c for c in self.calls_to(method, ok=True) if predicate is None or predicate(c)]

        if await self.wait_until(lambda: len(matching()) >= count, timeout):
            return matching()
        seen = Counter(c.method for c in self.calls)
        raise AssertionError(f"timed out waiting for {count} x {method}; got {len(matching())}; "
                             f"calls: {dict(seen)}; fake errors: {self.errors!r}")

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Re-check ``predicate`` on every call the fake answers, and every 20 ms (it may
        depend on the bot's own state), until true (True) or ``timeout`` (False)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return bool(predicate())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.02))
        return True

    # -- faults ------------------------------------------------------------------------------
    def fail_next(self, method: str, error_code: int = 429, *, http_status: int = 200, times: int = 1,
                  description: str | None = None, chat_id: str | None = None) -> None:
        """Answer the next ``times`` calls of ``method`` ("*" = any but getUpdates) with an error:
        ``ok:false`` + ``error_code`` inside ``http_status`` (200 by default, as Zalo does for most
        errors; pass e.g. 429 or 502 for a real HTTP error status)."""
        self._faults.append(_Fault(method.lower(), http_status, error_code,
                                   description or {429: "Quota exceeded", 403: "Forbidden",
                                                   401: "Unauthorized"}.get(error_code, "Internal error"),
                                   times, chat_id))

    def fail_every(self, method: str, n: int, error_code: int = 429, *, http_status: int = 200) -> None:
        """Also answer every ``n``-th call of ``method`` with an error (a steady trickle of faults,
        for benchmarks); ``n=0`` stops them all for that method."""
        if n:
            self._every.setdefault(method.lower(), []).append((n, error_code, http_status))
        else:
            self._every.pop(method.lower(), None)

    def delay(self, method: str, seconds: float) -> None:
        """Answer ``method`` ("*" = any but getUpdates) ``seconds`` late; 0 removes the delay."""
        if seconds:
            self._delays[method.lower()] = seconds
        else:
            self._delays.pop(method.lower(), None)

    def block_chat(self, chat_id: str) -> None:
        """Sending to this chat answers ok:false 403 (the user blocked or left the bot)."""
        self.blocked_chats.add(chat_id)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()
        self._every.clear()
        self.blocked_chats.clear()

    # -- HTTP --------------------------------------------------------------------------------
    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def _params(self, request: web.Request) -> JSONDict:
        params: JSONDict = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if not isinstance(body, dict):
                    raise _ApiError(400, "JSON object expected")
                params.update(body)
            else:
                params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        call = Call(method, {}, at=time.monotonic())
        try:
            call.params = await self._params(request)
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            func = self._methods.get(method.lower())
            if func is None:
                raise _ApiError(404, "Method not found")
            self._check_faults(method.lower(), call.params)
            result = func(call.params)
            if asyncio.iscoroutine(result):
                result = await result
            call.response = {"ok": True, "result": result}
        except _ApiError as exc:
            call.status, call.response = exc.http_status, exc.body()
        except Exception as exc:  # a bug in the fake: make it visible to the test
            self.errors.append(exc)
            call.status, call.response = 500, _ApiError(500, f"fake failed: {exc!r}").body()
        self.calls.append(call)
        self._notify()
        seconds = self._delays.get(method.lower()) or (
            self._delays.get("*", 0) if method.lower() != "getupdates" else 0)
        if seconds:
            await asyncio.sleep(seconds)
        return web.json_response(call.response, status=call.status)

    async def _serve_file(self, request: web.Request) -> web.Response:
        found = self._files.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], content_type=found[1])

    def _check_faults(self, method: str, params: JSONDict) -> None:
        self._counts[method] += 1
        for n, error_code, http_status in self._every.get(method, ()):
            if self._counts[method] % n == 0:
                raise _ApiError(error_code, "Quota exceeded" if error_code == 429 else "Internal error", http_status)
        for fault in self._faults:
            if (fault.method == method or (fault.method == "*" and method != "getupdates")) \
                    and fault.chat_id in (None, params.get("chat_id")):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                raise _ApiError(fault.error_code, fault.description, fault.http_status)
        if params.get("chat_id") in self.blocked_chats:
            raise _ApiError(403, "Forbidden: the user has blocked the bot")

    # -- methods -----------------------------------------------------------------------------
    async def _get_updates(self, p: JSONDict) -> JSONDict | None:
        if self.webhook["url"]:
            raise _ApiError(409, "Webhook is active; delete it before polling")
        try:
            wait = min(float(p.get("timeout", 30)), self.max_poll_seconds)
        except (TypeError, ValueError):
            raise _ApiError(400, "timeout must be a number") from None
        if await self.wait_until(lambda: bool(self._updates), wait):
            return self._updates.pop(0)
        if self.idle == "empty":
            return None
        raise _ApiError(408, "Request timeout")

    def _set_webhook(self, p: JSONDict) -> JSONDict:
        url, secret = str(p.get("url") or ""), p.get("secret_token")
        if not url.startswith(("https://", "http://")):
            raise _ApiError(400, "url is invalid")
        if not isinstance(secret, str) or not 8 <= len(secret) <= 256:
            raise _ApiError(400, "secret_token must be 8-256 characters")
        self.webhook = {"url": url, "secret_token": secret, "updated_at": int(time.time() * 1000)}
        return {"url": url, "updated_at": self.webhook["updated_at"]}

    def _delete_webhook(self, p: JSONDict) -> JSONDict:
        self.webhook = {"url": "", "secret_token": None, "updated_at": int(time.time() * 1000)}
        return {"url": "", "updated_at": self.webhook["updated_at"]}

    def _require_chat(self, p: JSONDict) -> None:
        if not isinstance(p.get("chat_id"), str) or not p["chat_id"]:
            raise _ApiError(400, "chat_id is required")

    def _sent(self) -> JSONDict:
        return {"message_id": secrets.token_hex(10) + str(next(self._message_ids)),
                "date": int(time.time() * 1000)}

    def _send_message(self, p: JSONDict) -> JSONDict:
        self._require_chat(p)
        text = p.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT:
            raise _ApiError(400, f"text must be 1-{MAX_TEXT} characters")
        return self._sent()

    def _send_photo(self, p: JSONDict) -> JSONDict:
        self._require_chat(p)
        if not str(p.get("photo") or "").startswith(("https://", "http://")):
            raise _ApiError(400, "photo must be a URL")
        if len(p.get("caption") or "") > MAX_TEXT:
            raise _ApiError(400, f"caption must be at most {MAX_TEXT} characters")
        return self._sent()

    def _send_sticker(self, p: JSONDict) -> JSONDict:
        self._require_chat(p)
        return self._sent()


class _ApiError(Exception):
    def __init__(self, error_code: int, description: str, http_status: int = 200) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.http_status = http_status

    def body(self) -> JSONDict:
        return {"ok": False, "error_code": self.error_code, "description": self.description}
