"""A reminder sweep in its own process, for the kill -9 tests in ``test_reminders.py``.

``python -m tests.sweep_worker DB_URL OUT_FILE NOW_ISO MODE N``: sends through a channel that
appends each chat id to OUT_FILE (flushed and fsynced, like a message that reached Telegram).
After N messages it hangs forever — MODE ``send``: inside the send, after the message went out;
MODE ``claim``: after claiming, before the send is attempted — and waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime

from bot.app import build_app
from bot.config import Settings
from bot.scheduler import RateLimiter, Sweeper
from handlers.messages import Delivery, Reply
from services.common import Clock


class FileChannel:
    name = "test"

    def __init__(self, path: str, mode: str, after: int) -> None:
        self.path, self.mode, self.after, self.count = path, mode, after, 0

    def write(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        self.write(chat_id)
        self.count += 1
        if self.mode == "send" and self.count > self.after:
            self.write("HANG")
            await asyncio.Event().wait()
        return Delivery(str(self.count))


class HangingLimiter(RateLimiter):
    def __init__(self, channel: FileChannel) -> None:
        super().__init__(per_second=1000, per_chat_interval=0)
        self.channel = channel

    async def acquire(self, chat: str) -> None:
        if self.channel.mode == "claim" and self.channel.count >= self.channel.after:
            self.channel.write("HANG")
            await asyncio.Event().wait()
        await super().acquire(chat)


async def main(url: str, out: str, now: str, mode: str, after: int) -> None:
    app = build_app(Settings(database_url=url, secret_key=b"test-secret", secret_key_is_ephemeral=False),
                    clock=Clock(fixed=datetime.fromisoformat(now)))
    channel = FileChannel(out, mode, after)
    app.deps.outbound["test"] = channel
    await Sweeper(app.router, worker="doomed", concurrency=1, limiter=HangingLimiter(channel)).sweep()
    channel.write("DONE")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
