"""Several worker processes on one database: ``docsach run --workers N``.

The supervisor (this module's :func:`supervise`) migrates the database once, then starts N
``docsach run`` processes that all listen on the same address (``SO_REUSEPORT``: the kernel
spreads connections over them, so webhooks and web pages need no proxy in between), restarts a
worker that dies, and stops them all on SIGTERM/SIGINT. Everything that must happen once lives in
the database, not in a process:

- reminder sweeps run in every worker; claims use ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so a
  notice is sent once;
- long polling (a platform allows one poller per bot) runs in exactly one worker, the holder of a
  :class:`LeaderLock` — a PostgreSQL advisory lock on its own connection (an OS file lock for
  SQLite). When that process dies its connection closes, the lock is free, and another worker
  takes over within seconds;
- each worker's search index polls the database for catalog changes (DOCSACH_SEARCH_REFRESH_SECONDS);
- metrics from all workers are summed (prometheus-client multiprocess mode in a temporary directory).

Instead of ``--workers`` the same can be had with systemd or compose replicas behind a reverse
proxy upstream (README "Several workers").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.db import Database

log = logging.getLogger(__name__)

WORKER_ENV = "DOCSACH_WORKER"          # "2/4" in the second of four workers
REUSE_PORT_ENV = "DOCSACH_REUSE_PORT"  # "1": bind with SO_REUSEPORT
QUICK_EXIT = 60.0                      # seconds: a worker dying sooner than this after its start


def worker_label() -> str | None:
    return os.environ.get(WORKER_ENV)


def reuse_port() -> bool:
    return os.environ.get(REUSE_PORT_ENV) == "1"


# -- one poller per platform ------------------------------------------------------------------------

def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` from a name like "poll:telegram"."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class LeaderLock:
    """Held by at most one process at a time; released by the OS/database when the holder dies."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._conn = None
        self._file = None

    @property
    def held(self) -> bool:
        return self._conn is not None or self._file is not None

    async def try_acquire(self) -> bool:
        if self.held:
            return await self.still_held()
        if self.db.is_postgres:
            conn = await self.db.engine.connect()
            try:
                got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                          {"k": lock_key(self.name)})).scalar_one()
                await conn.commit()
            except BaseException:
                await conn.close()
                raise
            if got:
                self._conn = conn
                return True
            await conn.close()
            return False
        return await asyncio.to_thread(self._try_file_lock)

    def _try_file_lock(self) -> bool:
        import fcntl

        database = make_url(self.db.url).database or "docsach"
        path = Path(f"{database}.{self.name.replace(':', '-')}.lock")
        handle = open(path, "a+")   # held open while we lead
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    async def still_held(self) -> bool:
        """Our lock connection still answers (a database restart drops the lock with it)."""
        if self._file is not None:
            return True
        if self._conn is None:
            return False
        try:
            await asyncio.wait_for(self._conn.execute(text("SELECT 1")), 10)
            await self._conn.commit()
            return True
        except Exception:
            await self.release()
            return False

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(self.name)})
                await conn.commit()
            with contextlib.suppress(Exception):
                await conn.close()
        if self._file is not None:
            handle, self._file = self._file, None
            handle.close()


async def lead(lock: LeaderLock, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
               *, every: float = 3.0) -> None:
    """Run ``start`` while this process holds ``lock`` and ``stop`` when it loses it; forever."""
    leading = False
    try:
        while True:
            if await lock.try_acquire():
                if not leading:
                    log.info("this worker now leads %s", lock.name)
                    await start()
                    leading = True
            elif leading:
                log.warning("lost the %s lock; another worker takes over", lock.name)
                leading = False
                await stop()
            await asyncio.sleep(every)
    finally:
        if leading:
            with contextlib.suppress(Exception):
                await stop()
        await lock.release()


# -- the supervisor ---------------------------------------------------------------------------------

def child_argv(argv: list[str]) -> list[str]:
    """The ``run`` arguments without ``--workers N`` (each child is one worker)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


def supervise(run_args: list[str], workers: int, *, database_url: str, restart_delay: float = 1.0) -> int:
    """Start ``workers`` processes of ``docsach run`` and keep them running until told to stop."""
    from services.db import upgrade

    upgrade(database_url)   # once, before any worker starts (concurrent migrations would race)
    metrics_dir = tempfile.mkdtemp(prefix="docsach-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir, **{REUSE_PORT_ENV: "1"})
    # Every worker must check webhooks against the same secret.
    env.setdefault("TELEGRAM_WEBHOOK_SECRET", secrets.token_urlsafe(32))
    children: dict[int, subprocess.Popen] = {}
    started_at: dict[int, float] = {}
    quick_exits = 0          # workers that died soon after starting, in a row: a setting is wrong
    stopping = False
    exit_code = 0

    def spawn(index: int) -> None:
        child_env = dict(env, **{WORKER_ENV: f"{index + 1}/{workers}"})
        children[index] = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", *child_argv(run_args)],
                                           env=child_env)
        started_at[index] = time.monotonic()
        log.info("worker %d/%d started (pid %d)", index + 1, workers, children[index].pid)

    def stop_all(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(workers):
            spawn(index)
        while not stopping:
            time.sleep(0.2)
            for index, child in list(children.items()):
                code = child.poll()
                if code is None or stopping:
                    continue
                _mark_dead(child.pid, metrics_dir)
                quick_exits = quick_exits + 1 if time.monotonic() - started_at[index] < QUICK_EXIT else 0
                if code == 2 or quick_exits >= 3 * workers:   # 2: docsach refused a setting; retrying cannot help
                    log.error("workers cannot start (exit code %s): stopping; see the messages above", code)
                    exit_code = code or 1
                    stop_all(signal.SIGTERM, None)
                    break
                log.error("worker %d/%d (pid %d) exited with %s; starting a new one", index + 1, workers,
                          child.pid, code)
                time.sleep(restart_delay)
                spawn(index)
        deadline = time.monotonic() + 30
        for child in children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(max(0.1, deadline - time.monotonic()))
            if child.poll() is None:
                child.kill()
                child.wait()
        return exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """A dead worker's live gauges (pool use) must not count any more."""
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)
