"""Reminders end to end through the fake Telegram Bot API server with the real PTB stack:
messages and their buttons over HTTP, Renew pressed on a reminder, 429 / 5xx / 403 handling."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select
from telegram.ext import AIORateLimiter, ExtBot

from bot.app import App
from handlers.messages import (
    Incoming,
)
from services import outbox
from services.common import Clock, aware
from services.models import ChatIdentity, Loan, Notification, NotificationStatus
from tests.fake_bot_api import FakeBotApi
from tests.test_reminders import at, lend, link, sweeper_for

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")


def telegram_channel(api: FakeBotApi, app: App):
    """The adapter's own channel on a PTB ExtBot; ``max_retries=0`` so a 429 reaches the sweeper."""
    from bot.channels.telegram import TelegramChannel

    bot = ExtBot(api.token, base_url=api.base_url, rate_limiter=AIORateLimiter(max_retries=0))
    return bot, TelegramChannel(bot, app.db, clock=app.deps.clock)


@pytest.fixture
async def tg(demo_app: App):
    async with FakeBotApi() as api:
        bot, channel = telegram_channel(api, demo_app)
        async with bot:
            demo_app.deps.outbound["telegram"] = channel
            await link(demo_app.db, "HS001", channel="telegram", language="vi")    # chat 4201 below
            await link(demo_app.db, "HS002", channel="telegram", language="en")
            async with demo_app.db.transaction() as s:
                for identity in (await s.execute(select(ChatIdentity))).scalars():
                    identity.chat_id = identity.external_id = {"HS001": "4201", "HS002": "4202"}[identity.chat_id]
            yield api, demo_app


async def test_reminder_over_http_and_renew_pressed_on_it(tg, clock: Clock):
    api, app = tg
    api.rate_limit(per_second=30, per_chat_per_second=1)
    clock.set(at(2026, 12, 1, 9))
    loan = await lend(app.db, "HS002", date(2026, 12, 3))
    await lend(app.db, "HS001", date(2026, 11, 30))
    report = await sweeper_for(app).sweep()
    assert report.messages == 2 and api.stats.too_many_requests == 0
    [message] = api.sent_messages(4202)
    assert "Dec 3, 2026" in message["text"]
    keyboard = message["reply_markup"]["inline_keyboard"]
    renew = next(b for row in keyboard for b in row if "Renew" in b["text"])
    assert len(renew["callback_data"].encode()) <= 64
    # The student taps Renew on the reminder: the callback data comes back from Telegram.
    [reply] = await app.router.dispatch(Incoming(channel="telegram", chat_id="4202", user_id="4202",
                                                 button=renew["callback_data"], message_ref=str(message["message_id"])))
    assert "Renewed" in reply.text
    async with app.db.session() as s:
        assert (await s.get(Loan, loan.id)).due_date == date(2026, 12, 17)
    [vi] = api.sent_messages(4201)
    assert "quá hạn 1 ngày" in vi["text"]


async def test_429_retry_after_is_honoured_and_5xx_retried_later(tg, clock: Clock):
    api, app = tg
    clock.set(at(2026, 12, 1, 9))
    await lend(app.db, "HS001", date(2026, 12, 1))
    await lend(app.db, "HS002", date(2026, 12, 1))
    api.fail_next("sendMessage", 429, retry_after=7, chat_id=4201)
    api.fail_next("sendMessage", 502, chat_id=4202)
    sweeper = sweeper_for(app)
    start = sweeper.limiter.monotonic()
    report = await sweeper.sweep()
    assert report.retry == 2 and report.messages == 0
    assert sweeper.limiter.paused_until >= start + 7          # everyone waits out the 429
    async with app.db.session() as s:
        after = {n.chat_id or n.key: aware(n.send_after) for n in (await s.execute(select(Notification))).scalars()}
    assert sorted(after.values()) == sorted([clock.now() + timedelta(seconds=7), clock.now() + timedelta(minutes=1)])
    clock.set(clock.now() + timedelta(minutes=2))
    report = await sweeper_for(app).sweep()
    assert report.messages == 2
    assert len(api.sent_messages(4201)) == len(api.sent_messages(4202)) == 1


async def test_403_blocked_chat_becomes_unreachable(tg, clock: Clock):
    api, app = tg
    clock.set(at(2026, 12, 1, 9))
    await lend(app.db, "HS001", date(2026, 12, 1))
    await lend(app.db, "HS002", date(2026, 12, 1))
    api.block_chat(4201)
    report = await sweeper_for(app).sweep()
    assert report.unreachable == 1 and report.messages == 1
    async with app.db.session() as s:
        states = {n.status for n in (await s.execute(select(Notification))).scalars()}
    assert states == {NotificationStatus.SENT, NotificationStatus.SKIPPED}
    assert [r.card_number for r in await outbox.unreachable_chats(app.db, None)] == ["HS001"]


async def test_end_to_end_with_the_telegram_adapter_renew_pressed_on_a_reminder(demo_app: App, clock: Clock):
    """The running bot (adapter, router, handlers) sends the reminder it swept and handles the
    Renew press that comes back as a callback query."""
    from bot.channels import telegram

    async with FakeBotApi() as api, telegram.running(
            demo_app, token=api.token, base_url=api.base_url, poll_timeout=1, backoff=(0.05, 0.1)):
        assert "telegram" in demo_app.deps.outbound                     # the adapter registered its channel
        patron = await link(demo_app.db, "HS002", channel="telegram", language="en")
        async with demo_app.db.transaction() as s:
            identity = (await s.execute(select(ChatIdentity).where(ChatIdentity.patron_id == patron.id))).scalar_one()
            identity.chat_id = identity.external_id = "5002"
        clock.set(at(2026, 12, 1, 9))
        loan = await lend(demo_app.db, "HS002", date(2026, 12, 3))
        assert (await sweeper_for(demo_app).sweep()).messages == 1
        [message] = await api.wait_for_sent(5002)
        renew = next(b for row in message["reply_markup"]["inline_keyboard"] for b in row if "Renew" in b["text"])
        before = len(api.calls)
        api.push_callback(5002, message["message_id"], renew["callback_data"], language_code="en")
        await api._wait_until(lambda: any(c.method.lower() == "answercallbackquery" for c in api.calls[before:]), 5.0)
        async with demo_app.db.session() as s:
            assert (await s.get(Loan, loan.id)).due_date == date(2026, 12, 17)
        shown = [c.params.get("text") for c in api.calls[before:] if c.params.get("text")]
        assert any("Renewed" in text for text in shown), shown
