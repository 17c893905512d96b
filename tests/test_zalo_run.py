"""``docsach run`` with only ZALO_BOT_TOKEN and ZALO_API_BASE_URL (no Telegram token, standard
input closed) serves Zalo conversations until SIGTERM — the issue's "Done when", as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.fake_zalo_api import FakeZaloApi

pytestmark = pytest.mark.slow
DOCSACH = Path(sys.executable).with_name("docsach")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_docsach_run_serves_zalo_until_sigterm(tmp_path):
    async with FakeZaloApi() as api:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEGRAM_", "ZALO_", "DOCSACH_"))}
        env.update(ZALO_BOT_TOKEN=api.token, ZALO_API_BASE_URL=api.base_url,
                   DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'run.db'}",
                   DOCSACH_SECRET_KEY="run-test-secret", ZALO_MESSAGES_PER_SECOND="50",
                   DOCSACH_LISTEN=f"127.0.0.1:{free_port()}")
        proc = await asyncio.create_subprocess_exec(
            str(DOCSACH), "run", cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            # Migrates, loads the demo library, then polls.
            assert await api.wait_until(lambda: api.calls_to("getUpdates") or proc.returncode is not None, 60), \
                "docsach run never polled"
            assert proc.returncode is None, (await proc.stderr.read()).decode()
            api.push_text("u1", "/start", display_name="Nguyễn Văn A")
            [greeting] = await api.wait_for("sendMessage", timeout=20)
            assert greeting.chat_id == "u1" and greeting.text.startswith("Xin chào")
            api.push_text("u1", "noi co don con lai")
            await api.wait_for("sendMessage", count=2, timeout=20)
            assert "1. Nỗi cô đơn còn lại" in api.texts("u1")[-1]
            await asyncio.sleep(0.2)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                raise
        stdout, stderr = await proc.communicate()
    log = stderr.decode() + stdout.decode()
    assert proc.returncode == 0, log
    assert "Zalo bot docsach.test is serving (long polling)" in log
    assert api.token not in log and "noi co don" not in log     # no token, no message text in the log


async def test_docsach_run_by_webhook_on_the_shared_server(tmp_path):
    port = free_port()
    async with FakeZaloApi() as api:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEGRAM_", "ZALO_", "DOCSACH_"))}
        env.update(ZALO_BOT_TOKEN=api.token, ZALO_API_BASE_URL=api.base_url,
                   ZALO_WEBHOOK_SECRET="webhook-secret-for-the-run-test",
                   DOCSACH_PUBLIC_URL=f"http://127.0.0.1:{port}", DOCSACH_LISTEN=f"127.0.0.1:{port}",
                   DOCSACH_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'run.db'}",
                   DOCSACH_SECRET_KEY="run-test-secret", DOCSACH_REMINDERS="off")
        proc = await asyncio.create_subprocess_exec(
            str(DOCSACH), "run", "--no-demo", cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert await api.wait_until(lambda: api.webhook["url"] or proc.returncode is not None, 60)
            assert proc.returncode is None, (await proc.stderr.read()).decode()
            assert api.webhook["url"] == f"http://127.0.0.1:{port}/zalo/webhook"
            update = api.message("u2", text="/start")
            assert await api.post_to_webhook(update, secret="not-the-secret") == 403
            assert await api.post_to_webhook(update) == 200
            [greeting] = await api.wait_for("sendMessage", timeout=20)
            assert greeting.chat_id == "u2" and greeting.text.startswith("Xin chào")
            assert api.calls_to("getUpdates") == []
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                raise
        stdout, stderr = await proc.communicate()
    log = stderr.decode() + stdout.decode()
    assert proc.returncode == 0, log
    assert "webhook-secret-for-the-run-test" not in log and api.token not in log
