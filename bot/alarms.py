"""The watchdog: tells the deployment's admins (patrons with the admin role) when something needs
a person, through the outbox (their chat) and the log.

Alarms: no reminder sweep for 15 minutes; the oldest notice due has waited more than an hour; a
platform refuses the bot's own token (401/403 on getMe); the database unreachable for a minute
(logged at once; the chat notice follows when the database answers again, as it cannot be
stored before). Every worker runs a watchdog; the outbox key of an incident is the same in all
of them, so each admin is told once per incident. Alarm notices follow the admin library's
quiet hours like any notice; the log line is immediate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text

from bot import doctor, observe
from handlers.ops import NOTICE_KIND
from services import ops, outbox
from services.common import Clock
from services.models import Patron, Role

log = logging.getLogger(__name__)

NO_SWEEP = timedelta(minutes=15)
OUTBOX_STUCK = timedelta(hours=1)
DB_DOWN = timedelta(minutes=1)

ENGLISH = {   # the log line, for the technician reading it (the chat notice is translated)
    "no_sweep": "no reminder sweep for {minutes} minutes",
    "outbox_stuck": "{pending} notices waiting, the oldest for {minutes} minutes",
    "platform_refused": "{platform} refuses the bot's token (status {status})",
    "database_down": "the database has been unreachable since {since}",
}


@dataclass
class Raised:
    alarm: str
    key: str
    params: dict[str, Any]
    notified: int


class Watchdog:
    def __init__(self, app, *, clock: Clock | None = None, platform_every: float = 300.0) -> None:
        self.app = app
        self.db = app.db
        self.settings = app.settings
        self.clock = clock or app.deps.clock
        self.started = self.clock.now()
        self.platform_every = platform_every
        self.last_platform_check = -platform_every
        self.active: set[str] = set()
        self.down_since: datetime | None = None
        self.down_logged = False
        self.raised: list[Raised] = []   # what this watchdog raised (for tests and `doctor`)

    async def tick(self) -> None:
        now = self.clock.now()
        if not await self._database_ok(now):
            return
        in_use, size = observe._pool_figures(self.db)
        observe.POOL_IN_USE.set(in_use)
        observe.POOL_SIZE.set(size)
        await self._check_sweep(now)
        await self._check_outbox(now)
        if time.monotonic() - self.last_platform_check >= self.platform_every:
            self.last_platform_check = time.monotonic()
            await self._check_platforms(now)

    async def _database_ok(self, now: datetime) -> bool:
        try:
            async with asyncio.timeout(10):
                async with self.db.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to answer is "unreachable"
            if self.down_since is None:
                self.down_since = now
            if now - self.down_since >= DB_DOWN and not self.down_logged:
                self.down_logged = True
                log.error("ALARM database_down: %s (%s)", ENGLISH["database_down"].format(
                    since=f"{self.down_since:%Y-%m-%d %H:%M} UTC"), type(exc).__name__)
            return False
        if self.down_since is not None:
            since, self.down_since = self.down_since, None
            if self.down_logged:
                self.down_logged = False
                minutes = max(1, int((now - since).total_seconds() // 60))
                log.warning("database reachable again after %d minutes", minutes)
                await self.alarm("database_down", f"{since:%Y%m%d%H}",
                                 since=f"{since:%Y-%m-%d %H:%M} UTC", minutes=minutes, log_it=False)
        return True

    async def _check_sweep(self, now: datetime) -> None:
        if not self.settings.reminders_enabled:
            return
        last = await ops.last_beat(self.db, ops.SWEEP)
        reference = last.at if last is not None else self.started
        if now - reference > NO_SWEEP:
            minutes = int((now - reference).total_seconds() // 60)
            await self.alarm("no_sweep", f"{reference:%Y%m%d%H%M}", minutes=minutes)
        else:
            self.active.discard("no_sweep")

    async def _check_outbox(self, now: datetime) -> None:
        backlog = await ops.outbox_backlog(self.db, self.clock)
        if backlog.oldest_due is not None and backlog.oldest_age(now) > OUTBOX_STUCK.total_seconds():
            await self.alarm("outbox_stuck", f"{backlog.oldest_due:%Y%m%d%H%M}", pending=backlog.pending,
                             minutes=int(backlog.oldest_age(now) // 60))
        else:
            self.active.discard("outbox_stuck")

    async def _check_platforms(self, now: datetime) -> None:
        for check in doctor.platform_checks(self.settings):
            finding = await check()
            platform = finding.params.get("platform", "?")
            name = f"platform_refused:{platform}"
            if finding.key == "ops.doctor_platform_token_refused":
                await self.alarm("platform_refused", f"{platform}:{now:%Y%m%d%H}", platform=platform,
                                 status=finding.params.get("status", 401), active_name=name)
            else:
                self.active.discard(name)

    async def alarm(self, alarm: str, incident: str, *, log_it: bool = True, active_name: str | None = None,
                    **params: Any) -> None:
        """Log once per incident in this process, and enqueue one notice per admin per incident."""
        name = active_name or alarm
        if name in self.active:
            return
        self.active.add(name)
        if log_it:
            log.error("ALARM %s: %s", alarm, ENGLISH[alarm].format(**params))
        key_base = f"alarm:{alarm}:{incident}"[:120]
        now = self.clock.now()
        notified = 0
        async with self.db.transaction() as s:
            admins = list((await s.execute(select(Patron.id).where(Patron.role == Role.ADMIN))).scalars())
            for patron_id in admins:
                notified += await outbox.enqueue(s, patron_id=patron_id, kind=NOTICE_KIND,
                                                 key=f"{key_base}:{patron_id}", send_after=now,
                                                 payload={"alarm": alarm, "params": params})
        if not admins:
            log.warning("no patron has the admin role: alarm %s is only in this log", alarm)
        self.raised.append(Raised(alarm, key_base, params, notified))

    async def run(self, every: float = 15.0) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("watchdog check failed; trying again in %.0f s", every)
            await asyncio.sleep(every)


def start(app, **options: Any) -> asyncio.Task:
    watchdog = Watchdog(app, **options)
    app.deps.extras["watchdog"] = watchdog
    return asyncio.create_task(watchdog.run(), name="docsach-watchdog")


async def stop(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
