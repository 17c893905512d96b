"""The terminal chat: the same handlers as Telegram, in a terminal (or a pipe, for scripts).

Buttons are shown as numbered choices; typing the number presses the button. Files the bot sends
(PDF slips, certificates) are saved in the data directory (``DOCSACH_DATA_DIR``/files), not in
the folder the command runs from.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from handlers.messages import Button, Delivery, Incoming, Reply

CHANNEL = "terminal"


class TerminalChannel:
    """Prints replies; remembers the last reply's buttons so a typed number can press one."""

    name = CHANNEL

    def __init__(self, out: TextIO = sys.stdout, attachments_dir: Path | None = None) -> None:
        from bot.config import data_dir

        self.out = out
        self.attachments_dir = attachments_dir or data_dir() / "files"
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
            self.attachments_dir.mkdir(parents=True, exist_ok=True)
            path = self.attachments_dir / Path(reply.attachment.filename).name
            path.write_bytes(reply.attachment.data)
            self.out.write(f"  📎 {path}\n")   # no words: the chat may be in either language
        self.out.flush()

    def button_for(self, line: str) -> Button | None:
        if line.isdigit() and 1 <= int(line) <= len(self.choices):
            button = self.choices[int(line) - 1]
            return button if button.payload else None
        return None


async def run_terminal(router, *, user: str = "local", language: str | None = None,
                       stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, prompt: bool | None = None,
                       after_each: Callable[[], Awaitable[object]] | None = None) -> None:
    """Read lines until end of input; each line is one message (or a button press).
    ``after_each`` runs after every reply (``docsach chat`` sweeps the outbox there, so notices
    such as an approved reflection or a reminder appear in the terminal as they would on a phone)."""
    channel = TerminalChannel(out)
    # Reminders and other pushed messages for terminal chats appear here too.
    router.deps.outbound.setdefault(CHANNEL, channel)
    interactive = stdin.isatty() if prompt is None else prompt
    if interactive:
        out.write("docsach — gõ /help, Ctrl-D để thoát (type /help, Ctrl-D to quit)\n")
    loop = asyncio.get_running_loop()
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = await loop.run_in_executor(None, stdin.readline)
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
        if after_each is not None:
            await after_each()
    if interactive:
        out.write("\n")
