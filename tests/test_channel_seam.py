"""The channel seam: channel profiles, the shared HTTP server, ``docsach run`` with every channel,
stored photos, and notices that reach a patron once on the chat they used last."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import segno
from aiohttp import web
from sqlalchemy import select, update

from bot import channels
from bot.app import App
from bot.channels import telegram
from bot.channels.base import RunOptions
from bot.server import HTTP_PARTS, Server
from handlers.messages import CollectingChannel, Incoming
from services import photos
from services.common import Clock, DomainError
from services.models import (
    ChatIdentity,
    Notification,
    NotificationStatus,
    Patron,
    Reflection,
    ReflectionStatus,
)
from services.patrons import resolve_actor
from tests.test_reminders import at, lend, link, sweeper_for

ROOT = Path(__file__).resolve().parents[1]


def png(text: str = "docsach") -> bytes:
    out = io.BytesIO()
    segno.make(text).save(out, kind="png", scale=3)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- profiles and links ----------------------------------------------------------------------------

async def test_printed_links_prefer_the_public_url_then_a_channel(app: App):
    assert app.deps.printed_link("t12") is None              # nothing could open it yet
    app.deps.channels["telegram"] = telegram.profile("docsach_bot")
    assert app.deps.printed_link("t12") == "https://t.me/docsach_bot?start=t12"
    app.deps.public_url = "https://thuvien.example.vn/"
    assert app.deps.printed_link("k2K7QWXYZ") == "https://thuvien.example.vn/b/k2K7QWXYZ"
    assert app.deps.profile("nowhere").max_payload == 64      # an unknown channel gets the plain profile
    from bot.channels import web

    app.deps.public_url = None
    app.deps.channels = {"web": web.profile("http://127.0.0.1:8080")}   # only the local address: never printed
    assert app.deps.printed_link("t12") is None


async def test_handlers_read_the_input_limit_from_the_channel(demo_app: App):
    from handlers.messages import ChannelProfile

    demo_app.deps.channels["tiny"] = ChannelProfile(name="tiny", max_input=50)
    event = Incoming(channel="tiny", chat_id="x", user_id="x", text="a" * 51)
    [reply] = await demo_app.router.dispatch(event)
    assert "50" in reply.text


# -- the shared server ------------------------------------------------------------------------------

async def test_server_mounts_parts_and_sets_safe_headers(app: App):
    class Hello:
        name = "hello"

        def mount(self, web_app: web.Application) -> None:
            sub = web.Application()

            async def hi(request: web.Request) -> web.Response:
                return web.Response(text="xin chào")

            sub.router.add_get("/", hi)
            web_app.add_subapp("/hello/", sub)

    server = Server(app, "127.0.0.1", 0)
    server.mount_configured()
    server.mount([Hello(), None])
    await server.start()
    try:
        assert server.mounted[0] == "health" and server.mounted[-1] == "hello" and "landing" in server.mounted
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/healthz") as r:
                assert r.status == 200 and await r.text() == "ok"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            async with http.get(server.url + "/hello/") as r:
                assert await r.text() == "xin chào"
    finally:
        await server.stop()
    assert len(HTTP_PARTS) >= 1


async def test_configured_channels_open_the_terminal_only_without_a_messaging_platform(app: App, monkeypatch):
    from bot.channels import terminal

    with open(os.devnull) as devnull:  # noqa: ASYNC230 (a character device: no waiting)
        assert not terminal.has_input(devnull)         # systemd/Docker: no input, keep serving the web
    monkeypatch.setattr(terminal, "has_input", lambda stdin=None: True)
    names = [c.name for c in channels.configured(app, RunOptions())]
    assert names == ["web", "terminal"]
    app.settings.telegram_token = "123:ABC"
    names = [c.name for c in channels.configured(app, RunOptions())]
    assert names == ["telegram", "web"]


def _run(env: dict, stdin: bytes, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bot.cli", "run", *args], input=stdin, capture_output=True,
                          cwd=ROOT, env=env, timeout=timeout)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_docsach_run_in_a_pipe_answers_and_stops_at_end_of_input(tmp_path):
    """``printf '/start\\n/help\\n' | docsach run``: the terminal chat answers both lines, the
    HTTP server listens meanwhile, and end of input stops the whole process."""
    port = free_port()
    env = dict(os.environ, DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/run.db",
               DOCSACH_LISTEN=f"127.0.0.1:{port}", DOCSACH_REMINDERS="off", TELEGRAM_BOT_TOKEN="")
    env.pop("DOCSACH_PUBLIC_URL", None)
    code, out, err = _run(env, b"/start\n/help\n")
    assert code == 0, err
    assert "Xin chào" in out and "/help" in out
    assert f"http://127.0.0.1:{port}" in err        # where the server listened


def test_docsach_run_refuses_a_bad_listen_address_in_one_sentence(tmp_path):
    env = dict(os.environ, DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/run.db", TELEGRAM_BOT_TOKEN="")
    code, out, err = _run(env, b"", "--listen", "nonsense")
    assert code == 2 and "HOST:PORT" in err and "Traceback" not in err


async def test_telegram_webhook_on_the_shared_server(app: App, fake_bot_api):
    """``docsach run --webhook``: Telegram's POSTs arrive on the one server, beside /healthz."""
    api = fake_bot_api
    port = free_port()
    app.settings.telegram_token = api.token
    app.settings.telegram_api_base_url = api.base_url
    app.settings.telegram_webhook_secret = "s3cret"
    options = RunOptions(port=port, telegram_webhook_url=f"http://127.0.0.1:{port}/tg/hook")
    [adapter, _web] = channels.configured(app, options)
    server = Server(app, "127.0.0.1", port)
    server.mount([adapter])
    server.mount_configured()
    await server.start()
    await adapter.start()
    try:
        assert api.webhook["url"] == options.telegram_webhook_url
        update = api.message_update(5001, "/start")
        assert await api.post_update_to_webhook(None, update, secret_token="wrong") == 403
        assert await api.post_update_to_webhook(None, update) == 200
        [hello] = await api.wait_for("sendMessage", predicate=lambda c: c.chat_id == 5001)
        assert hello.params["text"]
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
    finally:
        await adapter.stop()
        await server.stop()


# -- stored photos ----------------------------------------------------------------------------------

@pytest.mark.parametrize("in_files", [False, True])
async def test_photos_are_stored_by_docsach(app: App, tmp_path, in_files: bool):
    store = photos.PhotoStore(app.db, tmp_path / "files" if in_files else None)
    data = png()
    ref = await store.store(data)
    assert photos.is_ref(ref) and await store.store(data) == ref        # same bytes, same ref
    loaded = await store.load(ref)
    assert loaded is not None and loaded.data == data and loaded.mime_type == "image/png"
    assert (tmp_path / "files" / f"{ref}.png").exists() is in_files
    assert await store.load("AgACAgUAAxkBAAIB") is None                  # an old platform file id
    with pytest.raises(DomainError) as refused:
        await store.store(b"%PDF-1.4 not a photo")
    assert refused.value.key == "photos.not_an_image"
    with pytest.raises(DomainError):
        await store.store(b"\xff\xd8\xff" + b"0" * photos.MAX_BYTES)


async def test_who_may_view_a_stored_photo(demo_app: App):
    app = demo_app
    ref = await app.deps.photos.store(png("page"))
    an = await resolve_actor(app.db, "test", "HS001", "HS001")
    from services.patrons import link_trusted

    an = await link_trusted(app.db, an, "demo", "HS001")
    other = await link_trusted(app.db, await resolve_actor(app.db, "test", "HS002", "HS002"), "demo", "HS002")
    teacher = await link_trusted(app.db, await resolve_actor(app.db, "test", "GV001", "GV001"), "demo", "GV001")
    guest = await resolve_actor(app.db, "test", "nobody", "nobody")
    async with app.db.transaction() as s:
        title_id = (await s.execute(select(Reflection.title_id).limit(1))).scalar_one_or_none()
        if title_id is None:
            from services.models import Title

            title_id = (await s.execute(select(Title.id).limit(1))).scalar_one()
        s.add(Reflection(library_id=an.library_id, patron_id=an.patron_id, title_id=title_id,
                         status=ReflectionStatus.SUBMITTED, body="…", photo_ref=ref))
    assert await photos.may_view(app.db, an, ref)
    assert await photos.may_view(app.db, teacher, ref)           # a moderator of that library
    assert not await photos.may_view(app.db, other, ref)         # not published: another student cannot
    assert not await photos.may_view(app.db, guest, ref)
    async with app.db.transaction() as s:
        await s.execute(update(Reflection).where(Reflection.photo_ref == ref)
                        .values(status=ReflectionStatus.APPROVED))
    assert await photos.may_view(app.db, other, ref)


# -- notices on the chat used last ------------------------------------------------------------------

async def _two_chats(app: App) -> tuple[CollectingChannel, CollectingChannel]:
    first, second = CollectingChannel("alpha"), CollectingChannel("beta")
    app.deps.outbound.update(alpha=first, beta=second)
    await link(app.db, "HS001", channel="alpha", language="vi")
    await link(app.db, "HS001", channel="beta", language="vi")
    return first, second


async def _seen(app: App, channel: str, when: datetime) -> None:
    async with app.db.transaction() as s:
        await s.execute(update(ChatIdentity).where(ChatIdentity.channel == channel).values(last_seen_at=when))


async def test_a_notice_goes_once_to_the_chat_used_last(demo_app: App, clock: Clock):
    app = demo_app
    first, second = await _two_chats(app)
    await _seen(app, "alpha", datetime(2026, 11, 30, tzinfo=UTC))
    await _seen(app, "beta", datetime(2026, 11, 30, 12, tzinfo=UTC))     # used later
    clock.set(at(2026, 12, 1, 9))
    await lend(app.db, "HS001", date(2026, 12, 1))
    report = await sweeper_for(app).sweep()
    assert report.messages == 1 and not first.sent and len(second.sent) == 1
    assert (await sweeper_for(app).sweep()).messages == 0                 # once

    # Writing from a chat makes it the one used last (the router records it).
    await app.router.dispatch(Incoming(channel="alpha", chat_id="HS001", user_id="HS001", text="/help"))
    async with app.db.session() as s:
        seen = {c.channel: c.last_seen_at for c in (await s.execute(select(ChatIdentity))).scalars()
                if c.chat_id == "HS001"}
    assert seen["alpha"] is not None and seen["alpha"].replace(tzinfo=UTC) > datetime(2026, 11, 30, 12, tzinfo=UTC)


async def test_an_unreachable_chat_falls_back_to_the_others_once(demo_app: App, clock: Clock):
    app = demo_app
    first, second = await _two_chats(app)
    await _seen(app, "alpha", datetime(2026, 11, 30, 12, tzinfo=UTC))    # used last, but blocked
    await _seen(app, "beta", datetime(2026, 11, 30, tzinfo=UTC))
    first.unreachable.add("HS001")
    clock.set(at(2026, 12, 1, 9))
    await lend(app.db, "HS001", date(2026, 12, 1))
    report = await sweeper_for(app).sweep()
    assert report.unreachable == 1 and report.messages == 1
    assert not first.sent and len(second.sent) == 1
    [(chat, reply)] = second.sent
    # The buttons were made for the chat that received them (payloads are bound to the chat).
    for row in reply.buttons:
        for button in row:
            if button.payload:
                assert app.router.decode("HS001", button.payload) is not None
    async with app.db.session() as s:
        [notice] = (await s.execute(select(Notification))).scalars().all()
        assert notice.status == NotificationStatus.SENT and notice.channel == "beta"
    # Both chats refuse: skipped as unreachable, never sent twice.
    await lend(app.db, "HS001", date(2026, 12, 2))
    second.unreachable.add("HS001")
    clock.set(at(2026, 12, 1, 9) + timedelta(minutes=1))
    report = await sweeper_for(app).sweep()
    assert report.messages == 0 and len(second.sent) == 1
    async with app.db.session() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == "HS001"))).scalar_one()
        states = {n.status for n in (await s.execute(select(Notification).where(
            Notification.patron_id == patron.id))).scalars()}
    assert NotificationStatus.SENT in states


async def test_terminal_adapter_finishes_at_end_of_input(app: App):
    from bot.channels.terminal import TerminalAdapter

    out = io.StringIO()
    adapter = TerminalAdapter(app, stdin=io.StringIO("/help\n"), out=out)
    await adapter.start()
    await asyncio.wait_for(adapter.finished.wait(), 30)
    await adapter.stop()
    assert "/help" in out.getvalue() and "terminal" not in app.deps.outbound
