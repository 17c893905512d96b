"""The web chat at ``/chat``: the same handlers as every channel, in any phone's browser.

One small page (``bot/web/templates/chat.html``, ``static/chat.js``, ``static/chat.css``: no
framework, no CDN) talks to ``/chat/ws``, an aiohttp WebSocket. Protocol (JSON text frames):

- browser → docsach: ``{"type": "hello", "after": N}`` once per connection (N: the highest message id
  it has shown); ``{"type": "text", "text": …, "ref": R}``; ``{"type": "button", "payload": …,
  "label": …, "ref": R}``; ``{"type": "read", "upto": N}``. ``ref`` is the browser's own id for the
  message: sent again after a reconnect, it is recognised and not handled twice.
- docsach → browser: ``{"type": "message", "id": N, "mine": bool, "notice": bool, "unread": bool,
  "text": …, "buttons": [[{"label", "payload"|"url"}]], "photo": url, "file": {"name", "url"}}``
  (every message of the conversation, in id order, each once per connection; the browser also
  ignores ids it has shown); ``{"type": "ack", "ref": R}``; ``{"type": "error", "text": …}``;
  ``{"type": "rotate", "ticket": T}`` (the chat was linked: POST the ticket to ``/chat/rotate`` for
  a fresh session cookie, then reconnect); ``{"type": "reset"}`` (unlinked: reload for a new chat).

Everything said is stored (``services/webchat.py``) before it is sent, so a reload shows the
history, a dropped connection loses nothing, and pushed notices (``WebChannel.send``, called by the
outbox sweeper) wait as unread messages when the page is closed. Delivery to open pages goes
through one loop per process that also picks up messages other processes stored.

Security: the session cookie is signed, HttpOnly and SameSite=Lax; the socket and every POST check
Origin; POSTs need the page's CSRF token; messages, uploads and new sessions are rate-limited per
session and (generously) per address; text is inserted with ``textContent`` only, under a CSP
without inline scripts. A session acts only as its own chat identity; button payloads are signed
for that chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bot import web as webkit
from bot.channels.base import ChannelProfile, Delivery, Incoming, Reply
from services import photos, webchat
from services.common import DomainError
from services.patrons import resolve_actor

log = logging.getLogger(__name__)

CHANNEL = webchat.CHANNEL
MAX_FRAME = 16 * 1024               # one WebSocket message
MAX_TEXT = 2000                     # what a person may type in one message
MAX_UPLOAD = photos.MAX_BYTES
# (events, seconds): tight per session, generous per address (a school may share one address).
SESSION_LIMIT = (12, 10.0)
ADDRESS_LIMIT = (600, 60.0)
NEW_SESSIONS_PER_ADDRESS = (120, 60.0)
UPLOADS_PER_SESSION = (6, 60.0)
POLL_SECONDS = 1.0


def profile(base_url: str, *, public: bool = False) -> ChannelProfile:
    """``public``: the base is DOCSACH_PUBLIC_URL (reachable from phones), not the listen address."""
    base = base_url.rstrip("/")
    return ChannelProfile(name=CHANNEL, max_text=6000, max_input=MAX_TEXT, max_payload=64, buttons=True,
                          edits=False, toasts=False, photos=True, documents=True,
                          link_base=f"{base}/chat?start={{payload}}", home=f"{base}/chat", printable=public)


# -- replies as stored message bodies ------------------------------------------------------------

def body_of(reply: Reply) -> dict[str, Any]:
    rows = []
    for row in reply.buttons:
        out = []
        for b in row:
            if b.payload:
                out.append({"label": b.label[:120], "payload": b.payload})
            elif b.url and b.url.startswith(("https://", "http://")):
                out.append({"label": b.label[:120], "url": b.url})
        if out:
            rows.append(out)
    body: dict[str, Any] = {"text": reply.text or ""}
    if rows:
        body["buttons"] = rows
    if reply.photo and photos.is_ref(reply.photo):
        body["photo"] = reply.photo
    if reply.toast and not reply.text:
        body["text"] = reply.toast
    return body


def frame(message: webchat.StoredMessage) -> dict[str, Any]:
    body = message.body
    out: dict[str, Any] = {"type": "message", "id": message.id, "mine": not message.outgoing,
                           "notice": message.notice, "unread": message.notice and not message.read,
                           "text": body.get("text", ""), "at": message.created_at.isoformat() if message.created_at else None}
    if body.get("buttons"):
        out["buttons"] = body["buttons"]
    if body.get("photo"):
        out["photo"] = f"/chat/photo/{body['photo']}"
    if message.has_attachment:
        out["file"] = {"name": body.get("file_name", "file"), "url": f"/chat/file/{message.id}"}
    return out


# -- live connections ----------------------------------------------------------------------------

@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    session_id: int
    chat_key: str
    patron_id: int | None
    floor: int = 0          # the browser had every message up to this id when it said hello
    sent: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def push(self, message: webchat.StoredMessage, patron_id: int | None) -> None:
        if patron_id is not None and patron_id != self.patron_id:
            return   # about a patron this conversation is no longer linked to
        async with self.lock:
            if message.id <= self.floor or message.id in self.sent or self.ws.closed:
                return
            self.sent.add(message.id)
            if len(self.sent) > 2000:
                self.sent = set(sorted(self.sent)[-1000:])
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_json(frame(message))


class Hub:
    """Open pages by conversation, and the loop that brings each stored message to them."""

    def __init__(self, db) -> None:
        self.db = db
        self.connections: dict[str, set[Connection]] = {}
        self.cursor = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.cursor = await webchat.last_id(self.db)
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for group in list(self.connections.values()):
            for conn in list(group):
                with contextlib.suppress(Exception):
                    await conn.ws.close()

    def add(self, conn: Connection) -> None:
        self.cursor = max(self.cursor, conn.floor, max(conn.sent, default=0))
        self.connections.setdefault(conn.chat_key, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        group = self.connections.get(conn.chat_key)
        if group is not None:
            group.discard(conn)
            if not group:
                del self.connections[conn.chat_key]

    async def close_session(self, session_id: int, *, keep: Connection | None = None) -> None:
        for group in list(self.connections.values()):
            for conn in list(group):
                if conn.session_id == session_id and conn is not keep:
                    with contextlib.suppress(Exception):
                        await conn.ws.close(code=4401, message=b"session ended")

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            self.wake.clear()
            try:
                await self.deliver_new()
            except Exception:
                log.exception("web chat delivery loop failed; retrying")
                await asyncio.sleep(POLL_SECONDS)

    async def deliver_new(self) -> None:
        """Bring what was stored since the last look to the open pages. Nothing to do (and no
        query) while no page is open: a page that connects gets its history in ``hello``."""
        keys = list(self.connections)
        if not keys:
            return
        # A window behind the cursor: on PostgreSQL a lower id may commit after a higher one;
        # each connection skips what it already has (``Connection.floor`` / ``sent``).
        rows = await webchat.new_since(self.db, keys, max(0, self.cursor - 200))
        for chat_key, patron_id, message in rows:
            self.cursor = max(self.cursor, message.id)
            for conn in list(self.connections.get(chat_key, ())):
                await conn.push(message, patron_id)


class WebChannel:
    """Pushed notices into web conversations (the :class:`OutputChannel`): stored as unread
    messages and shown live on open pages. A web chat is never unreachable."""

    name = CHANNEL

    def __init__(self, db, hub: Hub) -> None:
        self.db = db
        self.hub = hub

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        patron_id = await webchat.linked_patron(self.db, chat_id)
        attachment = _attachment(reply)
        body = body_of(reply)
        if attachment:
            body["file_name"] = attachment[0]
        message_id = await webchat.append(self.db, chat_id, body, outgoing=True, patron_id=patron_id,
                                          notice=True, attachment=attachment)
        self.hub.wake.set()
        return Delivery(message_ref=str(message_id))


def _attachment(reply: Reply) -> tuple[str, str, bytes] | None:
    if reply.attachment is None:
        return None
    return reply.attachment.filename[:200], reply.attachment.mime_type[:100], reply.attachment.data


# -- the adapter ---------------------------------------------------------------------------------

class WebChatAdapter:
    """The web chat as a :class:`bot.channels.base.Channel` on the shared server."""

    name = CHANNEL
    messaging = False
    finished = None

    def __init__(self, app, *, base_url: str | None = None) -> None:
        self.app = app
        self.db = app.db
        self.secret = app.settings.secret_key
        self.base_url = base_url
        self.hub = Hub(app.db)
        self.channel = WebChannel(app.db, self.hub)
        self.limits = webkit.RateLimits()
        self.embed_origins = " ".join(getattr(app.settings, "embed_origins", None) or [])

    # -- lifecycle
    def mount(self, web_app: web.Application) -> None:
        webkit.setup(web_app)
        web_app.router.add_get("/chat", self.page)
        web_app.router.add_get("/chat/ws", self.socket)
        web_app.router.add_post("/chat/rotate", self.rotate)
        web_app.router.add_post("/chat/upload", self.upload)
        web_app.router.add_get("/chat/photo/{ref}", self.photo)
        web_app.router.add_get("/chat/file/{id}", self.file)

    async def start(self) -> None:
        public = self.app.settings.public_url
        base = public or self.base_url or self.app.deps.extras.get("server_url") or ""
        self.app.deps.channels[CHANNEL] = profile(base, public=bool(public))
        self.app.deps.outbound[CHANNEL] = self.channel
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()
        if self.app.deps.outbound.get(CHANNEL) is self.channel:
            del self.app.deps.outbound[CHANNEL]
        self.app.deps.channels.pop(CHANNEL, None)

    # -- sessions
    async def _session(self, request: web.Request) -> webchat.SessionView | None:
        found = webkit.read_session(self.secret, request.cookies.get(webkit.COOKIE))
        if found is None:
            return None
        return await webchat.session(self.db, *found)

    def _frame_ancestors(self) -> str:
        return "'self'" + (f" {self.embed_origins}" if self.embed_origins else "")

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The chat page. A browser without a valid session gets a new conversation."""
        session = await self._session(request)
        token = None
        if session is None or session.rotating:
            if not self.limits.allow("n:" + webkit.address(request), *NEW_SESSIONS_PER_ADDRESS):
                t = webkit.translator(request, self.app)
                return web.Response(status=429, text=t("web.too_many_sessions"))
            session, token = await webchat.new_session(self.db, self.app.deps.clock)
        lang = webkit.language(request, self.app.deps.default_language)
        t = self.app.deps.catalogs.translator(lang, self.app.deps.timezone)
        start = request.query.get("start", "")
        first: list[str] = []
        if request.query.get("lang") in ("vi", "en"):     # a choice: the chat follows it
            first.append(f"/language {request.query['lang']}")
        if start and len(start) <= 64 and start.replace("_", "").replace("-", "").isalnum():
            first.append(f"/start {start}")
        response = webkit.render(request, "chat.html", {
            "t": t, "lang": lang, "csrf": webkit.csrf_token(self.secret, session.id),
            "first": json.dumps(first), "other_lang": "en" if lang == "vi" else "vi",
            "max_text": MAX_TEXT,
        }, frame_ancestors=self._frame_ancestors())
        if token is not None:
            webkit.set_cookie(response, request, webkit.COOKIE, webkit.sign_session(self.secret, session.id, token),
                              public_url=self.app.settings.public_url)
        if request.query.get("lang") in ("vi", "en"):
            webkit.set_cookie(response, request, webkit.LANG_COOKIE, request.query["lang"],
                              public_url=self.app.settings.public_url)
        return response

    async def rotate(self, request: web.Request) -> web.Response:
        """Swap the cookie after linking (the ticket came down the socket that linked)."""
        found = webkit.read_session(self.secret, request.cookies.get(webkit.COOKIE))
        if found is None or not webkit.origin_allowed(request, self.app.settings.public_url) \
                or not webkit.check_csrf(request, self.secret, found[0]):
            return web.json_response({"ok": False}, status=403)
        try:
            ticket = str((await request.json()).get("ticket", ""))[:64]
        except (ValueError, AttributeError):
            return web.json_response({"ok": False}, status=400)
        rotated = await webchat.rotate(self.db, found[0], found[1], ticket, self.app.deps.clock)
        if rotated is None:
            return web.json_response({"ok": False}, status=403)
        session, token = rotated
        await self.hub.close_session(found[0])
        response = web.json_response({"ok": True, "csrf": webkit.csrf_token(self.secret, session.id)})
        webkit.set_cookie(response, request, webkit.COOKIE, webkit.sign_session(self.secret, session.id, token),
                          public_url=self.app.settings.public_url)
        return response

    # -- the socket
    async def socket(self, request: web.Request) -> web.StreamResponse:
        if not webkit.origin_allowed(request, self.app.settings.public_url):
            log.warning("web chat socket from a foreign origin %r refused", request.headers.get("Origin", "")[:80])
            return web.Response(status=403, text="forbidden")
        session = await self._session(request)
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=25)
        await ws.prepare(request)
        if session is None or session.rotating:
            await ws.close(code=4401, message=b"no session")
            return ws
        linked = await webchat.linked_patron(self.db, session.chat_key)
        if session.patron_id is not None and linked != session.patron_id:
            # Staff unlinked this chat (or the card was deactivated): the session ends with it.
            await webchat.revoke(self.db, session_id=session.id, clock=self.app.deps.clock)
            await ws.send_json({"type": "reset"})
            await ws.close()
            return ws
        conn = Connection(ws, session.id, session.chat_key, linked)
        t = webkit.translator(request, self.app)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.ERROR:
                        break
                    continue
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError
                except ValueError:
                    await ws.send_json({"type": "error", "text": t("web.bad_message")})
                    continue
                if not await self._handle(request, conn, data, t):
                    break
        finally:
            self.hub.remove(conn)
        return ws

    async def _handle(self, request: web.Request, conn: Connection, data: dict[str, Any], t) -> bool:
        kind = data.get("type")
        if kind == "hello":
            after = data.get("after") if isinstance(data.get("after"), int) else 0
            conn.floor = max(0, after)
            for message in await webchat.history(self.db, conn.chat_key, conn.patron_id, after=conn.floor):
                await conn.push(message, None)
            self.hub.add(conn)      # from here on, new messages come live (none missed: see deliver_new)
            await conn.ws.send_json({"type": "ready"})
            return True
        if conn not in self.hub.connections.get(conn.chat_key, ()):
            await conn.ws.send_json({"type": "error", "text": t("web.bad_message")})
            return True
        if kind == "read":
            upto = data.get("upto")
            if isinstance(upto, int):
                await webchat.mark_read(self.db, conn.chat_key, upto, self.app.deps.clock)
            return True
        if kind not in ("text", "button"):
            await conn.ws.send_json({"type": "error", "text": t("web.bad_message")})
            return True
        ref = str(data.get("ref", ""))[:40] or None
        if not (self.limits.allow(f"s:{conn.session_id}", *SESSION_LIMIT)
                and self.limits.allow("a:" + webkit.address(request), *ADDRESS_LIMIT)):
            await conn.ws.send_json({"type": "error", "text": t("web.slow_down"), "ref": ref})
            return True
        if kind == "text":
            text = data.get("text")
            if not isinstance(text, str) or not text.strip():
                await conn.ws.send_json({"type": "ack", "ref": ref})
                return True
            if len(text) > MAX_TEXT:
                await conn.ws.send_json({"type": "error", "text": t("web.too_long", limit=MAX_TEXT), "ref": ref})
                return True
            body = {"text": text}
            event = Incoming(channel=CHANNEL, chat_id=conn.chat_key, user_id=conn.chat_key, text=text,
                             language_hint=webkit.language(request, self.app.deps.default_language),
                             source="ip:" + webkit.address(request))   # link-code guesses: per address too
        else:
            payload = data.get("payload")
            if not isinstance(payload, str) or len(payload) > 128:
                await conn.ws.send_json({"type": "error", "text": t("web.bad_message"), "ref": ref})
                return True
            label = str(data.get("label", ""))[:120]
            body = {"text": label, "pressed": True}
            event = Incoming(channel=CHANNEL, chat_id=conn.chat_key, user_id=conn.chat_key, button=payload,
                             language_hint=webkit.language(request, self.app.deps.default_language))
        stored = await webchat.append(self.db, conn.chat_key, body, outgoing=False, patron_id=conn.patron_id,
                                      client_ref=ref)
        await conn.ws.send_json({"type": "ack", "ref": ref})
        if stored is None:
            return True   # sent again after a reconnect: handled the first time
        self.hub.wake.set()
        return await self._dispatch(conn, event)

    async def _dispatch(self, conn: Connection, event: Incoming) -> bool:
        """Run the router, store its replies, and follow a change of link (rotate or reset)."""
        before = conn.patron_id
        replies = await self.app.router.dispatch(event)
        after = await webchat.linked_patron(self.db, conn.chat_key)
        for reply in replies:
            await self._store_reply(conn.chat_key, after if after is not None else before, reply)
        if before is None and after is not None:
            conn.patron_id = after      # this socket linked the chat: it may see the answer
        await self.hub.deliver_new()
        if before is None and after is not None:
            ticket = await webchat.arm_rotation(self.db, conn.session_id)
            await self.hub.close_session(conn.session_id, keep=conn)
            await conn.ws.send_json({"type": "rotate", "ticket": ticket})
            await conn.ws.close()
            return False
        if before is not None and after != before:
            await webchat.revoke(self.db, session_id=conn.session_id, clock=self.app.deps.clock)
            await self.hub.close_session(conn.session_id, keep=conn)
            await conn.ws.send_json({"type": "reset"})
            await conn.ws.close()
            return False
        return True

    # -- uploads and files
    async def upload(self, request: web.Request) -> web.Response:
        """A photo for a reflection (multipart field ``photo``), as if sent in the chat."""
        session = await self._session(request)
        t = webkit.translator(request, self.app)
        if session is None or session.rotating or not webkit.origin_allowed(request, self.app.settings.public_url) \
                or not webkit.check_csrf(request, self.secret, session.id):
            return web.json_response({"ok": False, "text": t("web.session_ended")}, status=403)
        if not self.limits.allow(f"u:{session.id}", *UPLOADS_PER_SESSION):
            return web.json_response({"ok": False, "text": t("web.slow_down")}, status=429)
        if (request.content_length or 0) > MAX_UPLOAD + 64 * 1024:
            return web.json_response({"ok": False, "text": t("photos.too_large", limit=MAX_UPLOAD // 2**20)},
                                     status=413)
        data = b""
        try:
            reader = await request.multipart()
            async for part in reader:
                if getattr(part, "name", None) == "photo":
                    data = await part.read(decode=False)
                    break
        except (ValueError, AssertionError):
            return web.json_response({"ok": False, "text": t("web.bad_message")}, status=400)
        try:
            ref = await self.app.deps.photos.store(bytes(data))
        except DomainError as refusal:
            return web.json_response({"ok": False, "text": t(refusal.key, **refusal.params)}, status=400)
        patron_id = await webchat.linked_patron(self.db, session.chat_key)
        await webchat.append(self.db, session.chat_key, {"text": "", "photo": ref}, outgoing=False,
                             patron_id=patron_id)
        event = Incoming(channel=CHANNEL, chat_id=session.chat_key, user_id=session.chat_key, photo_ref=ref,
                         language_hint=webkit.language(request, self.app.deps.default_language))
        for reply in await self.app.router.dispatch(event):
            await self._store_reply(session.chat_key, patron_id, reply)
        self.hub.wake.set()
        return web.json_response({"ok": True})

    async def _store_reply(self, chat_key: str, patron_id: int | None, reply: Reply) -> None:
        attachment = _attachment(reply)
        body = body_of(reply)
        if attachment:
            body["file_name"] = attachment[0]
        await webchat.append(self.db, chat_key, body, outgoing=True, patron_id=patron_id, attachment=attachment)

    async def photo(self, request: web.Request) -> web.StreamResponse:
        """A stored photo, for this conversation's own uploads or what its holder may see."""
        session = await self._session(request)
        ref = request.match_info["ref"]
        if session is None or not photos.is_ref(ref):
            raise web.HTTPNotFound()
        patron_id = await webchat.linked_patron(self.db, session.chat_key)
        allowed = any(m.body.get("photo") == ref for m in
                      await webchat.history(self.db, session.chat_key, patron_id, limit=500))
        if not allowed:
            actor = await resolve_actor(self.db, CHANNEL, session.chat_key, session.chat_key)
            allowed = await photos.may_view(self.db, actor, ref)
        stored = await self.app.deps.photos.load(ref) if allowed else None
        if stored is None:
            raise web.HTTPNotFound()
        return web.Response(body=stored.data, content_type=stored.mime_type,
                            headers={"Cache-Control": "private, max-age=86400"})

    async def file(self, request: web.Request) -> web.StreamResponse:
        session = await self._session(request)
        message_id = request.match_info["id"]
        if session is None or not message_id.isdigit() or len(message_id) > 12:
            raise web.HTTPNotFound()
        patron_id = await webchat.linked_patron(self.db, session.chat_key)
        found = await webchat.attachment(self.db, session.chat_key, patron_id, int(message_id))
        if found is None:
            raise web.HTTPNotFound()
        name, mime, data = found
        safe = "".join(ch for ch in name if ch.isalnum() or ch in "._-") or "file"
        return web.Response(body=data, content_type=mime, headers={
            "Content-Disposition": f'attachment; filename="{safe}"', "Cache-Control": "private, no-store"})


def configure(app, options) -> WebChatAdapter:
    host = f"[{options.host}]" if ":" in options.host else options.host
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return WebChatAdapter(app, base_url=f"http://{host}:{options.port}")


