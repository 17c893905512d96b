"""SIP2 kiosk benchmark: 50 kiosks at once doing checkout/checkin cycles against docsach's SIP2 server.

    .venv/bin/python bench/sip2.py --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/sip2.py                       # SQLite file in a temp dir

The server runs in its own process (as under ``docsach run``) on a throw-away database; each kiosk
is its own TCP connection with its own login and reader. The kiosks share a small pool of copies,
so they collide on the same copy all the time (one wins, the other is refused). Every fifth cycle a
kiosk ends the patron session (35), which releases that session's chat receipt.

Baseline in the same run: the same cycles called straight on ``services.circulation`` by 50
coroutines in one process (no protocol, no sockets, no receipts), to show what SIP2 adds.

Prints transactions per second, p50/p95 latency per request, and the invariants afterwards: no copy
lent twice at once, receipt items = successful kiosk transactions, no receipt item twice.
Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from services import circulation, kiosks  # noqa: E402
from services import sip2 as codec  # noqa: E402
from services.common import Clock, DomainError  # noqa: E402
from services.db import Database, create_engine, upgrade_async  # noqa: E402
from services.models import (  # noqa: E402
    AuditEntry,
    Copy,
    Library,
    Loan,
    Notification,
    Patron,
    Role,
    Title,
)
from services.patrons import Actor  # noqa: E402

PASSWORD = "bench-kiosk-pw"
STAMP = "20261201    090000"


# -- data --------------------------------------------------------------------------------------------

async def seed(db: Database, kiosk_count: int, copies: int) -> tuple[list[str], list[str], int]:
    async with db.transaction() as s:
        library = Library(code="bench", name="Trường THPT Bench", timezone="Asia/Ho_Chi_Minh", settings={})
        s.add(library)
        await s.flush()
        cards = [f"B{i:04d}" for i in range(kiosk_count)]
        s.add_all(Patron(library_id=library.id, card_number=c, full_name=f"Học Sinh {c}", role=Role.STUDENT,
                         class_name="10A1", grade=10, preferences={}) for c in cards)
        s.add(Patron(library_id=library.id, card_number="LIB1", full_name="Thủ Thư", role=Role.LIBRARIAN,
                     preferences={}))
        titles = [Title(source_key=f"bench:{i}", title=f"Sách thử nghiệm số {i}", authors="Tác giả")
                  for i in range(copies)]
        s.add_all(titles)
        await s.flush()
        barcodes = [f"BC{i:05d}" for i in range(copies)]
        s.add_all(Copy(title_id=t.id, library_id=library.id, barcode=b) for t, b in zip(titles, barcodes, strict=True))
        library_id = library.id
    for i in range(kiosk_count):
        await kiosks.add_kiosk(db, "bench", f"K{i:02d}", PASSWORD)
    return cards, barcodes, library_id


# -- the server process ---------------------------------------------------------------------------------

def _serve(url: str, conn) -> None:
    async def run() -> None:
        from bot.app import build_app
        from bot.config import Settings
        from bot.sip2 import Config, Sip2Server

        app = build_app(Settings(database_url=url, secret_key=b"bench", secret_key_is_ephemeral=False))
        server = await Sip2Server(app.deps, Config(port=0)).start()
        conn.send(server.config.port)
        await asyncio.to_thread(conn.recv)        # until told to stop
        await server.close()
        await app.close()
        conn.send("stopped")

    asyncio.run(run())


# -- kiosks ---------------------------------------------------------------------------------------------

class Kiosk:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.seq = reader, writer, 0

    async def ask(self, body: str) -> tuple[str, float]:
        head = (body + f"AY{self.seq % 10}AZ").encode()
        self.seq += 1
        started = time.perf_counter()
        self.writer.write(head + codec.checksum(head).encode() + b"\r")
        await self.writer.drain()
        reply = await self.reader.readuntil(b"\r")
        return reply.decode(), time.perf_counter() - started


async def log_in(port: int, name: str, logins: list[float]) -> Kiosk:
    kiosk = Kiosk(*await asyncio.open_connection("127.0.0.1", port))
    reply, took = await kiosk.ask(f"9300CN{name}|CO{PASSWORD}|CPbench|")
    assert reply.startswith("941"), reply
    logins.append(took)
    return kiosk


async def kiosk_loop(kiosk: Kiosk, card: str, barcodes: list[str], until: float, rng: random.Random,
                     stats: Counter, latencies: list[float]) -> None:
    cycles = 0
    while time.perf_counter() < until:
        barcode = rng.choice(barcodes)
        reply, took = await kiosk.ask(f"11YN{STAMP}{' ' * 18}AObench|AA{card}|AB{barcode}|AC|")
        latencies.append(took)
        if not reply.startswith("121"):
            stats["checkout refused (copy taken)"] += 1
            continue
        stats["checkout"] += 1
        reply, took = await kiosk.ask(f"09N{STAMP}{STAMP}APbench|AObench|AB{barcode}|AC|")
        latencies.append(took)
        if reply.startswith("101"):
            stats["checkin"] += 1
        else:
            stats["checkin refused"] += 1
        cycles += 1
        if cycles % 5 == 0:
            reply, took = await kiosk.ask(f"35{STAMP}AObench|AA{card}|")
            latencies.append(took)
            stats["end session"] += 1
    kiosk.writer.close()


async def baseline_loop(db: Database, actor: Actor, card: str, barcodes: list[str], until: float,
                        rng: random.Random, stats: Counter, latencies: list[float]) -> None:
    clock = Clock()
    while time.perf_counter() < until:
        barcode = rng.choice(barcodes)
        started = time.perf_counter()
        try:
            await circulation.check_out(db, actor, barcode, card, clock=clock)
        except DomainError:
            latencies.append(time.perf_counter() - started)
            stats["checkout refused (copy taken)"] += 1
            continue
        latencies.append(time.perf_counter() - started)
        stats["checkout"] += 1
        started = time.perf_counter()
        await circulation.check_in(db, actor, barcode, clock=clock)
        latencies.append(time.perf_counter() - started)
        stats["checkin"] += 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def line(label: str, seconds: float, stats: Counter, latencies: list[float]) -> str:
    tx = stats["checkout"] + stats["checkin"]
    return (f"{label:<34} {tx / seconds:8.1f} tx/s  {len(latencies) / seconds:8.1f} req/s  "
            f"p50 {pct(latencies, 50):6.1f} ms  p95 {pct(latencies, 95):6.1f} ms  "
            f"({stats['checkout']} checkouts, {stats['checkin']} checkins, "
            f"{stats['checkout refused (copy taken)']} refused: copy taken)")


# -- invariants -----------------------------------------------------------------------------------------

async def invariants(db: Database, library_id: int) -> dict[str, object]:
    async with db.session() as s:
        loans = (await s.execute(select(Loan.copy_id, Loan.checked_out_at, Loan.returned_at)
                                 .where(Loan.library_id == library_id).order_by(Loan.copy_id, Loan.checked_out_at,
                                                                                 Loan.id))).all()
        audit = dict((await s.execute(select(AuditEntry.action, func.count()).where(
            AuditEntry.channel.like("sip2:%"), AuditEntry.action.in_(("loan.checkout", "loan.return")))
            .group_by(AuditEntry.action))).all())
        receipts = (await s.execute(select(Notification.payload).where(Notification.kind == kiosks.RECEIPT_KIND))
                    ).scalars().all()
    overlaps = 0
    previous: dict[int, object] = {}
    for copy_id, out, back in loans:
        last = previous.get(copy_id, "none")
        if last is None or (last != "none" and out < last):
            overlaps += 1
        previous[copy_id] = back
    items = [(i.get("loan_id"), i.get("action")) for p in receipts for i in p.get("items", [])]
    return {"loans": len(loans), "overlaps": overlaps, "audit": audit, "receipt notices": len(receipts),
            "receipt items": len(items), "duplicate items": len(items) - len(set(items))}


# -- main -----------------------------------------------------------------------------------------------

async def fresh_postgres(url: str) -> tuple[str, str, str]:
    server = make_url(url)
    name = f"docsach_bench_sip2_{uuid.uuid4().hex[:8]}"
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
        db = Database(url)
        cards, barcodes, library_id = await seed(db, args.kiosks, args.copies)
        print(f"backend: {backend}; {args.kiosks} kiosks (one connection and one reader each), "
              f"{args.copies} shared copies, {args.seconds:.0f} s; baseline {args.baseline_seconds:.0f} s")

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(url, child), daemon=True)
        process.start()
        port = await asyncio.to_thread(parent.recv)
        stats: Counter = Counter()
        latencies: list[float] = []
        rng = random.Random(13)
        logins: list[float] = []
        started = time.perf_counter()
        connected = await asyncio.gather(*(log_in(port, f"K{i:02d}", logins) for i in range(args.kiosks)))
        login_seconds = time.perf_counter() - started
        started = time.perf_counter()
        until = started + args.seconds
        await asyncio.gather(*(kiosk_loop(connected[i], cards[i], barcodes, until, random.Random(rng.random()),
                                          stats, latencies) for i in range(args.kiosks)))
        sip_seconds = time.perf_counter() - started
        parent.send("stop")
        await asyncio.to_thread(parent.recv)
        process.join(10)
        checks = await invariants(db, library_id)

        base_stats: Counter = Counter()
        base_latencies: list[float] = []
        async with db.session() as s:
            lib_id = await s.scalar(select(Patron.id).where(Patron.card_number == "LIB1"))
        actor = Actor(identity_id=None, channel="bench", chat_id="lib", language="vi", patron_id=lib_id,
                      library_id=library_id, library_code="bench", role=Role.LIBRARIAN)
        started = time.perf_counter()
        until = started + args.baseline_seconds
        await asyncio.gather(*(baseline_loop(db, actor, cards[i], barcodes, until, random.Random(rng.random()),
                                             base_stats, base_latencies) for i in range(args.kiosks)))
        base_seconds = time.perf_counter() - started

        print(f"logins: {args.kiosks} kiosks at once in {login_seconds:.1f} s (scrypt per login; p50 "
              f"{pct(logins, 50):.0f} ms, p95 {pct(logins, 95):.0f} ms)")
        print(line(f"SIP2 server ({args.kiosks} kiosks, TCP)", sip_seconds, stats, latencies))
        print(line("baseline: circulation services", base_seconds, base_stats, base_latencies))
        print(f"  SIP2 end-session messages: {stats['end session']}; checkins refused: {stats['checkin refused']}")
        kiosk_tx = stats["checkout"] + stats["checkin"]
        audit_tx = sum(checks["audit"].values())
        print(f"invariants: copies lent twice at once: {checks['overlaps']} (of {checks['loans']} kiosk loans); kiosk transactions {kiosk_tx} = audit entries via sip2 {audit_tx} = receipt items "
              f"{checks['receipt items']} (in {checks['receipt notices']} notices); duplicated items "
              f"{checks['duplicate items']}")
        ok = checks["overlaps"] == 0 and kiosk_tx == audit_tx == checks["receipt items"] and not checks[
            "duplicate items"]
        print("invariants hold" if ok else "INVARIANTS BROKEN")
        await db.dispose()
        if not ok:
            raise SystemExit(1)
    finally:
        if cleanup:
            await drop_postgres(*cleanup)
        tmp.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kiosks", type=int, default=50, help="kiosks in parallel (default 50)")
    parser.add_argument("--copies", type=int, default=75, help="copies they share (default 75)")
    parser.add_argument("--seconds", type=float, default=60.0, help="SIP2 run length (default 60)")
    parser.add_argument("--baseline-seconds", type=float, default=20.0, help="baseline run length (default 20)")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server URL; a throw-away database is created")
    asyncio.run(main(parser.parse_args()))
