"""Recovery after a crash (issue 16): heartbeats free a dead sweeper's claims within a minute,
attempted notices stay uncertain, and a later reminder about the same loan supersedes them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import date, timedelta

import pytest

from bot.app import App
from handlers.messages import DeliveryUncertain
from services import outbox, reminders
from services.common import Clock
from services.models import NotificationStatus
from tests import test_reminders
from tests.test_reminders import (
    ROOT,
    ScriptedChannel,
    at,
    lend,
    link,
    notices,
    sent,
    sweeper_for,
)

rapp = test_reminders.rapp   # the fixture: demo library, a collecting channel, HS001/HS002 linked
WITHIN_A_MINUTE = outbox.HEARTBEAT_TIMEOUT + timedelta(seconds=5)


async def _killed_worker(rapp: App, clock: Clock, tmp_path, mode: str) -> list[str]:
    """Run tests/sweep_worker.py until it hangs (after 2 messages), then kill -9 it."""
    out = tmp_path / "delivered.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sweep_worker", rapp.db.url, str(out), clock.now().isoformat(), mode, "2",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(600):
            if (out.exists() and "HANG" in out.read_text()) or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert "HANG" in out.read_text(), out.read_text() if out.exists() else "no output"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return [line for line in out.read_text().split() if line not in ("HANG", "DONE")]


@pytest.mark.parametrize("mode", ["claim", "send"])
async def test_a_killed_sweepers_claims_go_out_within_a_minute(rapp: App, clock: Clock, tmp_path, mode):
    clock.set(at(2026, 12, 1, 9))
    cards = ["HS003", "HS004", "GV001", "TT001"]
    for card in cards:
        await link(rapp.db, card)
    for card in ["HS001", "HS002", *cards]:
        await lend(rapp.db, card, date(2026, 12, 1))
    before = await _killed_worker(rapp, clock, tmp_path, mode)
    # The dead worker's heartbeat is fresh for a moment: its claims are still its own.
    clock.set(clock.now() + timedelta(seconds=20))
    sweeper = sweeper_for(rapp)
    assert await sweeper.recover() == 0 and sent(rapp) == []
    # Less than a minute after it stopped, the recovery check takes them back and sends them.
    clock.set(clock.now() - timedelta(seconds=20) + WITHIN_A_MINUTE)
    released = await sweeper.recover()
    delivered = before + [chat for chat, _ in sent(rapp)]
    assert len(delivered) == len(set(delivered)), delivered                # nothing twice
    assert sorted(delivered) == sorted(["HS001", "HS002", *cards])        # nothing lost
    statuses = sorted(n.status.value for n in await notices(rapp.db))
    if mode == "claim":
        assert released == 4 and statuses == ["sent"] * 6
    else:   # the message in flight when it died went out, but nobody can know: uncertain
        assert released == 3 and statuses == ["sent"] * 5 + ["uncertain"]


async def test_a_live_sweepers_claims_are_not_taken_even_after_a_minute(rapp: App, clock: Clock):
    clock.set(at(2026, 12, 1, 9))
    await lend(rapp.db, "HS001", date(2026, 12, 1))
    await reminders.plan(rapp.db, clock)
    await outbox.beat(rapp.db, clock, "slow:1")
    [claim] = await outbox.claim(rapp.db, clock, "slow:1")
    for _ in range(6):       # a minute of heartbeats from a sweeper that is slow but alive
        clock.set(clock.now() + timedelta(seconds=10))
        await outbox.beat(rapp.db, clock, "slow:1")
        assert await outbox.recover(rapp.db, clock) == (0, 0)
    assert await outbox.attempt(rapp.db, clock, "slow:1", [claim.id]) == {claim.id}
    # Alive but stuck past the whole lease: taken back anyway, and (attempted) uncertain.
    clock.set(clock.now() + outbox.LEASE)
    await outbox.beat(rapp.db, clock, "slow:1")
    assert await outbox.recover(rapp.db, clock) == (0, 1)


async def test_the_next_stage_supersedes_an_uncertain_reminder(rapp: App, clock: Clock, capsys):
    from bot.cli import build_parser, cmd_remind

    clock.set(at(2026, 12, 1, 9))
    loan = await lend(rapp.db, "HS001", date(2026, 12, 2))
    other = await lend(rapp.db, "HS002", date(2026, 12, 2))
    channel = ScriptedChannel({"HS001": DeliveryUncertain("read timeout"), "HS002": DeliveryUncertain("x")})
    rapp.deps.outbound["test"] = channel
    assert (await sweeper_for(rapp).sweep()).uncertain == 2               # both due_soon uncertain
    parser, _ = build_parser()
    assert await cmd_remind(rapp, parser.parse_args(["remind", "--status"])) == 0
    out = capsys.readouterr().out
    assert "uncertain 2" in out and "không chắc" in out and "hai lần" in out
    channel.behaviour = {"HS002": DeliveryUncertain("again")}
    clock.set(at(2026, 12, 2, 9))                                           # due today
    report = await sweeper_for(rapp).sweep()
    assert report.messages == 1 and report.uncertain == 1
    by_key = {n.key: n for n in await notices(rapp.db)}
    soon = by_key[f"due_soon:loan={loan.id}:2026-12-02"]
    assert soon.status == NotificationStatus.SUPERSEDED and "due_today" in soon.last_error
    assert by_key[f"due_today:loan={loan.id}:2026-12-02"].status == NotificationStatus.SENT
    # HS002's due_today is uncertain too: the newer uncertain one supersedes the older.
    assert by_key[f"due_soon:loan={other.id}:2026-12-02"].status == NotificationStatus.SUPERSEDED
    assert by_key[f"due_today:loan={other.id}:2026-12-02"].status == NotificationStatus.UNCERTAIN
    assert await outbox.requeue_uncertain(rapp.db, clock) == 1             # only the latest is left
    assert await cmd_remind(rapp, parser.parse_args(["remind", "--status"])) == 0
    assert "superseded 2" in capsys.readouterr().out


def test_subjects_of_notice_keys():
    assert outbox.subject("due_soon:loan=12:2026-12-03") == outbox.subject("overdue:loan=12:2026-11-01:7") \
        == "loan=12"
    assert outbox.subject("pickup_tomorrow:hold=5:2026-12-03") == outbox.subject("hold_ready:5") == "hold=5"
    assert outbox.subject("reflection:3:approve:2026") is None and outbox.subject("badge:1:x") is None


async def test_the_scheduler_checks_for_dead_sweepers_every_few_seconds(rapp: App):
    from bot.scheduler import start_scheduler

    scheduler = start_scheduler(rapp.router, first_run_in=3600)
    try:
        job = scheduler.get_job("recover")
        assert job is not None and job.trigger.interval.total_seconds() <= 15
        assert (outbox.HEARTBEAT_TIMEOUT + job.trigger.interval).total_seconds() < 60   # "within a minute"
    finally:
        scheduler.shutdown(wait=False)
