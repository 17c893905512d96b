"""The contract every channel adapter (Telegram, the terminal, the web chat, Zalo…) implements.

The message model is platform-neutral and lives in ``handlers/messages.py`` (handlers must not
import ``bot``): :class:`Incoming` in, :class:`Reply` out, an :class:`OutputChannel` for pushed
notices with its three failure outcomes, and a :class:`ChannelProfile` saying what the platform can
do and how it links to a book, copy, shelf or link code. They are re-exported here so an adapter
needs one import.

An adapter is a :class:`Channel`:

- ``mount(web_app)`` adds its HTTP routes (a webhook, a page) to the one shared aiohttp server
  before it starts; adapters that poll or read a terminal add nothing;
- ``start()`` runs after the server listens: it registers ``deps.outbound[name]`` (pushed notices)
  and ``deps.channels[name]`` (its profile), then begins receiving;
- ``stop()`` undoes that; ``finished`` (optional) is set when the channel ends the whole process
  (the terminal chat at end of input).

Adding a channel: write ``bot/channels/<name>.py`` with a ``configure(app, options)`` that returns the
adapter, or None when the settings do not configure it, and list it in ``bot/channels/__init__.py``.
Incoming photos: download the bytes and call ``app.deps.photos.store(data)``; put the returned ref in
``Incoming.photo_ref``. Outgoing ``Reply.photo`` is such a ref: ``app.deps.photos.load(ref)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from handlers.messages import (
    PLAIN,
    Attachment,
    Button,
    ChannelProfile,
    ChatUnreachable,
    Delivery,
    DeliveryFailed,
    DeliveryUncertain,
    Incoming,
    OutputChannel,
    Reply,
)

__all__ = [
    "PLAIN", "Attachment", "Button", "Channel", "ChannelProfile", "ChatUnreachable", "Delivery",
    "DeliveryFailed", "DeliveryUncertain", "Incoming", "OutputChannel", "Reply", "RunOptions",
]


@dataclass(frozen=True)
class RunOptions:
    """How ``docsach run`` was asked to run (the command line over the settings)."""

    host: str = "127.0.0.1"
    port: int = 8080
    telegram_webhook_url: str | None = None   # Telegram by webhook on the shared server (else polling)


class Channel(Protocol):
    name: str
    # A messaging platform (Telegram, Zalo). When one is configured the terminal chat stays closed.
    messaging: bool
    finished: asyncio.Event | None

    def mount(self, web_app: web.Application) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ChannelError(Exception):
    """A channel cannot start as configured (a refused token, an unreachable platform): the one
    sentence ``docsach run`` prints for the operator, and the exit code it ends with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
