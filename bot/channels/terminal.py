"""The terminal chat: the same handlers as every channel, in a terminal (or a pipe, for scripts).

Buttons are shown as numbered choices; typing the number presses the button. ``docsach run`` opens
it only when no messaging platform is configured, and end of input then stops the whole process
(so ``printf '/start\n/help\n' | docsach run`` works in scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
from pathlib import Path
from typing import TextIO

from aiohttp import web

from handlers.messages import Button, ChannelProfile, Delivery, Incoming, Reply

CHANNEL = "terminal"
PROFILE = ChannelProfile(name=CHANNEL, max_text=100_000, max_input=4096, max_payload=64, buttons=True,
                         documents=True)


class TerminalChannel:
    """Prints replies; remembers the last reply's buttons so a typed number can press one."""

    name = CHANNEL

    def __init__(self, out: TextIO = sys.stdout, attachments_dir: Path = Path(".")) -> None:
        self.out = out
        self.attachments_dir = attachments_dir
        self.choices: list[Button] = []
        self.count = 0

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        self.show(reply)
        return Delivery(message_ref=str(self.count))

    def show(self, reply: Reply) -> None:
        self.count += 1
        marker = "✎ " if reply.edit else ""
        self.out.write(f"\n{marker}{reply.text}\n")
        flat = [b for row in reply.buttons for b in row]
        if flat:
            self.choices = flat
            for n, button in enumerate(flat, 1):
                target = f" → {button.url}" if button.url else ""
                self.out.write(f"  [{n}] {button.label}{target}\n")
        if reply.attachment is not None:
            path = self.attachments_dir / reply.attachment.filename
            path.write_bytes(reply.attachment.data)
            self.out.write(f"  (saved {path})\n")
        self.out.flush()

    def button_for(self, line: str) -> Button | None:
        if line.isdigit() and 1 <= int(line) <= len(self.choices):
            button = self.choices[int(line) - 1]
            return button if button.payload else None
        return None


async def run_terminal(router, *, user: str = "local", language: str | None = None,
                       stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, prompt: bool | None = None) -> None:
    """Read lines until end of input; each line is one message (or a button press)."""
    channel = TerminalChannel(out)
    # Reminders and other pushed messages for terminal chats appear here too.
    router.deps.outbound.setdefault(CHANNEL, channel)
    router.deps.channels.setdefault(CHANNEL, PROFILE)
    interactive = stdin.isatty() if prompt is None else prompt
    if interactive:
        out.write("docsach — gõ /help, Ctrl-D để thoát (type /help, Ctrl-D to quit)\n")
    lines = _read_lines(stdin)
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = await lines.get()
        if line == "":
            break
        text = line.rstrip("\n")
        button = channel.button_for(text.strip())
        if button is not None:
            event = Incoming(channel=CHANNEL, chat_id=user, user_id=user, button=button.payload,
                             message_ref=str(channel.count), language_hint=language)
        else:
            event = Incoming(channel=CHANNEL, chat_id=user, user_id=user, text=text, language_hint=language)
        for reply in await router.dispatch(event):
            channel.show(reply)
    if interactive:
        out.write("\n")


def _read_lines(stdin: TextIO) -> asyncio.Queue[str]:
    """Lines from ``stdin`` ("" at the end), read by a daemon thread: a blocked read never keeps
    the process from stopping (a thread-pool read would hold up interpreter shutdown)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def put(line: str) -> None:
        with contextlib.suppress(RuntimeError):   # the loop is gone: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, line)

    def read() -> None:
        try:
            for line in iter(stdin.readline, ""):
                put(line)
        except (OSError, ValueError):
            pass
        put("")

    threading.Thread(target=read, name="terminal-stdin", daemon=True).start()
    return queue


class TerminalAdapter:
    """The terminal chat as a :class:`bot.channels.base.Channel` for ``docsach run``: ``finished``
    is set at end of input, which ends the process."""

    name = CHANNEL
    messaging = False

    def __init__(self, app, *, user: str = "local", stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
        self.app = app
        self.user = user
        self.stdin = stdin
        self.out = out
        self.finished = asyncio.Event()
        self.task: asyncio.Task | None = None

    def mount(self, web_app: web.Application) -> None:
        pass

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await run_terminal(self.app.router, user=self.user, stdin=self.stdin, out=self.out)
        finally:
            self.finished.set()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.app.deps.outbound.pop(CHANNEL, None)
        self.app.deps.channels.pop(CHANNEL, None)


def has_input(stdin: TextIO = sys.stdin) -> bool:
    """A terminal, a pipe or a file: someone may type or a script feeds lines. A server started
    with no input (systemd, Docker: stdin is /dev/null) keeps serving the web instead of ending."""
    try:
        mode = os.fstat(stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def configure(app, options, *, user: str = "local") -> TerminalAdapter | None:
    return TerminalAdapter(app, user=user) if has_input() else None
