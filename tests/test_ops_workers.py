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
