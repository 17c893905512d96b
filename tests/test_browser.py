"""The web chat in a real browser (Playwright driving Debian's Chromium, a phone-sized screen), as
a new student would meet it: scan a printed QR label, see the book, link with a code, reserve, and
watch the hold-ready notice arrive live when the librarian takes the copy back; reload; and a
second browser that cannot see the student's loans. In Vietnamese and in English.

Skipped with a message when Chromium or Playwright is missing; ``DOCSACH_REQUIRE_BROWSER=1``
(set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pypdfium2
import pytest
import zxingcpp
from sqlalchemy import func, select

from bot.app import App
from bot.channels.web import WebChatAdapter
from bot.scheduler import Sweeper
from bot.server import Server
from services import accounts, circulation
from services.models import Copy, CopyStatus, Patron

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DOCSACH_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(os.environ.get("DOCSACH_SCREENSHOTS", ROOT / ".screenshots"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]

TEXTS = {
    "vi": {"here": "Trò chuyện ngay tại đây", "copies": "cuốn đang có trên giá", "linked": "Đã liên kết",
           "reserve": "Đặt trước", "queued": "thứ 1", "ready": "đã sẵn sàng", "needs_link": "liên kết thẻ"},
    "en": {"here": "Chat right here", "copies": "copies on the shelf", "linked": "Linked!",
           "reserve": "Reserve", "queued": "number 1", "ready": "is ready for you", "needs_link": "link your library card"},
}


def _browser_or_skip():
    reason = None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        reason = "Playwright is not installed (pip install -e '.[dev]')"
        async_playwright = None
    if reason is None and not CHROMIUM.exists():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium): browser tests skipped"
    if reason is not None:
        if os.environ.get("DOCSACH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DOCSACH_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return async_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_label(pdf: Path) -> str:
    [page] = list(pypdfium2.PdfDocument(pdf.read_bytes()))
    [found] = zxingcpp.read_barcodes(page.render(scale=3).to_pil(), formats=zxingcpp.BarcodeFormat.QRCode)
    return found.text


async def _setup_library(app: App) -> tuple[int, str, str]:
    """A one-copy book lent to another pupil (so it must be reserved), and a loan of An's own."""
    operator = await accounts.operator_actor(app.db, "demo")
    async with app.db.session() as s:
        single = (await s.execute(
            select(Copy.title_id).where(Copy.status == CopyStatus.AVAILABLE).group_by(Copy.title_id)
            .having(func.count(Copy.id) == 1).order_by(Copy.title_id).limit(2))).scalars().all()
        copies = {t: (await s.execute(select(Copy.id).where(Copy.title_id == t))).scalar_one() for t in single}
        an = (await s.execute(select(Patron.id).where(Patron.card_number == "HS001"))).scalar_one()
    wanted, own = single
    await circulation.check_out(app.db, operator, copies[wanted], "HS002", clock=app.deps.clock)
    own_loan = await circulation.check_out(app.db, operator, copies[own], "HS001", clock=app.deps.clock)
    [code] = await accounts.issue_link_codes(app.db, operator, patron_ids=[an], clock=app.deps.clock,
                                             key=app.deps.link_code_key)
    return copies[wanted], code.code, own_loan.title


async def _print_label(app: App, copy_id: int, public_url: str, out: Path) -> None:
    """``docsach qr`` as a librarian runs it, in its own process, against the same database."""
    env = dict(os.environ, DOCSACH_DATABASE_URL=app.settings.database_url, DOCSACH_PUBLIC_URL=public_url,
               DOCSACH_SECRET_KEY="test-secret", TELEGRAM_BOT_TOKEN="", DOCSACH_LOG_LEVEL="WARNING")
    async with app.db.session() as s:
        title_id = (await s.execute(select(Copy.title_id).where(Copy.id == copy_id))).scalar_one()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "qr", "--copies", "--title-ids", str(title_id), "--out", str(out),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()


@pytest.mark.parametrize("lang", ["vi", "en"])
async def test_new_student_journey_in_a_phone_browser(demo_app: App, tmp_path, lang: str):
    async_playwright = _browser_or_skip()
    app = demo_app
    words = TEXTS[lang]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app.settings.public_url = base
    app.deps.public_url = base
    server = Server(app, "127.0.0.1", port)
    adapter = WebChatAdapter(app, base_url=base)
    server.mount([adapter])
    server.mount_configured()
    await server.start()
    await adapter.start()
    SHOTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    copy_id, code, own_title = await _setup_library(app)
    label = tmp_path / "label.pdf"
    await _print_label(app, copy_id, base, label)
    url = decode_label(label)
    assert url == f"{base}/b/c{copy_id}"
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            phone = dict(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                         has_touch=True, locale="vi-VN")      # a Vietnamese phone; English is a choice
            student = await browser.new_context(**phone)
            page = await student.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # 1. The scanned QR opens the landing page: the book card, right in the browser.
            await page.goto(url)
            if lang == "en":     # the student picks English in the header (the chat follows)
                await page.click("header .lang")
            assert words["copies"] in await page.inner_text(".card")
            await page.screenshot(path=SHOTS / f"landing-{lang}.png")
            # 2. "Chat here": the same card in the chat.
            await page.click(f"text={words['here']}")
            await page.wait_for_selector(".msg.bot >> text=📖", timeout=15000)
            # 3. Link with the code from the slip (the session is rotated under the hood).
            await page.fill("#text", code)
            await page.press("#text", "Enter")
            await page.wait_for_selector(f".msg.bot >> text={words['linked']}", timeout=15000)
            await page.wait_for_selector("#status", state="hidden", timeout=15000)   # reconnected
            # 4. Open the book again and reserve it.
            await page.goto(url)
            await page.click(f"text={words['here']}")
            await page.click(f".msg.bot .keys button >> text={words['reserve']}", timeout=15000)
            await page.wait_for_selector(f".msg.bot >> text={words['queued']}", timeout=15000)
            await page.screenshot(path=SHOTS / f"reserved-{lang}.png")
            # 5. The librarian takes the copy back; the sweep pushes the hold-ready notice, live.
            operator = await accounts.operator_actor(app.db, "demo")
            await circulation.check_in(app.db, operator, copy_id, clock=app.deps.clock)
            report = await Sweeper(app.router).sweep()
            assert report.messages == 1
            notice = page.locator(".msg.notice", has_text=words["ready"])
            await notice.wait_for(timeout=15000)
            await page.screenshot(path=SHOTS / f"notice-{lang}.png")
            assert await notice.count() == 1
            # 6. A reload shows the history (the link, the reservation, the notice: once).
            await page.reload()
            await page.wait_for_selector("#status", state="hidden", timeout=15000)
            await page.wait_for_timeout(1000)
            await page.screenshot(path=SHOTS / f"reload-{lang}.png", full_page=True)
            await page.locator(".msg.notice", has_text=words["ready"]).wait_for(timeout=15000)
            assert await page.locator(".msg.notice", has_text=words["ready"]).count() == 1
            assert await page.locator(".msg.bot", has_text=words["linked"]).count() == 1
            # 7. The network drops; what the student types meanwhile goes out once it is back.
            for conn in [c for group in adapter.hub.connections.values() for c in group]:
                await conn.ws.close()
            await page.wait_for_selector("#status:not([hidden])", timeout=15000)
            await page.fill("#text", "/loans")
            await page.press("#text", "Enter")
            await page.locator(".msg.bot", has_text=own_title[:20]).last.wait_for(timeout=20000)
            assert await page.locator(".msg.me", has_text="/loans").count() == 1     # sent once, not lost
            assert await page.locator(".msg.pending").count() == 0
            await page.screenshot(path=SHOTS / f"loans-{lang}.png")

            # 8. Another browser without the session sees nothing of it, and cannot ask.
            other = await browser.new_context(**phone)
            stranger = await other.new_page()
            await stranger.goto(f"{base}/chat")
            await stranger.wait_for_selector("#status", state="hidden", timeout=15000)
            await stranger.locator(".msg.bot").first.wait_for(timeout=15000)    # a greeting, nothing else
            assert own_title[:20] not in await stranger.inner_text("body")
            await stranger.fill("#text", "/loans")
            await stranger.press("#text", "Enter")
            await stranger.wait_for_selector(f".msg.bot >> text={TEXTS['vi']['needs_link']}", timeout=15000)
            body = await stranger.inner_text("body")
            assert own_title[:20] not in body and "Nguyễn Văn An" not in body
            await stranger.screenshot(path=SHOTS / f"stranger-{lang}.png")
            assert not [e for e in errors if "favicon" not in e], errors
            await browser.close()
    finally:
        await adapter.stop()
        await server.stop()
