"""Reminder benchmark: plan 100,000 active loans, then send a bounded window of messages through
the fake Telegram Bot API server (rate-limit mode: 429 above 30 msg/s or 1 msg/s per chat) using
the real python-telegram-bot stack with AIORateLimiter.

    .venv/bin/python bench/reminders.py                      # SQLite file in a temp dir
    .venv/bin/python bench/reminders.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test

Prints: planning time (target ≤ 10 s), achieved send rate as a fraction of 30/s (target ≥ 0.9),
429s received (target 0), duplicates (target 0), peak memory. Not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import resource
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bot.app import build_app  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.scheduler import RateLimiter, Sweeper  # noqa: E402
from services import reminders  # noqa: E402
from services.common import Clock  # noqa: E402
from services.db import Database, create_engine, upgrade_async  # noqa: E402
from services.models import (  # noqa: E402
    ChatIdentity,
    Copy,
    CopyStatus,
    Library,
    Loan,
    Notification,
    NotificationStatus,
    Patron,
    Role,
    Title,
)
from tests.fake_bot_api import FakeBotApi  # noqa: E402

NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)     # 09:00 in Lào Cai: outside quiet hours
TODAY = date(2026, 12, 1)
CHAT_BASE = 10_000_000


def due_offset(rng: random.Random) -> int:
    """Days from today to the due date of an active loan: most are on time, a tail is late."""
    r = rng.random()
    if r < 0.82:
        return rng.randint(0, 14)        # current loans, due within the two-week loan period
    if r < 0.97:
        return -rng.randint(1, 30)       # overdue up to a month
    return -rng.randint(31, 120)         # forgotten over the holidays


async def seed(db: Database, loans: int, rng: random.Random) -> tuple[int, list[int]]:
    """One school library: titles, a copy per loan, patrons with 1–5 loans, a Telegram chat each."""
    chunk = 5000
    async with db.transaction() as s:
        library = Library(code="bench", name="Bench school", timezone="Asia/Ho_Chi_Minh", settings={})
        s.add(library)
        await s.flush()
        lib = library.id
        await s.execute(insert(Title), [dict(source_key=f"bench:{i}", title=f"Sách số {i} — Tuyển tập truyện",
                                             authors="", subjects="") for i in range(3000)])
    sizes = []
    while sum(sizes) < loans:
        sizes.append(min(rng.choice((1, 1, 2, 2, 3, 3, 4, 5)), loans - sum(sizes)))
    patrons = len(sizes)
    async with db.transaction() as s:
        for start in range(0, patrons, chunk):
            await s.execute(insert(Patron), [dict(library_id=lib, card_number=f"B{i:06d}", full_name=f"Học Sinh {i}",
                                                  role=Role.STUDENT, class_name=f"{10 + i % 3}A{i % 8}",
                                                  language="vi" if i % 5 else "en", preferences={}, active=True)
                                             for i in range(start, min(start + chunk, patrons))])
        ids = list((await s.execute(select(Patron.id).where(Patron.library_id == lib).order_by(Patron.id))).scalars())
        for start in range(0, patrons, chunk):
            await s.execute(insert(ChatIdentity), [dict(channel="telegram", external_id=str(CHAT_BASE + pid),
                                                        chat_id=str(CHAT_BASE + pid), patron_id=pid,
                                                        linked_at=NOW - timedelta(days=30))
                                                   for pid in ids[start:start + chunk]])
        titles = list((await s.execute(select(Title.id))).scalars())
        for start in range(0, loans, chunk):
            await s.execute(insert(Copy), [dict(title_id=titles[i % len(titles)], library_id=lib,
                                                barcode=f"BC{i:07d}", status=CopyStatus.ON_LOAN, version=0)
                                           for i in range(start, min(start + chunk, loans))])
        copies = list((await s.execute(select(Copy.id).where(Copy.library_id == lib).order_by(Copy.id))).scalars())
        rows, n = [], 0
        for pid, size in zip(ids, sizes, strict=True):
            for _ in range(size):
                due = TODAY + timedelta(days=due_offset(rng))
                rows.append(dict(library_id=lib, copy_id=copies[n], patron_id=pid, due_date=due,
                                 checked_out_at=datetime.combine(due - timedelta(days=14), datetime.min.time(), UTC),
                                 renewals=0))
                n += 1
        for start in range(0, len(rows), chunk):
            await s.execute(insert(Loan), rows[start:start + chunk])
    return patrons, ids


async def telegram_channel(api: FakeBotApi, db: Database, clock: Clock, rate: float, wire_gate: bool):
    """The adapter's own channel (``TelegramChannel``) on a PTB bot with the adapter's rate limiter.

    ``max_retries=0`` for 429s: the sweeper pauses every send for ``retry_after`` and re-queues
    the notice (PTB's own retry would add an unpaced request on top of the paced ones)."""
    from telegram.ext import ExtBot

    from bot.channels.telegram import ResilientRateLimiter, TelegramChannel, TracedRequest

    request = TracedRequest(connection_pool_size=16)   # the adapter's transport (knows what was written)
    options = {"gate": RateLimiter(per_second=rate)} if wire_gate else {}
    bot = ExtBot(api.token, base_url=api.base_url, request=request,
                 rate_limiter=ResilientRateLimiter(max_retries=0, **options))
    await bot.initialize()
    label = " + wire gate" if wire_gate else ""
    return bot, TelegramChannel(bot, db, clock=clock), f"bot.channels.telegram.TelegramChannel (ResilientRateLimiter){label}"


@dataclass
class SeenCall:
    method: str
    chat_id: object
    status: int
    at: float

    @property
    def ok(self) -> bool:
        return self.status == 200


def _serve(conn, blocked: list[int]) -> None:
    """Child process: the fake Bot API server, like a real remote one (it shares no GIL or event
    loop with the bench). Sends its port, serves until told to stop, then sends what it saw."""

    async def run() -> None:
        api = FakeBotApi()
        await api.start()
        api.rate_limit(per_second=30, per_chat_per_second=1)
        for chat in blocked:
            api.block_chat(chat)
        conn.send(api.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await api.stop()
        conn.send(([(c.method, c.chat_id, c.status, c.at) for c in api.calls], api.stats.too_many_requests))

    asyncio.run(run())


class ServerProcess:
    def __init__(self) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.child = child
        self.process: multiprocessing.Process | None = None

    async def start(self, blocked: list[int]) -> FakeBotApi:
        self.process = multiprocessing.get_context("spawn").Process(target=_serve, args=(self.child, blocked),
                                                                      daemon=True)
        self.process.start()
        port = await asyncio.to_thread(self.conn.recv)
        api = FakeBotApi()          # not started: only its URLs and token, pointing at the child's port
        api.port = port
        return api

    async def stop(self) -> tuple[list[SeenCall], int]:
        self.conn.send("stop")
        calls, too_many = await asyncio.to_thread(self.conn.recv)
        await asyncio.to_thread(self.process.join, 10)
        return [SeenCall(*c) for c in calls], too_many


async def fresh_postgres(url: str) -> tuple[str, str, str]:
    server = make_url(url)
    name = f"docsach_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False), server.render_as_string(
        hide_password=False), name


async def drop_postgres(server_url: str, name: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(6)
    tmp = tempfile.TemporaryDirectory()
    cleanup = None
    if args.postgres:
        url, server_url, name = await fresh_postgres(args.postgres)
        cleanup = (server_url, name)
        backend = "PostgreSQL"
    else:
        url = f"sqlite+aiosqlite:///{tmp.name}/bench.db"
        backend = "SQLite"
    try:
        await upgrade_async(url)
        clock = Clock(fixed=NOW)
        app = build_app(Settings(database_url=url, secret_key=b"bench", secret_key_is_ephemeral=False), clock=clock)
        started = time.perf_counter()
        patrons, _ = await seed(app.db, args.loans, rng)
        print(f"backend: {backend}; seeded {args.loans:,} active loans for {patrons:,} patrons "
              f"in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        planned = await reminders.plan(app.db, clock)
        planning = time.perf_counter() - started
        started = time.perf_counter()
        again = await reminders.plan(app.db, clock)
        replanning = time.perf_counter() - started
        async with app.db.session() as s:
            kinds = dict((await s.execute(select(Notification.kind, func.count()).group_by(Notification.kind))).all())
        print(f"planning: {planning:.2f} s for {planned.considered:,} candidate loans → {planned.inserted:,} notices "
              f"{kinds}; planning again: {replanning:.2f} s, {again.inserted} new")

        blocked = [CHAT_BASE + pid for pid in rng.sample(range(1, patrons + 1), max(1, patrons // 200))]
        server = ServerProcess()
        api = await server.start(blocked)
        try:
            bot, channel, kind = await telegram_channel(api, app.db, clock, args.rate, not args.no_wire_gate)
            app.deps.outbound["telegram"] = channel
            sweeper = Sweeper(app.router, worker="bench", limiter=RateLimiter(per_second=args.rate),
                              concurrency=8)
            started = time.perf_counter()
            report = await sweeper.sweep(max_messages=args.messages)
            window = time.perf_counter() - started
            await bot.shutdown()
        finally:
            calls, too_many = await server.stop()
        sends = [c for c in calls if c.method.lower() == "sendmessage"]
        ok = [c for c in sends if c.ok]
        span = (ok[-1].at - ok[0].at) if len(ok) > 1 else float("nan")
        rate = (len(ok) - 1) / span if len(ok) > 1 else 0.0
        per_chat = Counter(c.chat_id for c in ok)
        duplicates = sum(n - 1 for n in per_chat.values() if n > 1)
        arrivals = [c.at for c in sends if c.status != 403]   # what counts in its rate window
        busiest = max((sum(1 for t in arrivals[i:i + 40] if t < a + 1.0) for i, a in enumerate(arrivals)),
                      default=0)
        refused_at = [round(c.at - arrivals[0], 1) for c in sends if c.status == 429]
        async with app.db.session() as s:
            status = dict((await s.execute(select(Notification.status, func.count())
                                           .group_by(Notification.status))).all())
            double = (await s.execute(select(func.count()).select_from(
                select(Notification.key).where(Notification.status == NotificationStatus.SENT)
                .group_by(Notification.key).having(func.count() > 1).subquery()))).scalar_one()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"channel: {kind}; sender limit {args.rate}/s; fake server limits 30/s overall, 1/s per chat")
        print(f"sent {len(ok):,} messages ({report.sent:,} notices; {len(sends) - len(ok)} refused: "
              f"{report.unreachable} blocked chats) in {window:.1f} s")
        print(f"achieved send rate: {rate:.2f} msg/s = {rate / 30:.3f} of 30/s (first→last accepted sendMessage)")
        print(f"429s received: {too_many}" + (f" (at {refused_at} s)" if refused_at else "")
          + f"; busiest second as the server saw it: {busiest} sendMessage calls")
        print(f"duplicates: {duplicates} (same chat messaged twice) / {double} (notice keys sent twice)")
        print(f"outbox after the window: { {getattr(k, 'value', k): v for k, v in status.items()} }")
        print(f"peak memory (max RSS of the bench process; the fake server runs in its own): {peak:.0f} MB")
        await app.close()
    finally:
        if cleanup:
            await drop_postgres(*cleanup)
        tmp.cleanup()


if __name__ == "__main__":
    import logging

    logging.getLogger("telegram").setLevel(logging.CRITICAL)   # 429s are counted and printed below
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loans", type=int, default=100_000, help="active loans to create (default 100000)")
    parser.add_argument("--messages", type=int, default=1500, help="messages to send in the window (default 1500)")
    parser.add_argument("--rate", type=float, default=28.0, help="sender-side overall limit, msg/s (default 28)")
    parser.add_argument("--no-wire-gate", action="store_true",
                        help="do not gate sends again inside PTB's rate limiter, right before the request")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server URL; a throw-away database is created")
    asyncio.run(main(parser.parse_args()))
