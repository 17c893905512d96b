"""The librarian's desk at province scale: p50/p95 server time per page, beside the same pages
with the database made to work naively (no index scans), in the same run.

    .venv/bin/python bench/desk.py [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                   [--libraries 200 --readers 200000 --loans 2000000] [--requests 60]

It builds (once; later runs reuse it) a PostgreSQL database ``docsach_bench_desk`` migrated with
the project's Alembic history: 200 libraries, 200,000 readers in classes of 40, 20,000 real
Library of Congress titles (shared/data) with 2,500 copies per library, 2,000,000 loans over the
school year (3 % still out, part of them overdue), visits for the last 60 days, reflections in
each library's queue and some READY holds. Then it signs a librarian of random libraries in
through the desk's own sign-in and times complete HTTP requests against the desk served by
aiohttp in this process (server time: routing, session check, services, SQL, templates):
Today, Counter with a reader, Overdue, Reflections, Statistics over 30 days, and the province
statistics for an admin. The baseline repeats the same requests on connections with
``enable_indexscan``, ``enable_bitmapscan`` and ``enable_indexonlyscan`` off: what the same
queries cost without the indexes the pages rely on; for the province page the baseline also
empties ``desk_days`` before each request, so it counts the period's loans and visits from
scratch (the first province request after a deployment does that once, timed on its own line;
later days add one day each).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from services.db import Database, create_engine, upgrade_async  # noqa: E402

NAME = "docsach_bench_desk"
CATALOG = ROOT.parent / "shared" / "data" / "loc_booksall2016_eng_catalog20k.csv"
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)   # a Tuesday morning in Lào Cai
CLASSES_PER_GRADE = 5


async def _admin(url: str, sql: str) -> None:
    engine = create_engine(make_url(url).set(database="postgres").render_as_string(hide_password=False),
                           isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def _titles() -> list[tuple]:
    rows = []
    with CATALOG.open(encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            rows.append((f"lccn:{r['lccn']}-{i}", r["title"][:500], r["author"] or "", None, r["publisher"] or None,
                         int(r["year"]) if (r["year"] or "").isdigit() else None, "en", r["subjects"] or "",
                         r["lc_class"][:64] or None))
    return rows


async def build(url: str, libraries: int, readers: int, loans: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    await upgrade_async(url)
    db = Database(url)
    raw = await db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        t0 = time.perf_counter()
        await conn.copy_records_to_table("libraries", columns=["code", "name", "timezone", "settings"], records=[
            (f"s{i:03d}", f"Trường số {i:03d} Lào Cai", "Asia/Ho_Chi_Minh", "{}") for i in range(libraries)])
        lib_ids = [r[0] for r in await conn.fetch("SELECT id FROM libraries ORDER BY id")]
        titles = _titles()
        await conn.copy_records_to_table("titles", columns=[
            "source_key", "title", "authors", "isbn13", "publisher", "year", "language", "subjects", "call_number"],
            records=titles)
        title_ids = [r[0] for r in await conn.fetch("SELECT id FROM titles ORDER BY id")]
        per_lib = readers // libraries
        people = []
        for lib in lib_ids:
            for n in range(per_lib):
                grade = 6 + (n // (40 * CLASSES_PER_GRADE)) % 7
                cls = f"{grade}A{1 + (n // 40) % CLASSES_PER_GRADE}"
                people.append((lib, f"HS{n:05d}", f"Học Sinh {lib}-{n}", "student", cls, grade, "{}", True))
            people.append((lib, "TT001", f"Thủ Thư {lib}", "librarian", None, None, "{}", True))
            people.append((lib, "AD001", f"Quản Trị {lib}", "admin", None, None, "{}", True))
        await conn.copy_records_to_table("patrons", columns=[
            "library_id", "card_number", "full_name", "role", "class_name", "grade", "preferences", "active"],
            records=people)
        patron_rows = await conn.fetch("SELECT id, library_id FROM patrons WHERE role = 'student' ORDER BY id")
        students: dict[int, list[int]] = {}
        for pid, lib in patron_rows:
            students.setdefault(lib, []).append(pid)
        copies_per_lib = 2500
        copies = [(rng.choice(title_ids), lib, f"B{lib:03d}{n:05d}", "available", 0)
                  for lib in lib_ids for n in range(copies_per_lib)]
        await conn.copy_records_to_table("copies", columns=["title_id", "library_id", "barcode", "status", "version"],
                                         records=copies)
        copy_rows = await conn.fetch("SELECT id, library_id FROM copies ORDER BY id")
        lib_copies: dict[int, list[int]] = {}
        for cid, lib in copy_rows:
            lib_copies.setdefault(lib, []).append(cid)
        print(f"  catalog and people: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        per_lib_loans = loans // libraries
        open_copies: set[int] = set()
        batch = []
        start = NOW - timedelta(days=300)
        for lib in lib_ids:
            pool, kids = lib_copies[lib], students[lib]
            for _ in range(per_lib_loans):
                out = start + timedelta(seconds=rng.randrange(300 * 86400))
                due = (out + timedelta(hours=7)).date() + timedelta(days=14)
                copy = rng.choice(pool)
                still_out = out > NOW - timedelta(days=40) and rng.random() < 0.25 and copy not in open_copies
                if still_out:
                    open_copies.add(copy)
                    returned = None
                else:
                    returned = min(NOW - timedelta(minutes=1), out + timedelta(days=rng.uniform(1, 20)))
                batch.append((lib, copy, rng.choice(kids), out, due, returned, 0))
            if len(batch) >= 200_000:
                await conn.copy_records_to_table("loans", columns=[
                    "library_id", "copy_id", "patron_id", "checked_out_at", "due_date", "returned_at", "renewals"],
                    records=batch)
                batch = []
        if batch:
            await conn.copy_records_to_table("loans", columns=[
                "library_id", "copy_id", "patron_id", "checked_out_at", "due_date", "returned_at", "renewals"],
                records=batch)
        await conn.execute("UPDATE copies SET status = 'on_loan', version = 1 WHERE id = ANY($1::int[])",
                           list(open_copies))
        print(f"  loans: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        visits = []
        for lib in lib_ids:
            for d in range(60):
                day = (NOW - timedelta(days=d)).date()
                if day.weekday() >= 5:
                    continue
                for pid in rng.sample(students[lib], 30):
                    visits.append((lib, pid, day, datetime.combine(day, datetime.min.time(), tzinfo=UTC), "door"))
        await conn.copy_records_to_table("visits", columns=["library_id", "patron_id", "day", "at", "source"],
                                         records=visits)
        reflections = []
        body = " ".join(["Cuốn sách kể về tình bạn và lòng dũng cảm của những bạn nhỏ vùng cao."] * 6)
        for lib in lib_ids:
            for pid in rng.sample(students[lib], 12):
                reflections.append((lib, pid, rng.choice(title_ids), "submitted", body, 4, 60, "[]",
                                    NOW - timedelta(hours=rng.randrange(200))))
        await conn.copy_records_to_table("reflections", columns=[
            "library_id", "patron_id", "title_id", "status", "body", "rating", "word_count", "flags", "submitted_at"],
            records=reflections)
        await conn.execute("VACUUM ANALYZE")   # what autovacuum does after a bulk load (index-only scans)
        print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        raw.close()
        await db.dispose()


async def _exists(url: str) -> bool:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT count(*) FROM loans")))
    except Exception:
        return False
    finally:
        await engine.dispose()


NO_INDEX_SCANS = {"enable_indexscan": "off", "enable_bitmapscan": "off", "enable_indexonlyscan": "off"}


async def measure(url: str, requests: int, naive: bool, seed: int = 2) -> dict[str, list[float]]:
    from bot.app import build_app
    from bot.config import Settings
    from services import desk_auth
    from services.common import Clock
    from services.models import Role
    from services.patrons import Actor
    from tests.desk_client import csrf_of, desk_server

    # Session settings given at connect time last for the connection (a SET would be rolled back).
    db = Database(url, engine=create_engine(url, connect_args={"server_settings": NO_INDEX_SCANS})) if naive \
        else Database(url)
    clock = Clock(fixed=NOW)
    app = build_app(Settings(database_url=url, secret_key=b"bench", secret_key_is_ephemeral=False), db=db,
                    clock=clock)
    client = await desk_server(app)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {}
    async with db.session() as s:
        libs = (await s.execute(text("SELECT id, code FROM libraries ORDER BY id"))).all()
        staff = {(lib, role): pid for pid, lib, role in (await s.execute(text(
            "SELECT id, library_id, role FROM patrons WHERE role IN ('librarian', 'admin')"))).all()}

    async def sign_in(lib_id: int, code: str, role: str) -> None:
        client.session.cookie_jar.clear()
        actor = Actor(identity_id=None, channel="bench", chat_id="bench", language="vi",
                      patron_id=staff[(lib_id, role)], library_id=lib_id, library_code=code, role=Role(role))
        token = await desk_auth.issue_link(db, actor, clock=clock)
        page = await client.get(f"/desk/signin?token={token}")
        response = await client.post("/desk/signin", data={"token": token, "csrf": csrf_of(await page.text())},
                                     allow_redirects=False)
        assert response.status == 303, response.status

    async def timed(name: str, path: str) -> None:
        t = time.perf_counter()
        response = await client.get(path, allow_redirects=False)
        await response.read()
        times.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        assert response.status == 200, (name, path, response.status)

    month = f"from={(NOW.date() - timedelta(days=29)).isoformat()}&to={NOW.date().isoformat()}"
    if not naive:  # the day's first province page counts the finished days once: timed on its own
        async with db.transaction() as s:
            await s.execute(text("DELETE FROM desk_days"))
        lib_id, code = libs[0]
        await sign_in(lib_id, code, "admin")
        await timed("province, first of the day", f"/desk/stats?{month}&library=all")
    try:
        for i in range(requests):
            lib_id, code = rng.choice(libs)
            await sign_in(lib_id, code, "librarian")
            reader = f"HS{rng.randrange(900):05d}"
            await timed("today", "/desk/today")
            await timed("counter + reader", f"/desk/counter?reader={reader}")
            await timed("overdue", "/desk/overdue")
            await timed("reflections", "/desk/reflections")
            await timed("stats 30 days", f"/desk/stats?{month}")
            if i % 4 == 0:
                await sign_in(lib_id, code, "admin")
                if naive:  # the naive province page counts every loan of the period again, each time
                    async with db.transaction() as s:
                        await s.execute(text("DELETE FROM desk_days"))
                await timed("stats province (admin)", f"/desk/stats?{month}&library=all")
    finally:
        await client.close()
        await db.dispose()
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--libraries", type=int, default=200)
    parser.add_argument("--readers", type=int, default=200_000)
    parser.add_argument("--loans", type=int, default=2_000_000)
    parser.add_argument("--requests", type=int, default=60, help="rounds of page requests per mode")
    parser.add_argument("--rebuild", action="store_true", help="drop and build the data again")
    parser.add_argument("--name", default=NAME, help="the benchmark database's name")
    args = parser.parse_args()
    name = args.name
    url = make_url(args.url).set(database=name).render_as_string(hide_password=False)
    if args.rebuild:
        await _admin(args.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if not await _exists(url):
        await _admin(args.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await _admin(args.url, f'CREATE DATABASE "{name}"')
        print(f"building {args.libraries} libraries, {args.readers} readers, {args.loans} loans …", file=sys.stderr)
        await build(url, args.libraries, args.readers, args.loans)
    else:
        await upgrade_async(url)
    fast = await measure(url, args.requests, naive=False)
    slow = await measure(url, max(4, args.requests // 6), naive=True)
    print(f"desk pages, {args.libraries} libraries / {args.readers} readers / {args.loans} loans (PostgreSQL), "
          f"server time per complete request in ms")
    print(f"{'page':<26}{'n':>5}{'p50':>9}{'p95':>9}   {'naive n':>8}{'p50':>9}{'p95':>9}")
    for name, values in fast.items():
        base = slow.get(name, [float("nan")])
        print(f"{name:<26}{len(values):>5}{statistics.median(values):>9.1f}{_pct(values, 0.95):>9.1f}   "
              f"{len(base):>8}{statistics.median(base):>9.1f}{_pct(base, 0.95):>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
