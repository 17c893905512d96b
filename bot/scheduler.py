"""The reminder sweeper and the scheduler that runs it every few minutes.

A sweep plans notices from the database, claims a batch, renders each message through the
renderer registered for its kind (``router.notice``) and pushes it through the patron's channel
(``Deps.outbound``) at a paced rate: about 28 messages a second overall and at most one per chat
per second, so Telegram never needs to answer 429. The scheduler's memory holds nothing: a
restarted process simply sweeps again (see ``services/outbox.py`` for the once-only rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot import logs, observe
from handlers.core import Context, Router
from handlers.messages import ChatUnreachable, DeliveryFailed, DeliveryUncertain, Incoming, Reply
from services import circulation, ops, outbox, patrons, reminders
from services.common import Clock
from services.outbox import Claimed, Recipient

log = logging.getLogger(__name__)

# Notices for a chat on a channel this process does not run wait this long before another look.
LATER = timedelta(minutes=5)


class RateLimiter:
    """Paces sends: ``per_second`` overall (evenly spaced, no bursts) and one per chat per
    ``per_chat_interval`` seconds. ``pause`` honours a 429's ``retry_after`` for everyone.

    ``acquire`` paces; ``gate``, called right before the request goes out, also keeps at most
    ``window`` sends in any second, so sends delayed between the two (a database write waiting
    for a lock) cannot bunch up into a burst Telegram would answer with 429.
    Time and sleep are injectable, so tests never wait."""

    def __init__(self, per_second: float = 28.0, per_chat_interval: float = 1.05, *, window: int | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.interval = 1.0 / per_second
        self.per_chat_interval = per_chat_interval
        self.window = window if window is not None else max(1, int(per_second))
        self.monotonic = monotonic
        self.sleep = sleep
        self.next_slot = 0.0
        self.paused_until = 0.0
        self.chat_next: dict[str, float] = {}
        self.recent: deque[float] = deque()

    async def gate(self) -> None:
        while True:
            now = self.monotonic()
            while self.recent and self.recent[0] <= now - 1.0:
                self.recent.popleft()
            if len(self.recent) < self.window:
                self.recent.append(now)
                return
            await self.sleep(self.recent[0] + 1.0 - now)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.monotonic() + seconds)

    async def acquire(self, chat: str) -> None:
        while True:
            now = self.monotonic()
            wait = max(self.paused_until, self.chat_next.get(chat, 0.0)) - now
            if wait > 0:
                await self.sleep(wait)
                continue
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
            self.chat_next[chat] = slot + self.per_chat_interval
            if len(self.chat_next) > 50_000:
                self.chat_next = {k: v for k, v in self.chat_next.items() if v > now}
            if slot > now:
                await self.sleep(slot - now)
            return


@dataclass
class Message:
    """One outgoing message: a notice, or a digest of several for the same person."""

    recipient: Recipient
    notices: list[Claimed]
    reply: Reply

    @property
    def ids(self) -> list[int]:
        return [n.id for n in self.notices]


@dataclass
class Preview:
    name: str
    channel: str
    chat_id: str
    kind: str
    text: str


@dataclass
class SweepReport:
    planned: int = 0
    released: int = 0         # expired claims given back (never attempted)
    lost: int = 0             # expired claims that were mid-send → uncertain
    claimed: int = 0
    messages: int = 0         # messages delivered
    sent: int = 0             # notices delivered (a digest carries several)
    skipped: int = 0
    retry: int = 0
    uncertain: int = 0
    failed: int = 0
    unreachable: int = 0
    quiet_libraries: list[int] = field(default_factory=list)
    preview: list[Preview] = field(default_factory=list)

    def summary(self) -> str:
        return (f"planned {self.planned}, sent {self.messages} messages ({self.sent} notices), "
                f"skipped {self.skipped}, retry later {self.retry}, uncertain {self.uncertain}, "
                f"failed {self.failed}, unreachable {self.unreachable}")


class Sweeper:
    """Plans, claims and delivers. Safe to run in several processes at once."""

    def __init__(self, router: Router, *, limiter: RateLimiter | None = None, worker: str | None = None,
                 concurrency: int = 8, batch: int = 250, lease: timedelta = outbox.LEASE) -> None:
        self.router = router
        self.deps = router.deps
        self.limiter = limiter or RateLimiter()
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = concurrency
        self.batch = batch
        self.lease = lease
        self.busy = asyncio.Lock()       # one sweep at a time in this process
        self.resweep = False             # claims were taken back while a sweep ran: sweep again

    @property
    def db(self):
        return self.deps.db

    @property
    def clock(self) -> Clock:
        return self.deps.clock

    def channel_names(self) -> list[str]:
        return sorted(self.deps.outbound, key=lambda name: (name != "telegram", name))

    # -- one sweep ----------------------------------------------------------------------------
    async def sweep(self, *, dry_run: bool = False, max_messages: int | None = None) -> SweepReport:
        report = SweepReport()
        if dry_run:
            return await self._preview(report)
        async with self.busy:
            token = outbox.new_claim_token(self.worker)
            await outbox.beat(self.db, self.clock, token)    # alive before the first claim
            heart = asyncio.create_task(self._heartbeat(token))
            try:
                return await self._sweep(report, token, max_messages)
            finally:
                heart.cancel()
                with contextlib.suppress(BaseException):
                    await heart
                with contextlib.suppress(Exception):
                    await outbox.retire(self.db, self.clock, token)

    async def _heartbeat(self, token: str) -> None:
        """While this sweep runs, tell other sweepers it is alive (see ``outbox.recover``)."""
        while True:
            await asyncio.sleep(outbox.HEARTBEAT_EVERY.total_seconds())
            try:
                await outbox.beat(self.db, self.clock, token)
            except Exception as exc:   # a missed beat is harmless; several in a row free our claims
                log.warning("outbox heartbeat failed: %s", exc)

    async def recover(self) -> int:
        """Between sweeps (every few seconds): take back the claims of sweepers that died, and
        send them now rather than at the next sweep. Returns how many were taken back."""
        released, lost = await outbox.recover(self.db, self.clock, self.lease)
        if lost:
            log.warning("%d notice(s) were being sent by a sweeper that stopped: marked uncertain", lost)
        if released or self.resweep:
            if self.busy.locked():
                self.resweep = True     # the running sweep may have passed them; sweep again after it
            else:
                self.resweep = False
                report = await self.sweep()
                log.info("reminder sweep after taking back %d claim(s): %s", released, report.summary())
        return released

    async def _sweep(self, report: SweepReport, token: str, max_messages: int | None) -> SweepReport:
        report.planned = (await reminders.plan(self.db, self.clock)).inserted
        report.released, report.lost = await outbox.recover(self.db, self.clock, self.lease)
        open_ids = await reminders.defer_quiet(self.db, self.clock)
        rules = await reminders.library_rules(self.db)
        report.quiet_libraries = sorted(set(rules) - set(open_ids))
        budget = max_messages
        gate = asyncio.Semaphore(self.concurrency)
        # Pipelined: the next batch is claimed and rendered while the previous one is still
        # sending, so the sender never idles at batch edges. At most two batches are in flight.
        sending: asyncio.Task | None = None
        try:
            while open_ids and (budget is None or budget > 0):
                batch = await outbox.claim(self.db, self.clock, token, limit=self.batch, library_ids=open_ids)
                if not batch:
                    break
                report.claimed += len(batch)
                messages = await self._prepare(batch, token, rules, report)
                if budget is not None and len(messages) > budget:
                    rest = messages[budget:]
                    messages = messages[:budget]
                    await outbox.release(self.db, token, [i for m in rest for i in m.ids])
                if budget is not None:
                    budget -= len(messages)
                previous = sending
                sending = asyncio.create_task(self._deliver_all(messages, token, report, gate))
                if previous is not None:
                    await previous
                now = self.clock.now()
                open_ids = [lid for lid in open_ids if not rules[lid].is_quiet(now)]
        except BaseException:
            if sending is not None and not sending.done():
                sending.cancel()   # what it had not attempted is taken back when our heartbeat stops
                with contextlib.suppress(BaseException):
                    await sending
            raise
        if sending is not None:
            await sending
        return report

    async def _prepare(self, batch: list[Claimed], token: str, rules, report: SweepReport,
                       preview: bool = False) -> list[Message]:
        """Drop what is stale, opted out or unreachable; group the rest into messages; render."""
        people = await outbox.recipients(self.db, {n.patron_id for n in batch}, self.channel_names())
        library_of = {pid: r.library_id for pid, r in people.items()}
        stale = await reminders.stale(self.db, self.clock, batch, rules, library_of)
        skip: dict[str, list[int]] = {}
        later: list[int] = []
        keep: list[Claimed] = []
        for n in batch:
            person = people.get(n.patron_id)
            if n.id in stale:
                skip.setdefault(stale[n.id], []).append(n.id)
            elif person is None:
                skip.setdefault("no such patron", []).append(n.id)
            elif not reminders.enabled(person.preferences, n.kind):
                skip.setdefault("opted out", []).append(n.id)
            elif person.chat_id is None:
                if person.unreachable:
                    skip.setdefault("unreachable", []).append(n.id)
                else:
                    later.append(n.id)   # linked on a channel this process does not run: not ours
            else:
                keep.append(n)
        if not preview:
            for reason, ids in skip.items():
                done = await outbox.mark_skipped(self.db, token, ids, reason)
                report.skipped += done
            if later:
                await outbox.release(self.db, token, later, not_before=self.clock.now() + LATER)
        messages = []
        for group in reminders.group_messages(keep):
            await asyncio.sleep(0)   # let in-flight sends go out on time while a batch renders
            person = people[group[0].patron_id]
            try:
                reply = await self._render(person, group)
            except Exception as exc:  # a broken renderer fails its own notices, never the sweep
                log.exception("could not render notices %s for patron %s", [n.kind for n in group],
                              person.patron_id)
                if not preview:
                    done = await outbox.mark_failed(self.db, token, [n.id for n in group],
                                                                 f"render: {exc!r}")
                    report.failed += done
                continue
            messages.append(Message(person, group, reply))
        return messages

    async def _render(self, person: Recipient, group: list[Claimed]) -> Reply:
        """The message for ``person`` on their chosen chat (buttons are bound to that chat)."""
        if len(group) > 1:
            kind = reminders.DIGEST_KIND
            payload = {"items": [dict(n.payload, kind=n.kind) for n in group]}
        else:
            kind, payload = group[0].kind, group[0].payload
        renderer = self.router.notices.get(kind)
        if renderer is None:
            raise LookupError(f"no renderer for notice kind {kind!r}")
        return await renderer(self._context(person), payload)

    async def _fallback(self, message: Message) -> Message | None:
        """The person's chat refused delivery (and is now marked unreachable): the same notices
        for their next usable chat, rendered for it, or None when they have no other."""
        people = await outbox.recipients(self.db, [message.recipient.patron_id], self.channel_names())
        person = people.get(message.recipient.patron_id)
        if person is None or person.chat_id is None or person.channel not in self.deps.outbound:
            return None
        try:
            return Message(person, message.notices, await self._render(person, message.notices))
        except Exception:
            log.exception("could not render the fallback for patron %s", person.patron_id)
            return None

    def _context(self, person: Recipient) -> Context:
        deps = dataclasses.replace(self.deps, timezone=person.timezone)
        event = Incoming(channel=person.channel or "", chat_id=person.chat_id or "",
                         user_id=person.external_id or person.chat_id or "")
        return Context(deps, person.actor(self.deps.default_language), event, self.router)

    async def _deliver_all(self, messages: list[Message], token: str, report: SweepReport,
                           gate: asyncio.Semaphore) -> None:

        said: list[int] = []    # sent or uncertain: newer word about their loans and holds

        async def one(message: Message) -> None:
            logs.event_id.set(f"n-{message.ids[0]}")   # this task's log lines name the notice
            async with gate:
                said.extend(await self._deliver(message, token, report))

        try:
            await asyncio.gather(*(one(m) for m in messages))
        finally:
            if said:
                with contextlib.suppress(Exception):   # bookkeeping only: a later batch catches up
                    await outbox.supersede(self.db, said)

    async def _deliver(self, message: Message, token: str, report: SweepReport, hops: int = 0) -> list[int]:
        """Send one message and record the outcome; returns the ids sent or left uncertain."""
        # Counters are added after each await (``x += await f()`` would lose concurrent updates).
        person = message.recipient
        channel = self.deps.outbound.get(person.channel or "")
        if channel is None:
            await outbox.release(self.db, token, message.ids, not_before=self.clock.now() + LATER)
            return []
        await self.limiter.acquire(f"{person.channel}:{person.chat_id}")
        ids = await outbox.attempt(self.db, self.clock, token, message.ids)
        if not ids:
            return []   # another sweeper took these over after our claim was taken back
        ids_list = sorted(ids)
        try:
            await self.limiter.gate()
            delivery = await channel.send(person.chat_id, message.reply)
        except ChatUnreachable as exc:
            await patrons.mark_unreachable(self.db, person.channel, person.chat_id, self.clock)
            report.unreachable += 1
            observe.count_send(person.channel, "unreachable")
            fallback = await self._fallback(message) if hops < 3 else None
            if fallback is not None:
                fallback.notices = [n for n in message.notices if n.id in ids]
                return await self._deliver(fallback, token, report, hops + 1)
            done = await outbox.mark_skipped(self.db, token, ids_list, f"unreachable: {exc}")
            report.skipped += done
            return []
        except DeliveryFailed as exc:
            # A 429 that outlived the channel's own retries: everyone waits (the cause may carry it).
            retry_after = getattr(exc, "retry_after", None) or getattr(exc.__cause__, "retry_after", None)
            if hasattr(retry_after, "total_seconds"):
                retry_after = retry_after.total_seconds()
            if retry_after:
                self.limiter.pause(float(retry_after))
            done = await outbox.mark_retry(self.db, self.clock, token, ids_list, f"failed: {exc}",
                                                       retry_after=retry_after)
            report.retry += done
            observe.count_send(person.channel, "retry")
            return []
        except DeliveryUncertain as exc:
            done = await outbox.mark_uncertain(self.db, token, ids_list, f"uncertain: {exc}")
            report.uncertain += done
            observe.count_send(person.channel, "uncertain")
        except Exception as exc:  # unknown: it may have gone out, so treat it as uncertain
            log.exception("sending to %s:%s failed", person.channel, person.chat_id)
            done = await outbox.mark_uncertain(self.db, token, ids_list, f"error: {exc!r}")
            report.uncertain += done
            observe.count_send(person.channel, "error")
        else:
            done = await outbox.mark_sent(self.db, self.clock, token, ids_list, channel=person.channel,
                                                     chat_id=person.chat_id, message_ref=delivery.message_ref)
            report.sent += done
            report.messages += 1
            observe.count_send(person.channel, "sent")
        return ids_list   # sent, or uncertain

    async def _preview(self, report: SweepReport) -> SweepReport:
        """What a sweep would send now, without inserting, claiming or sending anything."""
        now = self.clock.now()
        planned = await reminders.plan(self.db, self.clock, dry_run=True)
        rules = await reminders.library_rules(self.db)
        open_ids = [lid for lid, r in rules.items() if not r.is_quiet(now)]
        report.quiet_libraries = sorted(set(rules) - set(open_ids))
        pending = await outbox.pending_due(self.db, self.clock, open_ids)
        new = [Claimed(-i, r["key"], r["patron_id"], r["kind"], r["payload"], 0)   # ids only to tell them apart
               for i, r in enumerate(planned.rows, 1) if r["send_after"] <= now]
        people = await outbox.recipients(self.db, {n.patron_id for n in new}, self.channel_names())
        new = [n for n in new if n.patron_id in people and people[n.patron_id].library_id in open_ids]
        report.planned = len(new)
        for message in await self._prepare(pending + new, "", rules, report, preview=True):
            person = message.recipient
            kind = message.notices[0].kind if len(message.notices) == 1 else reminders.DIGEST_KIND
            report.preview.append(Preview(person.full_name, person.channel or "", person.chat_id or "", kind,
                                          message.reply.text))
        return report


# -- the scheduler ----------------------------------------------------------------------------------

def start_scheduler(router: Router, *, interval_minutes: float = 5, first_run_in: float = 20,
                    sweeper: Sweeper | None = None, recover_every: float = 10):
    """An APScheduler 3 ``AsyncIOScheduler`` on the running loop: the reminder sweep, a check
    every ``recover_every`` seconds for claims of sweepers that died (sent at once, so a crash
    delays notices by under a minute), and the holds-expiry sweep. One sweep at a time per process."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    sweeper = sweeper or Sweeper(router)
    scheduler = AsyncIOScheduler(timezone=UTC)
    first = datetime.now(UTC) + timedelta(seconds=first_run_in)

    async def sweep() -> None:
        started = time.perf_counter()
        try:
            with logs.bound(logs.new_id("sweep")):
                report = await sweeper.sweep()
                if report.claimed or report.planned:
                    log.info("reminder sweep: %s", report.summary())
                seconds = time.perf_counter() - started
                observe.observe_sweep(seconds)
                # Durable, for `docsach doctor` and the alarms in every worker.
                await ops.beat(router.deps.db, ops.SWEEP, sweeper.worker, seconds=round(seconds, 3),
                               detail={"sent": report.sent, "planned": report.planned, "retry": report.retry,
                                       "uncertain": report.uncertain})
        except Exception:
            log.exception("reminder sweep failed; the next one will pick up where it stopped")

    scheduler.add_job(sweep, "interval", minutes=interval_minutes, next_run_time=first, id="reminders",
                      max_instances=1, coalesce=True, misfire_grace_time=60)

    async def recover() -> None:
        try:
            await sweeper.recover()
        except Exception:
            log.exception("taking back a dead sweeper's claims failed; the next sweep will")

    scheduler.add_job(recover, "interval", seconds=recover_every, next_run_time=first, id="recover",
                      max_instances=1, coalesce=True, misfire_grace_time=30)

    async def expire() -> None:
        try:
            await circulation.expire_holds(router.deps.db, clock=router.deps.clock)
        except Exception:
            log.exception("hold expiry sweep failed")

    scheduler.add_job(expire, "interval", minutes=interval_minutes, next_run_time=first, id="expire_holds",
                      max_instances=1, coalesce=True, misfire_grace_time=60)
    scheduler.start()
    return scheduler
