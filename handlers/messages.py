"""The platform-neutral message model every channel adapter speaks (the channel contract).

An :class:`Incoming` event goes into the router; a list of :class:`Reply` comes back. Pushed
messages (reminders) go out through an :class:`OutputChannel`, which each adapter implements, and
end in one of three outcomes besides success: :class:`ChatUnreachable`, :class:`DeliveryFailed`,
:class:`DeliveryUncertain`. A :class:`ChannelProfile` says what a platform can do and how it links
to a book, copy, shelf or link code; handlers read it (``ctx.channel``) instead of assuming Telegram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True)
class Incoming:
    """One thing a user did: sent text or a command, pressed a button, or sent a photo."""

    channel: str
    chat_id: str
    user_id: str
    text: str = ""
    button: str | None = None          # the raw payload of a pressed button
    message_ref: str | None = None     # the message the button was on (for edits)
    language_hint: str | None = None   # e.g. Telegram's language_code
    display_name: str | None = None
    chat_type: str = "private"
    photo_ref: str | None = None       # a stored photo (services.photos ref) the person sent
    mentioned: bool = False            # a group message addressed to the bot by @name (mention removed)
    source: str | None = None          # the client's address where a channel knows it (web chat): link-code
                                       # guesses are also limited per source

    @property
    def command(self) -> str | None:
        match = _COMMAND.match(self.text.strip()) if self.button is None else None
        return match.group(1).lower() if match else None

    @property
    def args(self) -> str:
        match = _COMMAND.match(self.text.strip())
        return (match.group(2) or "").strip() if match else ""


@dataclass(frozen=True)
class Button:
    """A button under a reply: a callback ``payload``, a ``url`` (deep links) or an inline switch."""

    label: str
    payload: str | None = None
    url: str | None = None
    switch_inline: str | None = None


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    mime_type: str = "application/pdf"


@dataclass
class Reply:
    """What the bot says back. ``edit`` asks to replace the message the pressed button was on."""

    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    edit: bool = False
    attachment: Attachment | None = None
    toast: str | None = None  # a short popup answer to a button press, where the platform has one
    # A stored photo (a services.photos ref) shown before the text; platforms without photos show
    # only the text.
    photo: str | None = None


@dataclass(frozen=True)
class ChannelProfile:
    """What one platform can do, and how it links to things. Adapters register theirs in
    ``Deps.channels`` when they start; handlers read it from ``ctx.channel``.

    ``link_base`` opens the bot/page with a deep-link payload (``t12`` a title, ``c5`` a copy,
    ``l3`` a shelf or classroom, ``k…`` a link code): ``{payload}`` in it is replaced, e.g.
    ``https://t.me/docsach_bot?start={payload}``. ``home`` opens a private chat with the bot.
    """

    name: str
    max_text: int = 4096          # longest message text (longer replies are split by the adapter)
    max_input: int = 4096         # longest text accepted from a person
    max_payload: int = 64         # button payload bytes
    buttons: bool = True
    edits: bool = False
    toasts: bool = False
    photos: bool = False
    documents: bool = False
    link_base: str | None = None
    home: str | None = None
    # Whether its links work on any phone (and so may be printed in QR codes): not a web chat
    # reached only at the server's local address.
    printable: bool = True

    def link(self, payload: str) -> str | None:
        """A URL that opens ``payload`` on this platform, or None where it has none."""
        return self.link_base.replace("{payload}", payload) if self.link_base else None

    @property
    def chunk(self) -> int:
        """A comfortable length for one part of a long text (leaves room for a header)."""
        return max(200, self.max_text - 600)


# The lowest common denominator, for events from a channel that registered no profile.
PLAIN = ChannelProfile(name="plain", max_text=4096, max_input=4096, max_payload=64)


@dataclass(frozen=True)
class Delivery:
    """What a channel reports after sending: the platform's message id."""

    message_ref: str | None


class ChatUnreachable(Exception):
    """The platform will not deliver to this chat any more (e.g. the user blocked the bot)."""


class DeliveryFailed(Exception):
    """Not delivered, and safe to try again later (e.g. 5xx after retries, 429 out of retries)."""


class DeliveryUncertain(Exception):
    """The send may or may not have arrived (e.g. timed out after the request went out)."""


class OutputChannel(Protocol):
    """Where pushed messages go. Adapters implement it; tests use :class:`CollectingChannel`."""

    name: str

    async def send(self, chat_id: str, reply: Reply) -> Delivery: ...


class CollectingChannel:
    """An output channel that keeps what it was asked to send: for tests and dry runs."""

    def __init__(self, name: str = "test") -> None:
        self.name = name
        self.sent: list[tuple[str, Reply]] = []
        self.unreachable: set[str] = set()

    async def send(self, chat_id: str, reply: Reply) -> Delivery:
        if chat_id in self.unreachable:
            raise ChatUnreachable(chat_id)
        self.sent.append((chat_id, reply))
        return Delivery(message_ref=str(len(self.sent)))
