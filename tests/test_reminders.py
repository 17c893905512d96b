"""Reminders: planning, quiet hours, digests, opt-outs, unreachable chats, crashes and concurrency.

Time is a fixed, advanced-by-hand clock; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bot.app import App
from bot.scheduler import RateLimiter, Sweeper
from handlers.messages import (
    CollectingChannel,
    Delivery,
    DeliveryFailed,
    DeliveryUncertain,
    Reply,
)
from services import outbox, reminders
from services.common import Clock, aware
from services.db import Database
from services.models import (
    ChatIdentity,
    ClosedDay,
    Copy,
    CopyStatus,
    Hold,
    HoldStatus,
    Library,
    Loan,
    Notification,
    NotificationStatus,
    Patron,
)
from tests.conftest import ChatDriver

CHANNEL = "test"
ROOT = Path(__file__).resolve().parents[1]
VN = 7  # Asia/Ho_Chi_Minh is UTC+7, no daylight saving


def at(y: int, m: int, d: int, hh: int = 9, mm: int = 0) -> datetime:
    """A Lào Cai wall-clock time as an aware UTC datetime."""
    return datetime(y, m, d, hh, mm, tzinfo=UTC) - timedelta(hours=VN)


class FakeTime:
    """Monotonic time and sleep for the rate limiter: sleeping just moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def sweeper_for(app: App, **kw) -> Sweeper:
    fake = FakeTime()
    kw.setdefault("limiter", RateLimiter(monotonic=fake.monotonic, sleep=fake.sleep))
    return Sweeper(app.router, worker=kw.pop("worker", "test"), **kw)


async def link(db: Database, card: str, *, channel: str = CHANNEL, language: str | None = None) -> Patron:
    """Link a chat (chat id = card number) to a demo patron."""
    async with db.transaction() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == card))).scalar_one()
        s.add(ChatIdentity(channel=channel, external_id=card, chat_id=card, patron_id=patron.id,
                           linked_at=datetime(2026, 11, 1, tzinfo=UTC)))
        if language:
            patron.language = language
    return patron


async def lend(db: Database, card: str, due: date) -> Loan:
    """Put an available copy on loan to the patron (circulation's job; set up directly here)."""
    async with db.transaction() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == card))).scalar_one()
        copy = (await s.execute(select(Copy).where(Copy.status == CopyStatus.AVAILABLE)
                                .order_by(Copy.id).limit(1))).scalar_one()
        copy.status = CopyStatus.ON_LOAN
        loan = Loan(library_id=patron.library_id, copy_id=copy.id, patron_id=patron.id,
                    checked_out_at=datetime(2026, 11, 15, tzinfo=UTC), due_date=due)
        s.add(loan)
    return loan


async def notices(db: Database) -> list[Notification]:
    async with db.session() as s:
        return list((await s.execute(select(Notification).order_by(Notification.id))).scalars())


@pytest.fixture
async def rapp(demo_app: App) -> App:
    """The demo app with a collecting output channel and HS001 (vi), HS002 (en) linked."""
    demo_app.deps.outbound[CHANNEL] = CollectingChannel(CHANNEL)
    await link(demo_app.db, "HS001", language="vi")
    await link(demo_app.db, "HS002", language="en")
    return demo_app


def sent(app: App) -> list[tuple[str, Reply]]:
    return app.deps.outbound[CHANNEL].sent


# -- planning ------------------------------------------------------------------------------------

async def test_plan_kinds_and_idempotent(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    soon = await lend(rapp.db, "HS001", date(2026, 12, 3))
    today = await lend(rapp.db, "HS001", date(2026, 12, 1))
    late = await lend(rapp.db, "HS002", date(2026, 11, 23))     # 8 days late → stage 7
    await lend(rapp.db, "HS002", date(2026, 12, 4))              # 3 days ahead: nothing yet
    result = await reminders.plan(rapp.db, clock)
    keys = {n.key for n in await notices(rapp.db)}
    assert keys == {f"due_soon:loan={soon.id}:2026-12-03", f"due_today:loan={today.id}:2026-12-01",
                    f"overdue:loan={late.id}:2026-11-23:7"}
    assert result.inserted == 3
    again = await reminders.plan(rapp.db, clock)
    assert again.inserted == 0 and len(await notices(rapp.db)) == 3
    # send_after is the end of the night's quiet hours, 07:00 school time
    assert {aware(n.send_after) for n in await notices(rapp.db)} == {at(2026, 12, 1, 7)}


async def test_due_date_across_midnight_and_time_zones(rapp: App, clock: Clock):
    loan = await lend(rapp.db, "HS001", date(2026, 12, 2))
    clock.set(at(2026, 12, 1, 23, 30))                      # 16:30 UTC: still 1 Dec in Lào Cai
    await reminders.plan(rapp.db, clock)
    assert [n.kind for n in await notices(rapp.db)] == ["due_soon"]
    clock.set(at(2026, 12, 2, 0, 30))                       # past midnight in Lào Cai, 1 Dec in UTC
    await reminders.plan(rapp.db, clock)
    assert [n.kind for n in await notices(rapp.db)] == ["due_soon", "due_today"]
    # the stale due_soon is not said on the due date itself; due_today goes at 07:00
    clock.set(at(2026, 12, 2, 7, 0))
    report = await sweeper_for(rapp).sweep()
    assert report.messages == 1 and "hôm nay" in sent(rapp)[0][1].text.lower()
    by_kind = {n.kind: n for n in await notices(rapp.db)}
    assert by_kind["due_soon"].status == NotificationStatus.SKIPPED
    assert by_kind["due_today"].status == NotificationStatus.SENT
    # A school in another zone: the same UTC instant is still 1 Dec in London
    async with rapp.db.transaction() as s:
        await s.execute(update(Library).values(timezone="Europe/London"))
    async with rapp.db.transaction() as s:
        await s.execute(update(Loan).where(Loan.id == loan.id).values(due_date=date(2026, 12, 3)))
    clock.set(datetime(2026, 12, 2, 23, 30, tzinfo=UTC))   # 06:30 on 3 Dec in Lào Cai, 23:30 on 2 Dec in London
    await reminders.plan(rapp.db, clock)
    assert f"due_soon:loan={loan.id}:2026-12-03" in {n.key for n in await notices(rapp.db)}


async def test_overdue_stages_after_downtime_say_only_the_latest(rapp: App, clock: Clock):
    loan = await lend(rapp.db, "HS001", date(2026, 11, 1))
    clock.set(at(2026, 12, 1, 9))                           # 30 days late, never reminded
    await reminders.plan(rapp.db, clock)
    assert [n.key for n in await notices(rapp.db)] == [f"overdue:loan={loan.id}:2026-11-01:14"]
    await sweeper_for(rapp).sweep()
    clock.set(at(2026, 12, 2, 9))
    assert (await sweeper_for(rapp).sweep()).messages == 0  # nothing new to say
    assert "30" in sent(rapp)[0][1].text


async def test_renewed_loan_gets_new_keys_and_the_old_are_skipped(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 6))                           # before 07:00: planned, not yet sent
    loan = await lend(rapp.db, "HS001", date(2026, 12, 3))
    await reminders.plan(rapp.db, clock)
    async with rapp.db.transaction() as s:                  # a renewal moves the due date
        await s.execute(update(Loan).where(Loan.id == loan.id).values(due_date=date(2026, 12, 2), renewals=1))
    clock.set(at(2026, 12, 1, 8))
    report = await sweeper_for(rapp).sweep()
    states = {n.key: (n.status, n.last_error) for n in await notices(rapp.db)}
    assert states[f"due_soon:loan={loan.id}:2026-12-03"] == (NotificationStatus.SKIPPED, "stale: due date changed")
    assert states[f"due_soon:loan={loan.id}:2026-12-02"][0] == NotificationStatus.SENT
    assert report.messages == 1


# -- quiet hours, digests, language -------------------------------------------------------------

async def test_quiet_hours_hold_everything_until_morning(rapp: App, clock: Clock):
    await lend(rapp.db, "HS001", date(2026, 12, 2))
    clock.set(at(2026, 12, 1, 21, 0))
    async with rapp.db.transaction() as s:                  # an event notice enqueued at night
        patron = (await s.execute(select(Patron).where(Patron.card_number == "HS002"))).scalar_one()
        await outbox.enqueue(s, patron_id=patron.id, kind="hold_expired", key="hold_expired:hold=99",
                                    send_after=clock.now(), payload={"hold_id": 99, "title": "Dế Mèn"})
    report = await sweeper_for(rapp).sweep()
    assert report.messages == 0 and report.quiet_libraries
    assert {aware(n.send_after) for n in await notices(rapp.db)} == {at(2026, 12, 2, 7)}
    clock.set(at(2026, 12, 2, 6, 59))
    assert (await sweeper_for(rapp).sweep()).messages == 0
    clock.set(at(2026, 12, 2, 7, 0))
    report = await sweeper_for(rapp).sweep()
    # due_soon planned on 1 Dec is stale on 2 Dec; due_today and the event go out in the morning
    assert report.messages == 2
    assert {chat for chat, _ in sent(rapp)} == {"HS001", "HS002"}


async def test_quiet_hours_are_per_library_settings(rapp: App, clock: Clock):
    async with rapp.db.transaction() as s:
        await s.execute(update(Library).values(settings={"reminders": {"quiet_hours": ["22:00", "06:00"]}}))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    clock.set(at(2026, 12, 1, 21, 0))
    assert (await sweeper_for(rapp).sweep()).messages == 1


async def test_digest_one_message_per_patron_listing_the_books(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    loans = [await lend(rapp.db, "HS002", date(2026, 12, 1)) for _ in range(3)]
    await lend(rapp.db, "HS002", date(2026, 11, 30))        # overdue 1 day, in the same digest
    report = await sweeper_for(rapp).sweep()
    assert report.messages == 1 and report.sent == 4
    [(chat, reply)] = sent(rapp)
    assert chat == "HS002"
    assert reply.text.startswith("📚 A note from the library (4 books)")
    assert reply.text.index("overdue") < reply.text.index("due today")   # most urgent first
    assert sum(1 for row in reply.buttons for b in row if b.label.startswith("🔁 Renew")) == 4
    refs = {n.message_ref for n in await notices(rapp.db)}
    assert len(refs) == 1 and len(loans) == 3


async def test_single_reminders_in_each_language_with_local_dates(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 3))
    await lend(rapp.db, "HS002", date(2026, 12, 3))
    await sweeper_for(rapp).sweep()
    texts = dict((chat, reply) for chat, reply in sent(rapp))
    assert "3 thg 12, 2026" in texts["HS001"].text and "còn 2 ngày" in texts["HS001"].text
    assert "Dec 3, 2026" in texts["HS002"].text and "2 days left" in texts["HS002"].text
    labels = [b.label for row in texts["HS002"].buttons for b in row]
    assert labels == ["🔁 Renew", "🔕 Stop this kind of reminder"]


# -- opt-outs, settings, unreachable ----------------------------------------------------------------

async def test_stop_button_opts_out_and_later_reminders_are_not_sent(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS002", date(2026, 12, 3))
    await sweeper_for(rapp).sweep()
    chat = ChatDriver(rapp, user="HS002", channel=CHANNEL)
    chat.last = [sent(rapp)[0][1]]
    await chat.press("Stop this kind")
    assert "Switched off: Due soon" in chat.text
    await lend(rapp.db, "HS002", date(2026, 12, 2))
    await sweeper_for(rapp).sweep()
    assert len(sent(rapp)) == 1                              # not planned at all
    # opted out after planning: skipped at send time
    clock.set(at(2026, 12, 1, 5))
    await lend(rapp.db, "HS002", date(2026, 12, 1))
    await reminders.plan(rapp.db, clock)
    await chat.say("/reminders off due_today")
    clock.set(at(2026, 12, 1, 9))
    await sweeper_for(rapp).sweep()
    assert len(sent(rapp)) == 1
    assert any(n.last_error == "opted out" for n in await notices(rapp.db))


async def test_reminders_settings_command_toggles(rapp: App):
    chat = ChatDriver(rapp, user="HS002", channel=CHANNEL)
    await chat.say("/reminders")
    assert "Your reminders" in chat.text and len(chat.last[0].buttons) == 6
    assert "between 20:00 and 07:00" in chat.text                 # the library's quiet hours
    await chat.press("Overdue")
    assert chat.last[0].edit and "🔕 Overdue" in [b.label for row in chat.last[0].buttons for b in row]
    await chat.press("Overdue")
    assert "✅ Overdue" in [b.label for row in chat.last[0].buttons for b in row]
    await chat.say("/reminders off nonsense")
    assert "no reminder called «nonsense»" in chat.text
    guest = ChatDriver(rapp, user="stranger", channel=CHANNEL)
    await guest.say("/reminders")
    assert "/reminders" not in guest.text or "link" in guest.text.lower()
    await guest.press(chat.find_button("Overdue") or "")     # someone else's button is refused
    assert "expired" in guest.text or "hết hạn" in guest.text


async def test_unreachable_chat_is_marked_skipped_and_listed_for_librarians(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    rapp.deps.outbound[CHANNEL].unreachable.add("HS001")
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await lend(rapp.db, "HS002", date(2026, 12, 1))
    report = await sweeper_for(rapp).sweep()
    assert report.unreachable == 1 and report.messages == 1  # the failing chat did not block the other
    async with rapp.db.session() as s:
        identity = (await s.execute(select(ChatIdentity).where(ChatIdentity.chat_id == "HS001"))).scalar_one()
    assert identity.unreachable_at is not None
    await link(rapp.db, "TT001", language="en")
    librarian = ChatDriver(rapp, user="TT001", channel=CHANNEL)
    await librarian.say("/unreachable")
    assert "Nguyễn Văn An (HS001, class 10A1)" in librarian.text
    student = ChatDriver(rapp, user="HS002", channel=CHANNEL)
    await student.say("/unreachable")
    assert "Nguyễn Văn An" not in student.text
    # not planned again while unreachable; writing to the bot makes the chat reachable again
    await lend(rapp.db, "HS001", date(2026, 12, 2))
    assert (await reminders.plan(rapp.db, clock)).inserted == 0
    await ChatDriver(rapp, user="HS001", channel=CHANNEL).say("/start")
    assert (await reminders.plan(rapp.db, clock)).inserted == 1


async def test_patron_linked_on_a_channel_this_process_lacks_stays_pending(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await link(rapp.db, "HS003", channel="telegram")
    await lend(rapp.db, "HS003", date(2026, 12, 1))
    report = await sweeper_for(rapp).sweep()
    assert report.messages == 0
    [notice] = await notices(rapp.db)
    assert notice.status == NotificationStatus.PENDING       # not lost: the Telegram process sends it


# -- failures, crashes, concurrency -----------------------------------------------------------------

class ScriptedChannel(CollectingChannel):
    """Sends, fails or 'dies' per chat as told."""

    def __init__(self, behaviour: dict[str, BaseException] | None = None) -> None:
        super().__init__(CHANNEL)
        self.behaviour = behaviour or {}
        self.calls = 0

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        self.calls += 1
        await asyncio.sleep(0)
        error = self.behaviour.get(chat_id)
        if isinstance(error, Killed):
            self.sent.append((chat_id, reply))   # the request went out, then the process died
            raise error
        if error is not None:
            raise error
        return await super().send(chat_id, reply)


class Killed(BaseException):
    """Stands for the process being killed: nothing after it runs."""


async def test_failed_delivery_retries_with_backoff_and_does_not_block_others(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    channel = ScriptedChannel({"HS001": DeliveryFailed("502 Bad Gateway")})
    rapp.deps.outbound[CHANNEL] = channel
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await lend(rapp.db, "HS002", date(2026, 12, 1))
    report = await sweeper_for(rapp).sweep()
    assert report.retry == 1 and report.messages == 1
    assert (await sweeper_for(rapp).sweep()).messages == 0   # backing off
    channel.behaviour.clear()
    clock.set(clock.now() + timedelta(minutes=2))
    assert (await sweeper_for(rapp).sweep()).messages == 1
    assert [chat for chat, _ in channel.sent] == ["HS002", "HS001"]


async def test_retry_after_is_honoured(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    error = DeliveryFailed("429")
    error.retry_after = 30
    rapp.deps.outbound[CHANNEL] = ScriptedChannel({"HS001": error})
    sweeper = sweeper_for(rapp)
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    before = sweeper.limiter.monotonic()
    await sweeper.sweep()
    assert sweeper.limiter.paused_until >= before + 30
    [notice] = await notices(rapp.db)
    assert aware(notice.send_after) == clock.now() + timedelta(seconds=30)


async def test_uncertain_delivery_is_never_resent_blindly(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    channel = ScriptedChannel({"HS001": DeliveryUncertain("timed out")})
    rapp.deps.outbound[CHANNEL] = channel
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    assert (await sweeper_for(rapp).sweep()).uncertain == 1
    channel.behaviour.clear()
    clock.set(clock.now() + timedelta(hours=1))
    assert (await sweeper_for(rapp).sweep()).messages == 0
    assert channel.calls == 1
    assert (await outbox.status_counts(rapp.db)) == {"uncertain": 1}
    assert await outbox.requeue_uncertain(rapp.db, clock) == 1   # a librarian's decision
    assert (await sweeper_for(rapp).sweep()).messages == 1


async def test_crash_between_claim_and_send_loses_nothing(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await lend(rapp.db, "HS002", date(2026, 12, 1))
    await reminders.plan(rapp.db, clock)
    claimed = await outbox.claim(rapp.db, clock, "dead-worker:1")   # … and the process dies
    assert len(claimed) == 2
    assert (await sweeper_for(rapp).sweep()).messages == 0             # still leased
    clock.set(clock.now() + outbox.LEASE + timedelta(seconds=1))
    report = await sweeper_for(rapp).sweep()
    assert report.released == 2 and report.messages == 2
    assert {n.status for n in await notices(rapp.db)} == {NotificationStatus.SENT}


async def test_crash_during_send_is_uncertain_and_the_rest_is_sent_once(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await link(rapp.db, "HS003")
    for card in ("HS001", "HS002", "HS003"):
        await lend(rapp.db, card, date(2026, 12, 1))
    channel = ScriptedChannel({"HS002": Killed()})
    rapp.deps.outbound[CHANNEL] = channel
    with pytest.raises(Killed):
        await sweeper_for(rapp, concurrency=1).sweep()
    first = [chat for chat, _ in channel.sent]
    assert "HS002" in first
    channel.behaviour.clear()
    clock.set(clock.now() + outbox.LEASE + timedelta(seconds=1))
    report = await sweeper_for(rapp).sweep()
    assert report.lost == 1
    chats = [chat for chat, _ in channel.sent]
    assert sorted(chats) == ["HS001", "HS002", "HS003"]                # each exactly once
    states = {n.chat_id or n.last_error: n.status for n in await notices(rapp.db)}
    assert list(states.values()).count(NotificationStatus.UNCERTAIN) == 1


async def test_a_sweeper_whose_lease_was_taken_over_does_not_send(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await reminders.plan(rapp.db, clock)
    [slow] = await outbox.claim(rapp.db, clock, "slow:1")
    clock.set(clock.now() + outbox.LEASE + timedelta(seconds=1))
    assert (await sweeper_for(rapp).sweep()).messages == 1            # taken over and sent
    assert await outbox.attempt(rapp.db, clock, "slow:1", [slow.id]) == set()


@pytest.mark.parametrize("workers", [2, 3])
async def test_concurrent_sweepers_send_each_notice_once(rapp: App, clock: Clock, workers: int):
    clock.set(at(2026, 12, 1, 9))
    async with rapp.db.transaction() as s:                  # 40 more linked patrons with 2 loans each
        library = (await s.execute(select(Library))).scalar_one()
        for i in range(40):
            s.add(Patron(library_id=library.id, card_number=f"X{i:03d}", full_name=f"Học Sinh {i}",
                         class_name="12A1", preferences={}))
    async with rapp.db.transaction() as s:
        for p in (await s.execute(select(Patron).where(Patron.card_number.like("X%")))).scalars():
            s.add(ChatIdentity(channel=CHANNEL, external_id=p.card_number, chat_id=p.card_number, patron_id=p.id))
    for i in range(40):
        await lend(rapp.db, f"X{i:03d}", date(2026, 12, 1))
        await lend(rapp.db, f"X{i:03d}", date(2026, 11, 30))
    await reminders.plan(rapp.db, clock)
    channel = ScriptedChannel()
    sweepers = []
    databases = [Database(rapp.db.url) for _ in range(workers)]       # separate engines, real concurrency
    for n, database in enumerate(databases):
        deps = rapp.deps.__class__(**{**rapp.deps.__dict__, "db": database, "outbound": {CHANNEL: channel}})
        router = rapp.router.__class__(deps)
        router.notices = rapp.router.notices
        fake = FakeTime()
        sweepers.append(Sweeper(router, worker=f"w{n}", batch=7, concurrency=3,
                                limiter=RateLimiter(monotonic=fake.monotonic, sleep=fake.sleep)))
    try:
        reports = await asyncio.gather(*(s.sweep() for s in sweepers))
    finally:
        for database in databases:
            await database.dispose()
    chats = [chat for chat, _ in channel.sent]
    assert sorted(set(chats)) == sorted(f"X{i:03d}" for i in range(40))
    async with rapp.db.session() as s:
        statuses = dict((await s.execute(select(Notification.status, func.count()).group_by(Notification.status))).all())
    assert statuses == {NotificationStatus.SENT: 80}
    assert sum(r.sent for r in reports) == 80
    # a patron's two notices may be split across sweepers at a batch edge, but never sent twice
    assert len(chats) <= 80 and sum(r.messages for r in reports) == len(chats)


# -- pickups, closed days, teachers ----------------------------------------------------------------

async def _ready_hold(db: Database, card: str, deadline: date) -> Hold:
    async with db.transaction() as s:
        patron = (await s.execute(select(Patron).where(Patron.card_number == card))).scalar_one()
        copy = (await s.execute(select(Copy).where(Copy.status == CopyStatus.AVAILABLE).limit(1))).scalar_one()
        copy.status = CopyStatus.ON_HOLD_SHELF
        hold = Hold(library_id=patron.library_id, title_id=copy.title_id, patron_id=patron.id,
                    status=HoldStatus.READY, queued_at=datetime(2026, 11, 20, tzinfo=UTC), copy_id=copy.id,
                    ready_at=datetime(2026, 11, 30, tzinfo=UTC), pickup_deadline=deadline)
        s.add(hold)
    return hold


async def test_pickup_tomorrow_respects_weekends_and_closed_days(rapp: App, clock: Clock):
    # Deadline Monday 7 Dec; Saturday and Sunday are the school's weekend: say it on Friday.
    await _ready_hold(rapp.db, "HS002", date(2026, 12, 7))
    clock.set(at(2026, 12, 3, 9))                            # Thursday: too early
    assert (await sweeper_for(rapp).sweep()).messages == 0
    clock.set(at(2026, 12, 4, 9))                            # Friday
    assert (await sweeper_for(rapp).sweep()).messages == 1
    [(chat, reply)] = sent(rapp)
    assert "Dec 7, 2026" in reply.text and "Cancel hold" in reply.buttons[0][0].label
    clock.set(at(2026, 12, 6, 9))
    assert (await sweeper_for(rapp).sweep()).messages == 0   # once
    # A closed range from the school calendar (Thu–Fri 10–11 Dec): say it on Wednesday 9 Dec
    async with rapp.db.transaction() as s:
        library = (await s.execute(select(Library))).scalar_one()
        s.add(ClosedDay(library_id=library.id, start_date=date(2026, 12, 10), end_date=date(2026, 12, 11),
                        name="Hội khoẻ Phù Đổng"))
    await _ready_hold(rapp.db, "HS001", date(2026, 12, 14))
    clock.set(at(2026, 12, 9, 9))
    assert (await sweeper_for(rapp).sweep()).messages == 1
    assert "14 thg 12, 2026" in sent(rapp)[-1][1].text


async def test_renew_and_cancel_buttons_on_reminders_use_circulation(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    loan = await lend(rapp.db, "HS002", date(2026, 12, 3))
    hold = await _ready_hold(rapp.db, "HS002", date(2026, 12, 2))
    await sweeper_for(rapp).sweep()
    [(_, digest)] = sent(rapp)                               # one digest: due soon + pickup tomorrow
    chat = ChatDriver(rapp, user="HS002", channel=CHANNEL)
    chat.last = [digest]
    await chat.press("Renew")
    assert "Renewed" in chat.text and "Dec 17, 2026" in chat.text
    async with rapp.db.session() as s:
        assert (await s.get(Loan, loan.id)).due_date == date(2026, 12, 17)
    chat.last = [digest]
    await chat.press("Renew")                                # a double tap renews once
    assert "Renewed" not in chat.text
    chat.last = [digest]
    await chat.press("Cancel hold")
    async with rapp.db.session() as s:
        assert (await s.get(Hold, hold.id)).status == HoldStatus.CANCELLED
    # the reminders the renewal made stale are not sent
    clock.set(at(2026, 12, 2, 9))
    await sweeper_for(rapp).sweep()
    assert len(sent(rapp)) == 1


async def test_event_notices_of_other_features_go_through_their_renderers(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    hold = await _ready_hold(rapp.db, "HS001", date(2026, 12, 4))
    async with rapp.db.transaction() as s:                  # what circulation and reflections enqueue
        await outbox.enqueue(s, patron_id=hold.patron_id, kind="hold_ready",
                                    key=f"hold_ready:{hold.id}", send_after=clock.now(),
                                    payload={"hold_id": hold.id})
        await outbox.enqueue(s, patron_id=hold.patron_id, kind="reflection_approved",
                                    key="reflection_approved:1", send_after=clock.now(),
                                    payload={"title": "Dế Mèn phiêu lưu ký"})
        await outbox.enqueue(s, patron_id=hold.patron_id, kind="campaign_news",
                                    key="campaign_news:1", send_after=clock.now(), payload={"x": 1})
    report = await sweeper_for(rapp).sweep()
    texts = [reply.text for _, reply in sent(rapp)]
    assert len(texts) == 2
    assert any("đã sẵn sàng" in t and "4 thg 12, 2026" in t for t in texts)   # title/deadline filled in
    assert any("Dế Mèn phiêu lưu ký" in t for t in texts)
    # a kind nobody registered a renderer for fails on its own, visibly, without blocking the rest
    assert report.failed == 1
    rapp.router.notice("campaign_news", lambda ctx, payload: _async(Reply(f"ok {payload['x']}")))
    async with rapp.db.transaction() as s:
        await s.execute(update(Notification).where(Notification.key == "campaign_news:1")
                        .values(status=NotificationStatus.PENDING))
    await sweeper_for(rapp).sweep()
    assert sent(rapp)[-1][1].text == "ok 1"


async def _async(value):
    return value


async def test_weekly_class_digest_for_teachers_who_opt_in(rapp: App, clock: Clock):
    await link(rapp.db, "GV001", language="vi")
    await lend(rapp.db, "HS002", date(2026, 11, 20))        # 10A1, overdue
    await lend(rapp.db, "HS003", date(2026, 11, 20))        # 11A1: not her class
    clock.set(at(2026, 11, 30, 9))                          # Monday
    teacher = ChatDriver(rapp, user="GV001", channel=CHANNEL)
    await teacher.say("/reminders")
    assert any("Tổng hợp sách quá hạn của lớp" in b.label for row in teacher.last[0].buttons for b in row)
    await sweeper_for(rapp).sweep()
    assert not [c for c, _ in sent(rapp) if c == "GV001"]   # off by default
    await teacher.say("/reminders on class_overdue")
    await sweeper_for(rapp).sweep()
    digests = [r for c, r in sent(rapp) if c == "GV001"]
    assert len(digests) == 1 and "Lớp 10A1: 1 cuốn" in digests[0].text and "Lò Thị Hoa" in digests[0].text
    assert "Páo" not in digests[0].text
    clock.set(at(2026, 12, 2, 9))
    await sweeper_for(rapp).sweep()
    assert len([c for c, _ in sent(rapp) if c == "GV001"]) == 1  # once a week


# -- dry run, limiter, scheduler -------------------------------------------------------------------

async def test_dry_run_lists_without_recording_claiming_or_sending(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await lend(rapp.db, "HS001", date(2026, 12, 2))
    report = await sweeper_for(rapp).sweep(dry_run=True)
    assert len(report.preview) == 1 and report.preview[0].kind == "digest"
    assert await notices(rapp.db) == [] and sent(rapp) == []
    clock.set(at(2026, 12, 1, 22))
    assert (await sweeper_for(rapp).sweep(dry_run=True)).quiet_libraries


async def test_max_messages_gives_the_rest_back(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await lend(rapp.db, "HS002", date(2026, 12, 1))
    assert (await sweeper_for(rapp).sweep(max_messages=1)).messages == 1
    assert sorted(n.status for n in await notices(rapp.db)) == [NotificationStatus.PENDING, NotificationStatus.SENT]
    assert (await sweeper_for(rapp).sweep()).messages == 1


async def test_rate_limiter_paces_overall_and_per_chat():
    fake = FakeTime()
    limiter = RateLimiter(per_second=28, per_chat_interval=1.05, monotonic=fake.monotonic, sleep=fake.sleep)
    times: dict[str, list[float]] = {}
    order: list[float] = []

    async def send(chat: str) -> None:
        await limiter.acquire(chat)
        times.setdefault(chat, []).append(fake.now)
        order.append(fake.now)

    for i in range(120):
        await send(f"c{i % 10}")
    gaps = [b - a for a, b in zip(order, order[1:], strict=False)]
    assert min(gaps) >= 1 / 28 - 1e-9
    for chat_times in times.values():
        assert min(b - a for a, b in zip(chat_times, chat_times[1:], strict=False)) >= 1.05 - 1e-9
    limiter.pause(5)
    start = fake.now
    await send("c0")
    assert fake.now >= start + 5
    # sends paced apart but delayed before going out (a database lock) cannot bunch into a burst
    paced = []
    for i in range(60):
        await limiter.acquire(f"d{i}")
        paced.append(fake.now)
    fake.now = paced[-1] + 0.5
    gone = []
    for _ in paced:
        await limiter.gate()
        gone.append(fake.now)
    assert all(sum(1 for t in gone if s <= t < s + 1.0) <= 28 for s in gone)


async def test_scheduler_registers_the_sweep(rapp: App):
    from bot.scheduler import start_scheduler

    scheduler = start_scheduler(rapp.router, interval_minutes=5, first_run_in=3600)
    try:
        assert scheduler.get_job("reminders") is not None
    finally:
        scheduler.shutdown(wait=False)


async def test_cli_remind_dry_run_and_status(rapp: App, clock: Clock, capsys):
    from bot.cli import build_parser, cmd_remind

    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    parser, _ = build_parser()
    assert await cmd_remind(rapp, parser.parse_args(["remind", "--dry-run"])) == 0
    out = capsys.readouterr().out
    assert "Nguyễn Văn An" in out and "1 message(s) would be sent" in out
    assert await cmd_remind(rapp, parser.parse_args(["remind", "--once"])) == 0
    assert "sent 1 messages" in capsys.readouterr().out
    assert await cmd_remind(rapp, parser.parse_args(["remind", "--status"])) == 0
    assert "sent 1" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["claim", "send"])
async def test_killed_sweeper_process_loses_nothing_and_repeats_nothing(rapp: App, clock: Clock, tmp_path, mode):
    """kill -9 a real sweeper process after it claimed (mode=claim) or mid-send (mode=send)."""
    import os
    import signal
    import sys

    clock.set(at(2026, 12, 1, 9))
    cards = ["HS003", "HS004", "GV001", "TT001"]
    for card in cards:
        await link(rapp.db, card)
    for card in ["HS001", "HS002", *cards]:
        await lend(rapp.db, card, date(2026, 12, 1))
    out = tmp_path / "delivered.txt"
    root = ROOT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sweep_worker", rapp.db.url, str(out), clock.now().isoformat(), mode, "2",
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        for _ in range(600):                                    # the worker signals where it hangs
            if out.exists() and "HANG" in out.read_text():
                break
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert "HANG" in out.read_text(), out.read_text() if out.exists() else "no output"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    before = [line for line in out.read_text().split() if line not in ("HANG", "DONE")]
    assert len(before) == (2 if mode == "claim" else 3)
    # the restarted sweeper (here: this process) waits for the lease, then finishes the job
    assert (await sweeper_for(rapp).sweep()).messages == 0
    clock.set(clock.now() + outbox.LEASE + timedelta(seconds=1))
    report = await sweeper_for(rapp).sweep()
    after = [chat for chat, _ in sent(rapp)]
    delivered = before + after
    assert len(delivered) == len(set(delivered)), delivered   # nothing twice
    statuses = sorted(n.status.value for n in await notices(rapp.db))
    if mode == "claim":
        assert sorted(delivered) == sorted(["HS001", "HS002", *cards])   # nothing lost
        assert report.lost == 0 and statuses == ["sent"] * 6
    else:
        # the message in flight when the process died went out, but nobody can know: uncertain
        assert sorted(delivered) == sorted(["HS001", "HS002", *cards])
        assert report.lost == 1 and statuses == ["sent"] * 5 + ["uncertain"]
