"""Load test: a synthetic province driven through `docsach run` in webhook mode.

    .venv/bin/python bench/load.py                                   # PostgreSQL 1/2/4 workers + SQLite 1
    .venv/bin/python bench/load.py --workers 1 --skip-sqlite --step-seconds 10   # a quick look

The province: 200 libraries, 200,000 students (each with a Telegram chat), 2,000,000 loans
(200,000 on loan now, the rest returned), about 1,000,000 copies of the real catalog
(../shared/data: Library of Congress 250k, goodbooks 10k, Vietnamese titles). It is built once
and kept (PostgreSQL: a template database, SQLite: bench/out/load.db); --fresh rebuilds it.

Each run starts `docsach run --webhook --workers N` against the fake Bot API (tests/fake_bot_api.py)
and sends a morning-rush mix as Telegram would (one POST per update): search 60 %, book card
20 %, my loans 10 %, reserve/renew 10 %, at rising rates until the p95 reply time passes 1 s.
Reply time = from the webhook POST to the first message the bot sends or edits in that chat.
It prints per step: offered and sustained updates/s, p50/p95/p99 per mix entry, errors, and the
memory of each worker. Bounded in time; traffic only to 127.0.0.1.

The load generator and the fake Bot API run in this process on the same machine as the workers:
on a 2-core machine they take a good share of the CPU, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bot.app import build_app  # noqa: E402
from bot.config import Settings  # noqa: E402
from services.db import Database, create_engine, upgrade_async  # noqa: E402
from services.models import ChatIdentity, Copy, CopyStatus, Library, Loan, Patron, Role, Title  # noqa: E402
from tests.fake_bot_api import FakeBotApi  # noqa: E402

DATA = Path(os.environ.get("DOCSACH_SHARED_DATA", ROOT / ".." / "shared" / "data"))
OUT = ROOT / "bench" / "out"
SEED_VERSION = 1          # bump when the synthetic province changes (rebuilds the cached copy)
TOKEN = "7000000001:AAbenchTokenForTheFakeBotApiOnly_x1"
SECRET = "bench-secret-key-0123456789abcdef"
WEBHOOK_SECRET = "bench-webhook-secret"
CHAT_BASE = 500_000_000
TODAY = date.today()
MIX = (("search", 0.60), ("book_card", 0.20), ("my_loans", 0.10), ("reserve_renew", 0.10))


# -- the synthetic province -------------------------------------------------------------------------

@dataclass
class Province:
    libraries: int = 200
    students: int = 200_000
    loans: int = 2_000_000
    copies_per_library: int = 5_000


def real_titles() -> list[dict]:
    rows: list[dict] = []
    with gzip.open(DATA / "loc_booksall2016_250k.csv.gz", "rt", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.append(dict(source_key=f"lccn:{r['lccn']}", title=r["title"][:1000], authors=r["author"] or "",
                             isbn13=None, publisher=r["publisher"] or None, year=_year(r["year"]),
                             language=(r["language"] or None) and r["language"][:8], subjects=r["subjects"] or ""))
    with open(DATA / "goodbooks10k_books.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.append(dict(source_key=f"goodbooks:{r['book_id']}", title=r["title"], authors=r["authors"],
                             isbn13=r["isbn13"] or None, publisher=None, year=_year(r["original_publication_year"]),
                             language="eng", subjects=""))
    with open(DATA / "vi_books_all.csv", encoding="utf-8") as fh:
        for n, r in enumerate(csv.DictReader(fh)):
            rows.append(dict(source_key=f"vi:{n}", title=r["title"], authors=r["authors"], isbn13=r["isbn13"] or None,
                             publisher=r["publisher"] or None, year=_year(r["year"]), language="vie", subjects=""))
    return rows


def _year(value: str) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


async def seed(db: Database, province: Province, rng: random.Random) -> None:
    """Bulk-insert the province (minutes, once)."""
    started = time.perf_counter()
    chunk = 10_000
    titles = real_titles()
    async with db.transaction() as s:
        for i in range(0, len(titles), chunk):
            await s.execute(insert(Title), titles[i:i + chunk])
    async with db.session() as s:
        title_ids = list((await s.execute(select(Title.id).order_by(Title.id))).scalars())
    vi_start = len(title_ids) - 2666
    print(f"  titles: {len(title_ids):,} ({time.perf_counter() - started:.0f} s)", flush=True)
    async with db.transaction() as s:
        await s.execute(insert(Library), [dict(code=f"lc{n:03d}", name=f"Trường THCS số {n} Lào Cai",
                                               timezone="Asia/Ho_Chi_Minh", settings={})
                                          for n in range(1, province.libraries + 1)])
    async with db.session() as s:
        library_ids = list((await s.execute(select(Library.id).order_by(Library.id))).scalars())
    # Copies: each school holds a popular core (the Vietnamese titles and a common English set)
    # and a random rest of the catalog.
    popular = title_ids[vi_start:] + title_ids[:3000]
    async with db.transaction() as s:
        for lib in library_ids:
            held = rng.sample(popular, 1500) + rng.sample(title_ids, province.copies_per_library - 1500)
            await s.execute(insert(Copy), [dict(title_id=t, library_id=lib, barcode=f"{lib:03d}{n:06d}",
                                                status=CopyStatus.AVAILABLE, version=0)
                                           for n, t in enumerate(held)])
    print(f"  copies: {len(library_ids) * province.copies_per_library:,} ({time.perf_counter() - started:.0f} s)",
          flush=True)
    per_library = province.students // len(library_ids)
    async with db.transaction() as s:
        for lib in library_ids:
            await s.execute(insert(Patron), [dict(library_id=lib, card_number=f"HS{n:05d}",
                                                  full_name=f"Học Sinh {lib}-{n}", role=Role.STUDENT,
                                                  class_name=f"{6 + n % 4}A{n % 6 + 1}", grade=6 + n % 4,
                                                  language="vi" if n % 7 else "en", preferences={}, active=True)
                                             for n in range(per_library)])
    async with db.session() as s:
        patrons = (await s.execute(select(Patron.id, Patron.library_id).order_by(Patron.id))).all()
    async with db.transaction() as s:
        for i in range(0, len(patrons), chunk):
            await s.execute(insert(ChatIdentity), [dict(channel="telegram", external_id=str(CHAT_BASE + pid),
                                                        chat_id=str(CHAT_BASE + pid), patron_id=pid,
                                                        linked_at=datetime.now(UTC) - timedelta(days=60))
                                                   for pid, _ in patrons[i:i + chunk]])
    print(f"  students: {len(patrons):,} with chats ({time.perf_counter() - started:.0f} s)", flush=True)
    # Loans: one open loan per student (due within ±2 weeks), the rest returned over the year.
    async with db.session() as s:
        copies = (await s.execute(select(Copy.id, Copy.library_id).order_by(Copy.id))).all()
    by_library: dict[int, list[int]] = defaultdict(list)
    for cid, lib in copies:
        by_library[lib].append(cid)
    open_copies: set[int] = set()
    rows: list[dict] = []
    now = datetime.now(UTC)

    async def flush(s) -> None:
        if rows:
            await s.execute(insert(Loan), rows)
            rows.clear()

    async with db.transaction() as s:
        for pid, lib in patrons:
            pool = by_library[lib]
            copy_id = pool[rng.randrange(len(pool))]
            while copy_id in open_copies:
                copy_id = pool[rng.randrange(len(pool))]
            open_copies.add(copy_id)
            due = TODAY + timedelta(days=rng.randint(-14, 14))
            rows.append(dict(library_id=lib, copy_id=copy_id, patron_id=pid, due_date=due, renewals=0,
                             checked_out_at=datetime.combine(due - timedelta(days=14), datetime.min.time(), UTC)))
            if len(rows) >= chunk:
                await flush(s)
        await flush(s)
        history = province.loans - len(patrons)
        for n in range(history):
            pid, lib = patrons[rng.randrange(len(patrons))]
            pool = by_library[lib]
            out = now - timedelta(days=rng.randint(20, 365))
            rows.append(dict(library_id=lib, copy_id=pool[rng.randrange(len(pool))], patron_id=pid,
                             checked_out_at=out, due_date=(out + timedelta(days=14)).date(),
                             returned_at=out + timedelta(days=rng.randint(1, 20)), renewals=rng.randint(0, 1)))
            if len(rows) >= chunk:
                await flush(s)
                if n % 500_000 < chunk:
                    print(f"  loans: {n + len(patrons):,} ({time.perf_counter() - started:.0f} s)", flush=True)
        await flush(s)
        on_loan = sorted(open_copies)
        for i in range(0, len(on_loan), chunk):
            await s.execute(Copy.__table__.update().where(Copy.id.in_(on_loan[i:i + chunk]))
                            .values(status=CopyStatus.ON_LOAN))
    print(f"  loans: {province.loans:,} ({time.perf_counter() - started:.0f} s)", flush=True)


async def province_database(kind: str, pg_url: str, province: Province, fresh: bool, rng: random.Random) -> str:
    """A database URL holding the province, from the cached copy when there is one."""
    tag = f"v{SEED_VERSION}_{province.libraries}_{province.students}_{province.loans}"
    if kind == "sqlite":
        OUT.mkdir(parents=True, exist_ok=True)
        cached = OUT / f"load-{tag}.db"
        run_copy = OUT / "load-run.db"
        if fresh or not cached.exists():
            building = cached.with_name(cached.name + ".building")   # renamed when complete
            for p in [*OUT.glob(cached.name + "*")]:
                p.unlink()
            url = f"sqlite+aiosqlite:///{building}"
            print(f"building the SQLite province in {cached} …", flush=True)
            await upgrade_async(url)
            db = Database(url)
            try:
                await seed(db, province, rng)
                async with db.engine.connect() as c:
                    await c.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            finally:
                await db.dispose()
            os.replace(building, cached)
        for p in OUT.glob(run_copy.name + "*"):
            p.unlink()
        import sqlite3

        src, dst = sqlite3.connect(cached), sqlite3.connect(run_copy)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return f"sqlite+aiosqlite:///{run_copy}"
    server = make_url(pg_url)
    admin_url = server.render_as_string(hide_password=False)
    template = f"docsach_load_{tag}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            exists = (await conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": template})).first()
            if fresh and exists:
                await conn.execute(text(f'DROP DATABASE "{template}" WITH (FORCE)'))
                exists = None
            if not exists:
                print(f"building the PostgreSQL province in database {template} …", flush=True)
                building = template + "_building"     # renamed when complete
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)'))
                await conn.execute(text(f'CREATE DATABASE "{building}"'))
                url = server.set(database=building).render_as_string(hide_password=False)
                await upgrade_async(url)
                db = Database(url)
                try:
                    await seed(db, province, rng)
                    async with db.engine.connect() as c:
                        await c.execution_options(isolation_level="AUTOCOMMIT")
                        await c.execute(text("ANALYZE"))
                finally:
                    await db.dispose()
                await conn.execute(text(f'ALTER DATABASE "{building}" RENAME TO "{template}"'))
            await conn.execute(text('DROP DATABASE IF EXISTS "docsach_load_run" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "docsach_load_run" TEMPLATE "{template}"'))
    finally:
        await admin.dispose()
    return server.set(database="docsach_load_run").render_as_string(hide_password=False)


# -- the traffic ------------------------------------------------------------------------------------

@dataclass
class Student:
    chat: int
    library_id: int
    loan_id: int | None
    renewals: int


@dataclass
class Request:
    kind: str
    chat: int
    sent: float
    query_id: str | None = None
    status: int = 0
    replied: float | None = None
    failed_reply: bool = False    # the bot answered with its apology (internal error, database down)


@dataclass
class Step:
    rate: float
    seconds: float
    requests: list[Request] = field(default_factory=list)
    cpu: float = 0.0     # CPU seconds the workers used during the step (load-independent cost)
    load: float = 0.0    # the machine's 1-minute load average at the end of the step

    @property
    def cpu_ms_per_update(self) -> float:
        done = len([r for r in self.requests if r.replied is not None])
        return 1000 * self.cpu / done if done else float("nan")

    def latencies(self, kind: str | None = None) -> list[float]:
        return sorted(r.replied - r.sent for r in self.requests
                      if r.replied is not None and (kind is None or r.kind == kind))

    @property
    def errors(self) -> int:
        return sum(1 for r in self.requests if r.status != 200 or r.replied is None or r.failed_reply)

    @property
    def sustained(self) -> float:
        return len([r for r in self.requests if r.replied is not None]) / self.seconds


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


async def load_students(url: str, sample: int, rng: random.Random) -> tuple[list[Student], list[tuple[int, str]]]:
    db = Database(url)
    try:
        async with db.session() as s:
            rows = (await s.execute(text(
                "SELECT c.chat_id, p.library_id, l.id, l.renewals FROM chat_identities c "
                "JOIN patrons p ON p.id = c.patron_id "
                "LEFT JOIN loans l ON l.patron_id = p.id AND l.returned_at IS NULL "
                "WHERE c.channel = 'telegram' ORDER BY c.id"))).all()
            titles = (await s.execute(text("SELECT id, title FROM titles ORDER BY id"))).all()
    finally:
        await db.dispose()
    students = [Student(int(chat), lib, loan, renewals or 0) for chat, lib, loan, renewals in rows]
    rng.shuffle(students)
    return students[:sample], [(t.id, t.title) for t in titles]


def search_query(title: str, rng: random.Random) -> str:
    """What a student types: a few words of the title, often without diacritics or with a typo."""
    from services.textfold import fold

    words = [w for w in title.split() if len(w) > 1][:6] or [title]
    start = rng.randrange(max(1, len(words) - 2))
    query = " ".join(words[start:start + rng.randint(2, 3)])
    if rng.random() < 0.5:
        query = fold(query)
    if rng.random() < 0.3 and len(query) > 5:
        i = rng.randrange(1, len(query) - 1)
        query = query[:i] + query[i + 1] + query[i] + query[i + 2:]
    return query[:60]


class Traffic:
    def __init__(self, api: FakeBotApi, webhook_url: str, students: list[Student], titles: list[tuple[int, str]],
                 rng: random.Random) -> None:
        self.api = api
        self.url = webhook_url
        self.students = students
        self.titles = titles
        self.vi_titles = titles[-2666:]
        self.rng = rng
        self.busy: set[int] = set()
        self.router = build_app(Settings(database_url="sqlite+aiosqlite://", secret_key=SECRET.encode(),
                                         secret_key_is_ephemeral=False)).router
        self.waiting: dict[int, Request] = {}
        self.queries: dict[str, int] = {}   # callback query id → chat
        self.replied_methods = {"sendMessage", "editMessageText", "sendPhoto", "sendDocument"}
        catalogs = self.router.deps.catalogs
        self.apologies = {catalogs.translator(lang)(key) for lang in ("vi", "en")
                          for key in ("error.internal", "error.unavailable", "telegram.error")}
        self.seen_calls = 0

    def pick_kind(self) -> str:
        x, total = self.rng.random(), 0.0
        for kind, share in MIX:
            total += share
            if x < total:
                return kind
        return MIX[-1][0]

    def update_for(self, kind: str, student: Student) -> dict:
        chat = student.chat
        title_id, title = self.rng.choice(self.vi_titles if self.rng.random() < 0.6 else self.titles)
        if kind == "search":
            return self.api.message_update(chat, search_query(title, self.rng))
        if kind == "my_loans":
            return self.api.message_update(chat, "/loans")
        if kind == "book_card":
            data = self.router.encode(str(chat), "book", title_id)
        elif student.loan_id is not None and self.rng.random() < 0.5:
            data = self.router.encode(str(chat), "renew", student.loan_id, student.renewals)
        else:
            data = self.router.encode(str(chat), "hold", title_id)
        message = self.api._send_message({"chat_id": chat, "text": "…"}, {})   # the message with the button
        return self.api.callback_update(chat, message["message_id"], data)

    def collect(self) -> None:
        """Match the bot's calls to the requests waiting for them (first reply per chat)."""
        calls = self.api.calls
        for call in calls[self.seen_calls:]:
            chat = call.params.get("chat_id")
            if call.method == "answerCallbackQuery" and call.status == 200 and call.params.get("text"):
                chat = self.queries.pop(call.params.get("callback_query_id"), None)   # a toast is a reply too
            elif not (call.method in self.replied_methods and call.status == 200):
                continue
            if chat is not None:
                request = self.waiting.pop(chat, None)
                if request is not None and call.at >= request.sent:
                    request.replied = call.at
                    request.failed_reply = (call.params.get("text") or "") in self.apologies
                    self.busy.discard(request.chat)
                    if request.query_id:
                        self.queries.pop(request.query_id, None)
        self.seen_calls = len(calls)
        if len(calls) > 200_000:   # keep memory bounded on long runs
            del calls[: self.seen_calls]
            self.seen_calls = 0

    async def one(self, step: Step) -> None:
        student = self.rng.choice(self.students)
        if student.chat in self.busy:
            return
        self.busy.add(student.chat)
        kind = self.pick_kind()
        update = self.update_for(kind, student)
        request = Request(kind, student.chat, time.monotonic())
        if "callback_query" in update:
            request.query_id = update["callback_query"]["id"]
            self.queries[request.query_id] = student.chat
        self.waiting[student.chat] = request
        step.requests.append(request)
        try:
            request.status = await self.api.post_update_to_webhook(self.url, update, secret_token=WEBHOOK_SECRET,
                                                                   timeout=10)
        except Exception:
            request.status = -1

    async def run_step(self, rate: float, seconds: float, grace: float = 5.0) -> Step:
        step = Step(rate, seconds)
        tasks = []
        start = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = start + n / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            tasks.append(asyncio.create_task(self.one(step)))
            n += 1
            if n % 50 == 0:
                self.collect()
        deadline = time.monotonic() + grace + 5
        while time.monotonic() < deadline and any(r.replied is None for r in step.requests):
            await asyncio.sleep(0.1)
            self.collect()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.collect()
        for r in step.requests:
            if r.replied is None:
                self.waiting.pop(r.chat, None)
                self.busy.discard(r.chat)
        del elapsed
        return step


# -- the processes ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [int(c) for c in children] or [pid]


def start_docsach(url: str, api: FakeBotApi, workers: int, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSACH_", "TELEGRAM_", "PROMETHEUS_"))}
    env.update(DOCSACH_DATABASE_URL=url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_BASE_URL=api.base_url,
               TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET, DOCSACH_SECRET_KEY=SECRET, DOCSACH_REMINDERS="off",
               DOCSACH_LOG_LEVEL="WARNING", DOCSACH_SEARCH_SNAPSHOT=str(OUT / "search-snapshot.bin"),
               DOCSACH_LISTEN=f"127.0.0.1:{port}", DOCSACH_PUBLIC_URL=f"http://127.0.0.1:{port}")
    argv = [sys.executable, "-m", "bot.cli", "run", "--no-demo", "--webhook", "--url",
            f"http://127.0.0.1:{port}/telegram", "--listen", f"127.0.0.1:{port}"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    handle = log.open("w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc


async def wait_ready(api: FakeBotApi, traffic: Traffic, proc: subprocess.Popen, workers: int, within: float) -> None:
    """Until the webhook is set and every worker answers searches (the search index is built)."""
    deadline = time.monotonic() + within
    while not api.webhook.get("url"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("docsach did not start (see the log in bench/out)")
        await asyncio.sleep(0.5)
    good = 0
    while good < 20 * workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("docsach did not become ready (see the log in bench/out)")
        step = await traffic.run_step(rate=5, seconds=2, grace=20)
        good = good + len(step.latencies()) if step.errors == 0 and pct(step.latencies(), 95) < 1000 else 0


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Result:
    label: str
    workers: int
    steps: list[Step]
    memory: list[float]

    @property
    def best(self) -> Step | None:
        fine = [s for s in self.steps if s.errors == 0 and pct(s.latencies(), 95) <= 1000]
        return max(fine, key=lambda s: s.sustained) if fine else None


async def run_one(label: str, url: str, workers: int, args, rng: random.Random) -> Result:
    async with FakeBotApi(token=TOKEN, bot_username="docsach_load_bot") as api:
        port = free_port()
        students, titles = await load_students(url, 50_000, rng)
        traffic = Traffic(api, f"http://127.0.0.1:{port}/telegram", students, titles, rng)
        log_path = OUT / f"load-{label}.log"
        proc = start_docsach(url, api, workers, port, log_path)
        steps: list[Step] = []
        memory: list[float] = []
        try:
            await wait_ready(api, traffic, proc, workers, within=args.start_timeout)
            rate = args.start_rate
            while rate <= args.max_rate:
                pids = worker_pids(proc.pid)
                before = sum(cpu_seconds(p) for p in pids)
                step = await traffic.run_step(rate, args.step_seconds)
                step.cpu = sum(cpu_seconds(p) for p in pids) - before
                step.load = os.getloadavg()[0]
                steps.append(step)
                memory = [rss_mb(p) for p in worker_pids(proc.pid)]
                p95 = pct(step.latencies(), 95)
                failed = Counter(r.kind for r in step.requests
                                 if r.status != 200 or r.replied is None or r.failed_reply)
                print(f"  {label}: offered {rate:6.1f}/s  sustained {step.sustained:6.1f}/s  p95 {p95:7.0f} ms  "
                      f"errors {step.errors}" + (f" {dict(failed)}" if failed else "") + "  ("
                      + ", ".join(f"{k} {pct(step.latencies(k), 95):.0f}" for k, _ in MIX)
                      + f"; worker CPU {step.cpu_ms_per_update:.1f} ms/update; load {step.load:.1f})", flush=True)
                if p95 > 1000 or step.errors > max(3, 0.01 * len(step.requests)):
                    break
                rate *= args.factor
        finally:
            stop(proc)
        return Result(label, workers, steps, memory)


def report(results: list[Result], args) -> str:
    lines = [f"# docsach load test — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the end",
             f"# mix: {', '.join(f'{k} {int(v * 100)} %' for k, v in MIX)}; steps of {args.step_seconds:.0f} s, "
             f"rate ×{args.factor} from {args.start_rate}/s until p95 > 1 s", ""]
    lines.append(f"{'run':<16}{'workers':>8}{'sust./s':>9}{'offered':>9}{'p50':>7}{'p95':>7}{'p99':>7}"
                 f"{'errors':>8}{'CPU ms/upd':>11}  memory per worker (MB)")
    for r in results:
        best = r.best
        if best is None:
            lines.append(f"{r.label:<16}{r.workers:>8}  no step stayed under p95 1 s without errors")
            continue
        lat = best.latencies()
        lines.append(f"{r.label:<16}{r.workers:>8}{best.sustained:>9.1f}{best.rate:>9.1f}{pct(lat, 50):>7.0f}"
                     f"{pct(lat, 95):>7.0f}{pct(lat, 99):>7.0f}{best.errors:>8}{best.cpu_ms_per_update:>11.1f}  "
                     + " ".join(f"{m:.0f}" for m in r.memory))
    lines.append("")
    lines.append("per mix entry at the best step (p50 / p95 / p99 ms):")
    for r in results:
        best = r.best
        if best is None:
            continue
        parts = []
        for kind, _ in MIX:
            lat = best.latencies(kind)
            parts.append(f"{kind} {pct(lat, 50):.0f}/{pct(lat, 95):.0f}/{pct(lat, 99):.0f}")
        lines.append(f"  {r.label:<14} " + "; ".join(parts))
    lines.append("")
    lines.append("every step:")
    for r in results:
        for s in r.steps:
            lines.append(f"  {r.label:<14} offered {s.rate:6.1f}/s sustained {s.sustained:6.1f}/s "
                         f"p95 {pct(s.latencies(), 95):6.0f} ms errors {s.errors} "
                         f"worker CPU {s.cpu_ms_per_update:.1f} ms/update, machine load {s.load:.1f}")
    return "\n".join(lines)


async def main(args) -> None:
    rng = random.Random(args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    province = Province(args.libraries, args.students, args.loans, args.copies_per_library)
    results: list[Result] = []
    for workers in args.workers:
        url = await province_database("postgres", args.postgres, province, args.fresh, rng)
        args.fresh = False
        results.append(await run_one(f"postgres-{workers}w", url, workers, args, rng))
    if not args.skip_sqlite:
        url = await province_database("sqlite", args.postgres, province, args.fresh_sqlite, rng)
        results.append(await run_one("sqlite-1w", url, 1, args, rng))
    text_report = report(results, args)
    print("\n" + text_report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load-report.txt").write_text(text_report + "\n")
    (OUT / "load-report.json").write_text(json.dumps([
        {"label": r.label, "workers": r.workers, "memory_mb": r.memory,
         "steps": [{"rate": s.rate, "sustained": s.sustained, "errors": s.errors,
                    "p50": pct(s.latencies(), 50), "p95": pct(s.latencies(), 95), "p99": pct(s.latencies(), 99),
                    "cpu_ms_per_update": s.cpu_ms_per_update, "load": s.load}
                   for s in r.steps]} for r in results], indent=1))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgres", default=os.environ.get("DOCSACH_TEST_POSTGRES_URL",
                                                        "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument("--fresh", action="store_true", help="rebuild the PostgreSQL province")
    p.add_argument("--fresh-sqlite", action="store_true", help="rebuild the SQLite province")
    p.add_argument("--libraries", type=int, default=200)
    p.add_argument("--students", type=int, default=200_000)
    p.add_argument("--loans", type=int, default=2_000_000)
    p.add_argument("--copies-per-library", type=int, default=5_000)
    p.add_argument("--start-rate", type=float, default=20.0)
    p.add_argument("--factor", type=float, default=1.5)
    p.add_argument("--max-rate", type=float, default=1000.0)
    p.add_argument("--step-seconds", type=float, default=20.0)
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=14)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
