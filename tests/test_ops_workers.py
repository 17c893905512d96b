"""Several workers on one database: one long-poller per platform, handed over when its process dies."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

from bot import workers
from services.db import Database


async def test_only_one_process_holds_the_poll_lock_and_it_passes_on(db: Database):
    other = Database(db.url)
    first, second = workers.LeaderLock(db, "poll:telegram"), workers.LeaderLock(other, "poll:telegram")
    try:
        assert await first.try_acquire()
        assert not await second.try_acquire()
        assert await first.try_acquire()            # still ours
        zalo = workers.LeaderLock(other, "poll:zalo")
        assert await zalo.try_acquire()   # another platform's lock is separate
        await zalo.release()
        await first.release()
        assert await second.try_acquire()
        assert not await first.try_acquire()
    finally:
        await first.release()
        await second.release()
        await other.dispose()


def test_a_killed_holder_frees_the_lock(db: Database, tmp_path):
    """kill -9 of the leading process: its connection (or file lock) dies with it."""
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from bot.workers import LeaderLock
        from services.db import Database

        async def main():
            lock = LeaderLock(Database({db.url!r}), "poll:telegram")
            assert await lock.try_acquire()
            print("held", flush=True)
            await asyncio.sleep(120)

        asyncio.run(main())
    """))
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"

        async def attempts() -> tuple[bool, bool]:
            lock = workers.LeaderLock(Database(db.url), "poll:telegram")
            try:
                before = await lock.try_acquire()
                holder.kill()
                holder.wait(10)
                for _ in range(50):
                    if await lock.try_acquire():
                        return before, True
                    await asyncio.sleep(0.1)
                return before, False
            finally:
                await lock.release()
                await lock.db.dispose()

        before, after = asyncio.run(attempts())
        assert (before, after) == (False, True)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_child_arguments_drop_the_workers_option():
    assert workers.child_argv(["--webhook", "--workers", "3", "--url", "https://x"]) == \
        ["--webhook", "--url", "https://x"]
    assert workers.child_argv(["--workers=2", "--no-demo"]) == ["--no-demo"]
    assert workers.lock_key("poll:telegram") == workers.lock_key("poll:telegram") != workers.lock_key("poll:zalo")


# -- three real worker processes on PostgreSQL, Telegram by webhook ---------------------------------

import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import aiohttp  # noqa: E402
import pytest  # noqa: E402
from sqlalchemy import select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bot.app import build_app  # noqa: E402
from bot.config import Settings  # noqa: E402
from services import accounts  # noqa: E402
from services.db import create_engine, upgrade_async  # noqa: E402
from services.models import (  # noqa: E402
    ChatIdentity,
    Copy,
    CopyStatus,
    Hold,
    Library,
    Loan,
    Notification,
    Patron,
    Role,
    Title,
)
from tests.conftest import POSTGRES_URL  # noqa: E402
from tests.fake_bot_api import FakeBotApi  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECRET = "three-workers-secret-key-0123456789"
HOOK_SECRET = "three-workers-webhook"
TOKEN = "7312345678:AAF3k9-workers_Token_value_xyz0123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _province(url: str) -> dict:
    """The demo library, never quiet; 12 students to link by code; 10 linked students with a loan due
    tomorrow (one due_soon reminder each)."""
    from services.demo import load_demo

    await upgrade_async(url)
    db = Database(url)
    try:
        await load_demo(db)
        async with db.transaction() as s:
            library = (await s.execute(select(Library).where(Library.code == "demo"))).scalar_one()
            library.settings = dict(library.settings or {}, reminders={"quiet_hours": ["00:00", "00:00"]})
            s.add_all(Patron(library_id=library.id, card_number=f"WK{i:03d}", full_name=f"Học Sinh Worker {i}",
                             role=Role.STUDENT, class_name="7W1", grade=7, language="en", preferences={})
                      for i in range(12))
            s.add_all(Patron(library_id=library.id, card_number=f"RM{i:03d}", full_name=f"Học Sinh Nhắc {i}",
                             role=Role.STUDENT, class_name="7R1", grade=7, language="en", preferences={})
                      for i in range(10))
        async with db.transaction() as s:
            reminded = list((await s.execute(select(Patron).where(Patron.class_name == "7R1")
                                             .order_by(Patron.id))).scalars())
            copies = list((await s.execute(select(Copy).where(Copy.status == CopyStatus.AVAILABLE)
                                           .order_by(Copy.id).limit(10))).scalars())
            tomorrow = datetime.now(UTC).date() + timedelta(days=1)
            for n, (patron, copy) in enumerate(zip(reminded, copies, strict=True)):
                copy.status = CopyStatus.ON_LOAN
                s.add(Loan(library_id=library.id, copy_id=copy.id, patron_id=patron.id, due_date=tomorrow,
                           checked_out_at=datetime.now(UTC) - timedelta(days=13)))
                s.add(ChatIdentity(channel="telegram", external_id=str(880000 + n), chat_id=str(880000 + n),
                                   patron_id=patron.id, linked_at=datetime.now(UTC)))
        librarian = await accounts.operator_actor(db, "demo")
        issued = await accounts.issue_link_codes(db, librarian, class_name="7W1", clock=build_app(
            Settings(database_url=url)).deps.clock, key=accounts.code_key(SECRET.encode()))
        return {"codes": {i.card_number: i.code for i in issued}, "reminder_chats": [880000 + n for n in range(10)]}
    finally:
        await db.dispose()


def _worker_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES_URL, reason="three workers need PostgreSQL (DOCSACH_TEST_POSTGRES_URL)")
async def test_three_workers_share_the_work_and_a_kill_9_loses_nothing(tmp_path):
    server = make_url(POSTGRES_URL)
    name = f"docsach_workers_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    supervisor = None
    log_path = tmp_path / "workers.log"
    try:
        setup = await _province(url)
        router = build_app(Settings(database_url=url, secret_key=SECRET.encode(), secret_key_is_ephemeral=False)).router
        async with FakeBotApi(token=TOKEN) as api:
            port = _free_port()
            hook = f"http://127.0.0.1:{port}/telegram"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSACH_", "TELEGRAM_", "PROMETHEUS_"))}
            env.update(DOCSACH_DATABASE_URL=url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_BASE_URL=api.base_url,
                       TELEGRAM_WEBHOOK_SECRET=HOOK_SECRET, DOCSACH_SECRET_KEY=SECRET, DOCSACH_LOG_FORMAT="json",
                       DOCSACH_LOG_LEVEL="INFO", DOCSACH_REMINDER_INTERVAL_MINUTES="0.05",
                       DOCSACH_SCHEDULER_FIRST_RUN_SECONDS="2", DOCSACH_SEARCH_REFRESH_SECONDS="1")
            with log_path.open("w") as log_file:
                supervisor = subprocess.Popen(  # noqa: ASYNC220 (starting is not waiting)
                    [sys.executable, "-m", "bot.cli", "run", "--no-demo", "--webhook", "--url", hook,
                     "--listen", f"127.0.0.1:{port}", "--workers", "3"],
                    cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while len(_worker_pids(supervisor.pid)) < 3 or not api.webhook.get("url"):
                assert supervisor.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)   # the other workers finish starting too

            async def post(update: dict) -> None:
                """As Telegram does: POST, and again after a failure, until a 200."""
                for _ in range(20):
                    try:
                        if await api.post_update_to_webhook(hook, update, secret_token=HOOK_SECRET, timeout=15) == 200:
                            return
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                    await asyncio.sleep(0.5)
                raise AssertionError(f"update {update['update_id']} was never accepted")

            async def reply_to(chat: int, after: int, within: float = 45) -> dict:
                """The first message sent or edited in ``chat`` after ``after`` calls."""
                end = time.monotonic() + within
                while time.monotonic() < end:
                    for call in api.calls[after:]:
                        if call.method in ("sendMessage", "editMessageText") and call.ok \
                                and call.params.get("chat_id") == chat:
                            return call.params
                    await asyncio.sleep(0.05)
                raise AssertionError(f"no reply in chat {chat}")

            def press(params: dict, action: str, chat: int) -> str:
                for row in (params.get("reply_markup") or {}).get("inline_keyboard", []):
                    for button in row:
                        data = button.get("callback_data")
                        if data and (router.decode(str(chat), data) or ("",))[0] == action:
                            return data
                raise AssertionError(f"no {action} button in {params.get('text')!r}")

            async def conversation(n: int, card: str, code: str) -> None:
                chat = 770000 + n
                mark = len(api.calls)
                await post(api.message_update(chat, "/link", language_code="en"))
                assert "send the code" in (await reply_to(chat, mark))["text"]
                mark = len(api.calls)
                await post(api.message_update(chat, code, language_code="en"))
                linked = (await reply_to(chat, mark))["text"]
                assert linked.startswith("Linked! Hello Học Sinh Worker"), linked
                mark = len(api.calls)
                await post(api.message_update(chat, "ngoi chua", language_code="en"))
                found = await reply_to(chat, mark)
                mark = len(api.calls)
                await post(api.callback_update(chat, 1, press(found, "book", chat), language_code="en"))
                card_reply = await reply_to(chat, mark)
                mark = len(api.calls)
                await post(api.callback_update(chat, 1, press(card_reply, "hold", chat), language_code="en"))
                await reply_to(chat, mark)

            first = [conversation(n, card, code) for n, (card, code) in enumerate(sorted(setup["codes"].items())[:6])]
            await asyncio.gather(*first)

            # kill -9 one worker while six more conversations run; Telegram re-posts what failed.
            async def kill_one() -> int:
                await asyncio.sleep(0.3)
                victim = _worker_pids(supervisor.pid)[0]
                os.kill(victim, signal.SIGKILL)
                return victim

            rest = [conversation(6 + n, card, code)
                    for n, (card, code) in enumerate(sorted(setup["codes"].items())[6:])]
            victim, *_ = await asyncio.gather(kill_one(), *rest)

            # A title added now (an import elsewhere) is found by every worker's search index.
            db = Database(url)
            try:
                async with db.transaction() as s:
                    s.add(Title(source_key="workers:fresh", title="Zyxwvu Quokka Chronicles", authors="Test"))
            finally:
                await db.dispose()
            await asyncio.sleep(4)   # DOCSACH_SEARCH_REFRESH_SECONDS=1
            for n in range(9):
                chat = 990000 + n
                mark = len(api.calls)
                await post(api.message_update(chat, "zyxwvu quokka", language_code="en"))
                assert "Zyxwvu Quokka Chronicles" in (await reply_to(chat, mark))["text"]

            # Every reminder arrives once, even with three sweepers and one of them killed.
            end = time.monotonic() + 90
            reminder_chats = setup["reminder_chats"]
            while time.monotonic() < end:
                got = {c: len(api.sent_messages(c)) for c in reminder_chats}
                if all(got.values()):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(8)   # more sweeps run: nothing may arrive twice
            assert {c: len(api.sent_messages(c)) for c in reminder_chats} == {c: 1 for c in reminder_chats}

            db = Database(url)
            try:
                async with db.session() as s:
                    holds = (await s.execute(select(Hold.patron_id).join(Patron, Patron.id == Hold.patron_id)
                                             .where(Patron.class_name == "7W1"))).scalars().all()
                    statuses = (await s.execute(select(Notification.status).join(
                        Patron, Patron.id == Notification.patron_id).where(Patron.class_name == "7R1"))).scalars().all()
            finally:
                await db.dispose()
            assert len(set(holds)) == 12            # every conversation reached its reserve, none twice
            assert sorted(map(str, statuses)) == ["sent"] * 10
            assert api.errors == []
            # /metrics sums every worker's counters (prometheus-client multiprocess mode).
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
            handled = sum(float(line.split()[-1]) for line in metrics.splitlines()
                          if line.startswith('docsach_updates_total{channel="telegram",outcome="ok"}'))
            assert response.status == 200 and handled >= 12 * 5 - 10   # the killed worker's counts go with it
            assert 'docsach_sends_total{channel="telegram",status="sent"}' in metrics
    finally:
        if supervisor is not None and supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
            try:
                supervisor.wait(40)
            except subprocess.TimeoutExpired:
                supervisor.kill()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    # Updates were spread: lines from at least three worker processes handled Telegram updates.
    handlers = set()
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "bot.observe" and entry.get("id", "").startswith("te-"):
            handlers.add(entry["id"].split("-")[1].split(".")[0])
    assert len(handlers) >= 3, handlers
    assert format(victim, "x") in handlers or len(handlers) >= 4   # the killed one had handled some, or its successor did


async def test_workers_that_cannot_start_stop_the_supervisor_with_their_message(tmp_path):
    """A refused token makes every worker exit at once: the supervisor gives up instead of looping."""
    async with FakeBotApi(token=TOKEN) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCSACH_", "TELEGRAM_", "PROMETHEUS_"))}
        env.update(DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
                   TELEGRAM_BOT_TOKEN="7312345678:AAF3k9-not_the_right_token_000000",
                   TELEGRAM_API_BASE_URL=api.base_url, DOCSACH_SECRET_KEY=SECRET)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", "--no-demo", "--workers", "2", "--listen",
            f"127.0.0.1:{_free_port()}", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text_out = out.decode()
    assert proc.returncode == 2, text_out[-2000:]
    assert "Telegram refused TELEGRAM_BOT_TOKEN" in text_out
    assert "workers cannot start (exit code 2)" in text_out and "Traceback" not in text_out
