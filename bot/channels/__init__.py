"""Channel adapters: one module per platform around the contract in ``base.py``.

``docsach run`` starts every configured channel at once (:func:`configured`): each messaging
platform whose settings are present, and the web chat (``web.py``, at ``/chat``); the terminal chat only when no messaging platform is configured. Adding a platform: write
``<name>.py`` with ``configure(app, options) -> adapter | None`` and add a line to
:data:`MESSAGING` below (imports stay lazy, so an unconfigured platform costs nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.channels.base import Channel, RunOptions


def _telegram(app: Any, options: RunOptions) -> Channel | None:
    if not app.settings.telegram_token:
        return None
    from bot.channels import telegram

    return telegram.configure(app, options)


def _zalo(app: Any, options: RunOptions) -> Channel | None:
    if not app.settings.zalo_token:
        return None
    from bot.channels import zalo

    return zalo.configure(app, options)


def _web(app: Any, options: RunOptions) -> Channel | None:
    from bot.channels import web

    return web.configure(app, options)


# Messaging platforms, each returning its adapter or None when its settings are absent.
MESSAGING: list[Callable[[Any, RunOptions], Channel | None]] = [_telegram, _zalo]
# Channels served on every run (the web chat), besides the messaging platforms.
ALWAYS: list[Callable[[Any, RunOptions], Channel | None]] = [_web]


def configured(app: Any, options: RunOptions, *, terminal_user: str = "local") -> list[Channel]:
    """Every channel to run: the configured platforms, the always-on ones, and the terminal chat
    when no messaging platform is configured and there is an input to read (a terminal or pipe)."""
    channels = [c for factory in MESSAGING + ALWAYS if (c := factory(app, options)) is not None]
    if not any(getattr(c, "messaging", False) for c in channels):
        from bot.channels import terminal

        adapter = terminal.configure(app, options, user=terminal_user)
        if adapter is not None:
            channels.append(adapter)
    return channels
