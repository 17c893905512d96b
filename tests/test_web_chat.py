"""The web chat protocol and the QR landing pages, through aiohttp's test client on the real
server (both databases): sessions, Origin and CSRF checks, resume without loss or repeat, linking
with rotation, pushed notices live and unread, uploads, files and who may see what."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import segno
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from bot.app import App
from bot.channels.base import Reply
from bot.channels.web import SESSION_LIMIT, WebChatAdapter
from bot.server import Server
from services import accounts, webchat
from services.models import Title, WebMessage, WebSession


class Client:
    """A cookie jar and requests against the test server (closing it leaves the server up)."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    def get(self, path: str, **kw):
        return self.session.get(self.server.make_url(path), **kw)

    def post(self, path: str, **kw):
        return self.session.post(self.server.make_url(path), **kw)

    def ws_connect(self, path: str, **kw):
        return self.session.ws_connect(self.server.make_url(path), **kw)

    async def start_server(self) -> None:
        pass

    async def close(self) -> None:
        await self.session.close()


class Browser:
    """One browser: its own cookie jar, speaking the page's protocol."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.client = Client(server)
        self.origin = str(server.make_url("")).rstrip("/")
        self.csrf = ""
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seen: dict[int, dict] = {}
        self.frames: list[dict] = []

    async def open(self, path: str = "/chat") -> str:
        response = await self.client.get(path)
        html = await response.text()
        assert response.status == 200, html
        self.csrf = html.split('name="csrf" content="', 1)[1].split('"', 1)[0]
        return html

    async def connect(self, after: int | None = None) -> None:
        self.ws = await self.client.ws_connect("/chat/ws", headers={"Origin": self.origin})
        await self.ws.send_json({"type": "hello", "after": max(self.seen, default=0) if after is None else after})
        await self.until(lambda f: f["type"] == "ready")

    async def until(self, done, timeout: float = 10.0) -> dict:  # noqa: ASYNC109
        """Read frames until ``done(frame)``; remembers every message by id."""
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    frame = {"type": "closed", "code": self.ws.close_code}
                else:
                    frame = json.loads(msg.data)
                self.frames.append(frame)
                if frame.get("type") == "message":
                    assert frame["id"] not in self.seen, f"message {frame['id']} arrived twice"
                    self.seen[frame["id"]] = frame
                if done(frame):
                    return frame
                if frame["type"] == "closed":
                    raise AssertionError(f"socket closed ({frame['code']}) before the expected frame")

    async def say(self, text: str, ref: str | None = None) -> dict:
        """Send text; return docsach's first reply to it."""
        count = len(self.bot_messages())
        await self.ws.send_json({"type": "text", "text": text, "ref": ref or f"r{len(self.frames)}-{text[:8]}"})
        await self.until(lambda f: f["type"] == "message" and not f["mine"] and len(self.bot_messages()) > count)
        return self.bot_messages()[count]

    async def press(self, label_part: str) -> dict:
        button = next(b for m in reversed(self.bot_messages()) for row in m.get("buttons", []) for b in row
                      if label_part in b["label"] and "payload" in b)
        count = len(self.bot_messages())
        await self.ws.send_json({"type": "button", "payload": button["payload"], "label": button["label"],
                                 "ref": f"b{len(self.frames)}"})
        await self.until(lambda f: f["type"] == "message" and not f["mine"] and len(self.bot_messages()) > count)
        return self.bot_messages()[count]

    def bot_messages(self) -> list[dict]:
        return [m for _, m in sorted(self.seen.items()) if not m["mine"]]

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        await self.client.close()


@pytest.fixture
async def site(demo_app: App) -> AsyncIterator[tuple[App, TestServer, WebChatAdapter]]:
    server = Server(demo_app)
    adapter = WebChatAdapter(demo_app)
    server.mount([adapter])
    server.mount_configured()
    test_server = TestServer(server.web_app)
    await test_server.start_server()
    adapter.base_url = str(test_server.make_url("")).rstrip("/")
    await adapter.start()
    try:
        yield demo_app, test_server, adapter
    finally:
        await adapter.stop()
        await test_server.close()


@pytest.fixture
async def browser(site) -> AsyncIterator[Browser]:
    b = Browser(site[1])
    await b.client.start_server()
    yield b
    await b.close()


async def second_browser(site) -> Browser:
    b = Browser(site[1])
    await b.client.start_server()
    return b


async def code_for(app: App, card: str) -> str:
    operator = await accounts.operator_actor(app.db, "demo")
    async with app.db.session() as s:
        from services.models import Patron

        patron_id = (await s.execute(select(Patron.id).where(Patron.card_number == card))).scalar_one()
    [issued] = await accounts.issue_link_codes(app.db, operator, patron_ids=[patron_id], clock=app.deps.clock,
                                               key=app.deps.link_code_key)
    return issued.code


async def test_page_cookie_and_headers(browser: Browser):
    response = await browser.client.get("/chat")
    assert response.status == 200
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "docsach_chat=" in cookie
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    html = await response.text()
    assert "<script src=\"/static/chat.js" in html and "<script>" not in html
    total = len(html.encode())
    for asset in ("/static/chat.js", "/static/docsach.css"):
        r = await browser.client.get(asset)
        assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
        total += len(await r.read())
    assert total < 40_000        # the first view, uncompressed (the target is 150 KB transferred)


async def test_socket_checks_origin_and_session(site, browser: Browser):
    await browser.open()
    refused = await browser.client.get("/chat/ws", headers={
        "Origin": "https://evil.example", "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert refused.status == 403
    stranger = await second_browser(site)       # no cookie at all
    try:
        ws = await stranger.client.ws_connect("/chat/ws", headers={"Origin": stranger.origin})
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 4401
    finally:
        await stranger.close()


async def test_anonymous_search_card_resume_without_loss_or_repeat(site, browser: Browser):
    app = site[0]
    await browser.open()
    await browser.connect()
    results = await browser.say("khi ao anh bien mat", ref="q1")
    assert "Khi ảo ảnh biến mất" in results["text"] and results["buttons"]
    card = await browser.press("Khi ảo ảnh")
    assert card["text"].startswith("📖") and "Hoàng, Chí Kiên" in card["text"]

    # The network drops; the page re-sends the same message (same ref) after reconnecting.
    await browser.ws.close()
    last = max(browser.seen)
    mark = len(browser.frames)
    await browser.connect(after=last)
    await browser.ws.send_json({"type": "text", "text": "khi ao anh bien mat", "ref": "q1"})
    await browser.until(lambda f: f["type"] == "ack" and f["ref"] == "q1")
    await asyncio.sleep(0.3)
    assert not [f for f in browser.frames[mark:] if f["type"] == "message"]   # nothing new, nothing repeated
    async with app.db.session() as s:
        typed = (await s.execute(select(WebMessage).where(WebMessage.client_ref == "q1"))).scalars().all()
    assert len(typed) == 1

    # A reload shows the whole history again, in order.
    fresh = Browser(site[1])
    fresh.client = browser.client
    await fresh.connect(after=0)
    assert sorted(fresh.seen) == sorted(browser.seen)


async def test_catalog_fields_are_escaped_on_the_landing_page(site, browser: Browser):
    app = site[0]
    async with app.db.transaction() as s:
        title = Title(source_key="test:xss", title='<script>alert("x")</script> Sách', authors="<b>Ai</b>")
        s.add(title)
        await s.flush()
        title_id = title.id
    response = await browser.client.get(f"/b/t{title_id}")
    html = await response.text()
    assert response.status == 200
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<b>Ai</b>" not in html and "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert 'href="/chat?start=t' in html
    missing = await browser.client.get("/b/t999999")
    assert missing.status == 404 and "không dẫn tới" in await missing.text()
    bad = await browser.client.get("/b/../../etc")
    assert bad.status == 404


async def test_linking_rotates_the_session_and_a_second_browser_sees_nothing(site, browser: Browser):
    app = site[0]
    await browser.open()
    await browser.connect()
    old_cookie = browser.client.session.cookie_jar.filter_cookies(browser.server.make_url("/"))["docsach_chat"].value
    code = await code_for(app, "HS001")
    await browser.ws.send_json({"type": "text", "text": code, "ref": "link1"})
    rotate = await browser.until(lambda f: f["type"] == "rotate")
    linked = [m for m in browser.bot_messages() if "Nguyễn Văn An" in m["text"]]
    assert linked, browser.frames

    # Without the CSRF token, or with another ticket, no new session.
    assert (await browser.client.post("/chat/rotate", json={"ticket": rotate["ticket"]},
                                      headers={"Origin": browser.origin})).status == 403
    assert (await browser.client.post("/chat/rotate", json={"ticket": "guess"},
                                      headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})).status == 403
    swapped = await browser.client.post("/chat/rotate", json={"ticket": rotate["ticket"]},
                                        headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})
    assert swapped.status == 200
    browser.csrf = (await swapped.json())["csrf"]
    new_cookie = browser.client.session.cookie_jar.filter_cookies(browser.server.make_url("/"))["docsach_chat"].value
    assert new_cookie != old_cookie
    await browser.connect()
    loans = await browser.say("/loans")
    assert "Truyện" in loans["text"] or "mượn" in loans["text"].lower()

    # The old cookie (e.g. planted before linking) opens nothing any more.
    thief = await second_browser(site)
    try:
        thief.client.session.cookie_jar.update_cookies({"docsach_chat": old_cookie})
        ws = await thief.client.ws_connect("/chat/ws", headers={"Origin": thief.origin})
        await ws.receive()
        assert ws.close_code == 4401
        # A browser of its own sees an empty conversation and cannot see the loans.
        await thief.open()
        await thief.connect(after=0)
        assert not thief.seen
        reply = await thief.say("/loans")
        assert "Nguyễn Văn An" not in reply["text"] and ("liên kết" in reply["text"] or "link" in reply["text"])
        message_id = max(browser.seen)
        assert (await thief.client.get(f"/chat/file/{message_id}")).status == 404
    finally:
        await thief.close()
    async with app.db.session() as s:
        sessions = (await s.execute(select(WebSession).order_by(WebSession.id))).scalars().all()
    assert sessions[0].revoked_at is not None and sessions[1].patron_id is not None


async def test_pushed_notices_arrive_live_and_wait_unread(site, browser: Browser):
    app, _, adapter = site
    await browser.open()
    await browser.connect()
    chat_key = (await _only_session(app)).chat_key
    delivery = await app.deps.outbound["web"].send(chat_key, Reply("📚 Sách em đặt đã có!"))
    live = await browser.until(lambda f: f["type"] == "message" and f.get("notice"))
    assert live["unread"] and live["text"] == "📚 Sách em đặt đã có!" and delivery.message_ref == str(live["id"])
    await browser.ws.close()
    # Sent while the page is closed: waits as unread, shown once when the student comes back.
    await app.deps.outbound["web"].send(chat_key, Reply("⏰ Sắp đến hạn trả"))
    await browser.connect()
    waiting = [m for m in browser.seen.values() if m["text"] == "⏰ Sắp đến hạn trả"]
    assert len(waiting) == 1 and waiting[0]["unread"]
    await browser.ws.send_json({"type": "read", "upto": max(browser.seen)})
    await asyncio.sleep(0.2)
    async with app.db.session() as s:
        unread = (await s.execute(select(WebMessage).where(WebMessage.notice.is_(True),
                                                           WebMessage.read_at.is_(None)))).scalars().all()
    assert unread == []


async def _only_session(app: App) -> WebSession:
    async with app.db.session() as s:
        return (await s.execute(select(WebSession).order_by(WebSession.id.desc()))).scalars().first()


async def test_limits_and_bad_input_get_friendly_replies(site, browser: Browser):
    await browser.open()
    await browser.connect()
    await browser.ws.send_str("not json")
    error = await browser.until(lambda f: f["type"] == "error")
    assert "tải lại" in error["text"] or "reload" in error["text"]
    await browser.ws.send_json({"type": "text", "text": "a" * 2001, "ref": "long"})
    error = await browser.until(lambda f: f["type"] == "error" and f.get("ref") == "long")
    assert "2000" in error["text"]
    for n in range(SESSION_LIMIT[0] + 1):
        await browser.ws.send_json({"type": "text", "text": f"sach {n}", "ref": f"flood{n}"})
    error = await browser.until(lambda f: f["type"] == "error" and ("nhanh" in f["text"] or "fast" in f["text"]),
                                timeout=30)
    assert error["text"]
    await browser.ws.send_str("x" * (17 * 1024))                     # over the frame limit: the socket closes
    closed = await browser.until(lambda f: f["type"] == "closed")
    assert closed["code"] == 1009


async def test_photo_upload_is_stored_and_private(site, browser: Browser):
    await browser.open()
    await browser.connect()
    out = io.BytesIO()
    segno.make("trang viết tay").save(out, kind="png", scale=3)
    form = aiohttp.FormData()
    form.add_field("photo", out.getvalue(), filename="page.png", content_type="image/png")
    refused = await browser.client.post("/chat/upload", data=form, headers={"Origin": browser.origin})
    assert refused.status == 403
    form = aiohttp.FormData()
    form.add_field("photo", out.getvalue(), filename="page.png", content_type="image/png")
    sent = await browser.client.post("/chat/upload", data=form,
                                     headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})
    assert sent.status == 200 and (await sent.json())["ok"]
    mine = await browser.until(lambda f: f["type"] == "message" and f["mine"] and f.get("photo"))
    assert (await browser.client.get(mine["photo"])).status == 200
    not_photo = aiohttp.FormData()
    not_photo.add_field("photo", b"%PDF-1.4", filename="x.pdf", content_type="image/png")
    bad = await browser.client.post("/chat/upload", data=not_photo,
                                    headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})
    assert bad.status == 400 and "ảnh" in (await bad.json())["text"]
    other = await second_browser(site)
    try:
        await other.open()
        assert (await other.client.get(mine["photo"])).status == 404
    finally:
        await other.close()


async def test_unlink_ends_the_session_and_hides_the_history(site, browser: Browser):
    app = site[0]
    await browser.open()
    await browser.connect()
    await browser.ws.send_json({"type": "text", "text": await code_for(app, "HS002"), "ref": "l"})
    rotate = await browser.until(lambda f: f["type"] == "rotate")
    swapped = await browser.client.post("/chat/rotate", json={"ticket": rotate["ticket"]},
                                        headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})
    browser.csrf = (await swapped.json())["csrf"]
    await browser.connect()
    await browser.say("/unlink")
    await browser.press("")          # the confirmation's first button unlinks
    await browser.until(lambda f: f["type"] == "reset")
    chat_key = (await _only_session(app)).chat_key
    assert await webchat.linked_patron(app.db, chat_key) is None
    history = await webchat.history(app.db, chat_key, None)
    assert all(m.body.get("text", "").find("Trần") < 0 for m in history)   # nothing about the patron is shown


async def test_staff_unlink_ends_the_web_session(site, browser: Browser):
    app = site[0]
    await browser.open()
    await browser.connect()
    await browser.ws.send_json({"type": "text", "text": await code_for(app, "HS003"), "ref": "l"})
    rotate = await browser.until(lambda f: f["type"] == "rotate")
    swapped = await browser.client.post("/chat/rotate", json={"ticket": rotate["ticket"]},
                                        headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})
    assert swapped.status == 200
    await browser.connect()
    holds = await browser.say("/holds")
    assert holds["text"]
    await browser.ws.close()
    from services.patrons import link_trusted, resolve_actor

    librarian = await link_trusted(app.db, await resolve_actor(app.db, "test", "TT001", "TT001"), "demo", "TT001")
    assert await accounts.unlink(app.db, librarian, card="HS003", clock=app.deps.clock) == 1
    browser.ws = await browser.client.ws_connect("/chat/ws", headers={"Origin": browser.origin})
    await browser.ws.send_json({"type": "hello", "after": 0})
    assert (await browser.until(lambda f: f["type"] == "reset"))["type"] == "reset"
    again = await browser.client.get("/chat")       # a fresh, anonymous conversation
    assert again.status == 200 and "docsach_chat=" in again.headers.get("Set-Cookie", "")


async def test_a_librarian_downloads_the_slips_pdf(site, browser: Browser):
    app = site[0]
    await browser.open()
    await browser.connect()
    await browser.ws.send_json({"type": "text", "text": await code_for(app, "TT001"), "ref": "l"})
    rotate = await browser.until(lambda f: f["type"] == "rotate")
    swapped = await browser.client.post("/chat/rotate", json={"ticket": rotate["ticket"]},
                                        headers={"Origin": browser.origin, "X-CSRF-Token": browser.csrf})
    assert swapped.status == 200
    await browser.connect()
    reply = await browser.say("/codes 10A1")
    assert reply.get("file") and reply["file"]["name"].endswith(".pdf")
    pdf = await browser.client.get(reply["file"]["url"])
    assert pdf.status == 200 and (await pdf.read()).startswith(b"%PDF")
    assert "attachment" in pdf.headers["Content-Disposition"]
    other = await second_browser(site)
    try:
        await other.open()
        assert (await other.client.get(reply["file"]["url"])).status == 404
    finally:
        await other.close()


async def test_landing_offers_the_configured_messaging_apps(site, browser: Browser):
    from bot.channels import telegram

    app = site[0]
    html = await (await browser.client.get("/b/l1")).text()
    assert "t.me" not in html and 'href="/chat?start=l1"' in html          # only "here" without Telegram
    app.deps.channels["telegram"] = telegram.profile("docsach_bot")
    response = await browser.client.get("/b/t1?lang=en")
    html = await response.text()
    assert 'href="https://t.me/docsach_bot?start=t1"' in html and "Open in Telegram" in html
    assert 'href="/chat?start=t1&amp;lang=en"' in html
    link = await (await browser.client.get("/b/kABCD2345")).text()
    assert "Phiếu liên kết" in link or "link slip" in link


async def test_link_code_slips_name_the_school_expiry_and_how_to(site):
    import pypdfium2
    import zxingcpp

    from handlers.account import slips_pdf
    from services import catalog

    app = site[0]
    app.deps.public_url = "https://thuvien.example.vn"
    operator = await accounts.operator_actor(app.db, "demo")
    issued = await accounts.issue_link_codes(app.db, operator, class_name="10A1", clock=app.deps.clock,
                                             key=app.deps.link_code_key)
    t = app.deps.catalogs.translator("vi", app.deps.timezone)
    pdf = await slips_pdf(issued, link=app.deps.printed_link, t=t,
                          school=await catalog.library_name(app.db, operator.library_id))
    [page] = list(pypdfium2.PdfDocument(pdf))
    text = page.get_textpage().get_text_range()
    expiry = t.date(issued[0].expires_at, "dd/MM/yyyy")
    assert "Trường THPT Demo Lào Cai" in text and f"Hết hạn: {expiry}" in text and "Quét mã QR" in text
    codes = {r.text for r in zxingcpp.read_barcodes(page.render(scale=3).to_pil(),
                                                    formats=zxingcpp.BarcodeFormat.QRCode)}
    assert codes == {f"https://thuvien.example.vn/b/{i.payload}" for i in issued}
