"""Watching it: metrics on real HTTP (operators only) and alarms to the admins through the outbox."""

from __future__ import annotations

import logging
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from sqlalchemy import select

from bot import alarms, observe
from bot.app import App
from handlers.messages import CollectingChannel
from services import ops, outbox
from services.db import Database
from services.models import Notification, Patron
from tests.conftest import ChatDriver
from tests.fake_bot_api import FakeBotApi
from tests.test_reminders import link, sweeper_for

TOKEN = "7312345678:AAF3k9-watch_Token_value_xyz0123456"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"


async def test_updates_replies_and_searches_are_counted(demo_app: App):
    chat = ChatDriver(demo_app, user="m1", channel="metricstest")
    ok_before = sample("docsach_updates_total", channel="metricstest", outcome="ok")
    replies_before = sample("docsach_reply_seconds_count", channel="metricstest")
    searches_before = sample("docsach_search_seconds_count")
    await chat.say("de men phieu luu ky")
    await chat.say("/help")
    assert sample("docsach_updates_total", channel="metricstest", outcome="ok") == ok_before + 2
    assert sample("docsach_reply_seconds_count", channel="metricstest") == replies_before + 2
    assert sample("docsach_search_seconds_count") >= searches_before + 1


async def test_metrics_are_served_to_operators_only(demo_app: App):
    await ops.beat(demo_app.db, ops.SWEEP, "w1", seconds=2.0, clock=demo_app.deps.clock)
    async with demo_app.db.transaction() as s:
        patron_id = (await s.execute(select(Patron.id).where(Patron.card_number == "HS001"))).scalar_one()
        await outbox.enqueue(s, patron_id=patron_id, kind="due_soon", key="metrics:1",
                             send_after=demo_app.deps.clock.now() - timedelta(hours=2), payload={})
    loopback = observe.metrics_handler(demo_app.db, demo_app.deps.clock)
    elsewhere = observe.metrics_handler(demo_app.db, demo_app.deps.clock, token="s3cret-token", allow="10.0.0.0/8")
    for handler, headers, status in ((loopback, {}, 200), (elsewhere, {}, 403),
                                     (elsewhere, {"Authorization": "Bearer wrong"}, 403),
                                     (elsewhere, {"Authorization": "Bearer s3cret-token"}, 200)):
        runner, url = await serve(handler)
        try:
            async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
                body = await response.text()
                assert response.status == status, (headers, body)
        finally:
            await runner.cleanup()
        if status == 200:
            assert "docsach_updates_total" in body and "docsach_db_pool_in_use" in body
            assert "docsach_outbox_pending 1.0" in body and "docsach_database_up 1.0" in body
            oldest = next(line for line in body.splitlines()
                          if line.startswith("docsach_outbox_oldest_pending_seconds "))
            assert float(oldest.split()[1]) == pytest.approx(7200, abs=1)
            assert "docsach_last_sweep_timestamp_seconds" in body


@pytest.fixture
async def admin_app(demo_app: App) -> App:
    """The demo app whose admin (AD001, English) has a chat on a collecting channel."""
    demo_app.deps.outbound["test"] = CollectingChannel("test")
    await link(demo_app.db, "AD001", language="en")
    return demo_app


async def alarm_notices(db: Database) -> list[Notification]:
    async with db.session() as s:
        return list((await s.execute(select(Notification).where(Notification.kind == "ops_alarm")
                                     .order_by(Notification.id))).scalars())


async def test_no_sweep_for_15_minutes_reaches_the_admin_once(admin_app: App, caplog):
    clock = admin_app.deps.clock
    await ops.beat(admin_app.db, ops.SWEEP, "w1", clock=clock)
    first, second = alarms.Watchdog(admin_app), alarms.Watchdog(admin_app)   # two workers
    await first.tick()
    assert await alarm_notices(admin_app.db) == []
    clock.set(clock.now() + timedelta(minutes=16))
    with caplog.at_level(logging.ERROR, logger="bot.alarms"):
        await first.tick()
        await first.tick()
        await second.tick()
    assert [r.getMessage() for r in caplog.records].count("ALARM no_sweep: no reminder sweep for 16 minutes") == 2
    [notice] = await alarm_notices(admin_app.db)
    assert notice.payload == {"alarm": "no_sweep", "params": {"minutes": 16}}
    report = await sweeper_for(admin_app).sweep()
    assert report.sent >= 1
    [(chat_id, reply)] = [(c, r) for c, r in admin_app.deps.outbound["test"].sent if c == "AD001"]
    assert reply.text.startswith("⚠️ docsach operations alarm\nNo reminder sweep for 16 minutes")


async def test_an_old_pending_notice_raises_outbox_stuck(admin_app: App):
    clock = admin_app.deps.clock
    await ops.beat(admin_app.db, ops.SWEEP, "w1", clock=clock)
    async with admin_app.db.transaction() as s:
        patron_id = (await s.execute(select(Patron.id).where(Patron.card_number == "HS003"))).scalar_one()
        await outbox.enqueue(s, patron_id=patron_id, kind="due_soon", key="stuck:1",
                             send_after=clock.now() - timedelta(minutes=75), payload={})
    watchdog = alarms.Watchdog(admin_app)
    await watchdog.tick()
    [notice] = await alarm_notices(admin_app.db)
    assert notice.payload["alarm"] == "outbox_stuck" and notice.payload["params"] == {"pending": 1, "minutes": 75}


async def test_a_refused_token_raises_platform_refused(admin_app: App):
    import dataclasses

    await ops.beat(admin_app.db, ops.SWEEP, "w1", clock=admin_app.deps.clock)
    async with FakeBotApi(token=TOKEN) as api:
        admin_app.settings = dataclasses.replace(admin_app.settings, telegram_token="7312345678:revoked_token_xxxxxxxxxxxx",
                                                 telegram_api_base_url=api.base_url)
        await alarms.Watchdog(admin_app).tick()
    [notice] = await alarm_notices(admin_app.db)
    assert notice.payload == {"alarm": "platform_refused", "params": {"platform": "Telegram", "status": 401}}


async def test_database_unreachable_for_a_minute_is_logged_then_told(admin_app: App, caplog):
    clock = admin_app.deps.clock
    await ops.beat(admin_app.db, ops.SWEEP, "w1", clock=clock)
    watchdog = alarms.Watchdog(admin_app)
    real = watchdog.db
    watchdog.db = Database("postgresql+asyncpg://docsach@127.0.0.1:1/down")
    try:
        with caplog.at_level(logging.ERROR, logger="bot.alarms"):
            await watchdog.tick()
            assert not caplog.records   # not yet a minute
            clock.set(clock.now() + timedelta(seconds=61))
            await watchdog.tick()
        assert caplog.records[0].getMessage().startswith("ALARM database_down: the database has been unreachable")
    finally:
        await watchdog.db.dispose()
    watchdog.db = real
    clock.set(clock.now() + timedelta(minutes=2))
    await watchdog.tick()
    [notice] = await alarm_notices(admin_app.db)
    assert notice.payload["alarm"] == "database_down" and notice.payload["params"]["minutes"] == 3


async def test_the_shared_server_serves_metrics(demo_app: App):
    from bot.server import Server

    server = Server(demo_app, "127.0.0.1", 0)
    server.mount_configured()
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
            body = await response.text()
    finally:
        await server.stop()
    assert "metrics" in server.mounted and response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain") and "docsach_database_up 1.0" in body
