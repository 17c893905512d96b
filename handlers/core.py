"""The router: where every incoming event is dispatched, and the context handlers receive.

Feature modules (``handlers/start.py``, ``handlers/search.py``, …) each expose
``register(router)``; the composition root in ``bot/app.py`` calls them in one place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from handlers.i18n import Catalogs, Translator, audience_for
from handlers.messages import PLAIN, Button, ChannelProfile, Incoming, OutputChannel, Reply
from services import conversations, patrons
from services.common import Clock, DomainError
from services.db import Database
from services.models import Role
from services.patrons import Actor

log = logging.getLogger(__name__)

BUTTON_VERSION = "1"

# Who may use a command (``Router.command(roles=…)``): role names, and "guest" for an unlinked chat.
LINKED = frozenset(role.value for role in Role)
STAFF = frozenset(role.value for role in Role if role.is_staff)
MODERATORS = frozenset(role.value for role in Role if role.can_moderate)


@dataclass
class Deps:
    """Everything handlers need from the outside world, built once by the composition root."""

    db: Database
    catalogs: Catalogs
    clock: Clock = field(default_factory=Clock)
    default_language: str = "vi"
    timezone: str = "Asia/Ho_Chi_Minh"
    # Where printed QR codes (labels, link-code slips) point: ``{public_url}/b/<payload>`` when the
    # deployment has a public address, else the first messaging channel's own deep link.
    public_url: str | None = None
    button_secret: bytes = b"docsach-dev-secret"
    link_code_key: bytes | None = None        # keys link-code digests (None: no stable secret set)
    extras: dict[str, Any] = field(default_factory=dict)  # feature services (search index, notifier…)
    # Channels that can push messages, by channel name ("telegram", "terminal"); adapters register
    # themselves when they start, so reminders and publications reach people where they are.
    outbound: dict[str, OutputChannel] = field(default_factory=dict)
    # What each running channel can do and how it links (see ``ChannelProfile``), by channel name.
    channels: dict[str, ChannelProfile] = field(default_factory=dict)
    photos: Any = None   # services.photos.PhotoStore: adapters store incoming photo bytes there

    def profile(self, channel: str) -> ChannelProfile:
        return self.channels.get(channel) or PLAIN

    def printed_link(self, payload: str) -> str | None:
        """What a printed QR code for ``payload`` encodes, or None when nothing can open it yet."""
        if self.public_url:
            return f"{self.public_url.rstrip('/')}/b/{payload}"
        for profile in self.channels.values():
            if profile.link_base and profile.printable:
                return profile.link(payload)
        return None


@dataclass
class Context:
    """What one handler call sees: who is asking, in which language, and the dependencies."""

    deps: Deps
    actor: Actor
    event: Incoming
    router: Router

    @property
    def db(self) -> Database:
        return self.deps.db

    @property
    def clock(self) -> Clock:
        return self.deps.clock

    @property
    def channel(self) -> ChannelProfile:
        """What the platform this event came from can do, and how it links to a book or shelf."""
        return self.deps.profile(self.event.channel)

    @property
    def t(self) -> Translator:
        return self.deps.catalogs.translator(self.actor.language, self.deps.timezone,
                                             audience_for(self.actor.role))

    def button(self, label: str, action: str, *args: object) -> Button:
        """A callback button bound to this chat (see :meth:`Router.encode`)."""
        return Button(label=label, payload=self.router.encode(self.event.chat_id, action, *args,
                                                              limit=self.channel.max_payload))

    async def set_flow(self, flow: str, **data: Any) -> None:
        await conversations.set_state(self.db, self.event.channel, self.event.chat_id, flow, data)

    async def clear_flow(self, flow: str | None = None) -> None:
        await conversations.clear_state(self.db, self.event.channel, self.event.chat_id, flow)


Handler = Callable[[Incoming, Context], Awaitable[list[Reply] | Reply | None]]
ButtonHandler = Callable[[Incoming, Context, list[str]], Awaitable[list[Reply] | Reply | None]]
# (ctx, title_id) -> extra button rows for a book card
CardButtons = Callable[[Context, int], Awaitable[list[list[Button]]]]
# (ctx of the recipient, payload) -> the message
NoticeRenderer = Callable[[Context, dict[str, Any]], Awaitable[Reply]]
# (ctx, query text, offset) -> (inline results, next offset); the adapter turns results into its own type
InlineHandler = Callable[[Context, str, str], Awaitable[tuple[list[Any], str]]]


# Deep-link payloads (≤ 64 chars of [A-Za-z0-9_-]): opaque ids, no personal data. QR labels, the
# landing pages and the /start handler all use these; each channel's profile turns one into a link.
def deep_link_payload(kind: str, value: int | str) -> str:
    """kind: "t" title, "c" copy, "l" location (shelf/classroom), "k" link code."""
    return f"{kind}{value}"


@dataclass
class Command:
    name: str
    handler: Handler
    help_key: str | None = None     # shown in /help when the role may use it
    roles: frozenset[str] | None = None  # None: everyone; else patron roles (and "guest")
    menu: bool = True               # offered in the platform's command menu
    in_groups: bool = False         # usable in group chats (only what shows no one's personal data)


def clean_text(text: str) -> str:
    """Drop control and format characters (zero-width, bidi overrides) but keep line breaks."""
    text = unicodedata.normalize("NFC", text)
    return "".join(
        ch for ch in text
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
    ).strip()


class Router:
    """Dispatches an :class:`Incoming` to the feature that owns it, and never lets one crash."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.commands: dict[str, Command] = {}
        self.aliases: dict[str, str] = {}
        self.buttons: dict[str, ButtonHandler] = {}
        self.group_buttons: set[str] = set()
        self.flows: dict[str, Handler] = {}
        self.deep_links: dict[str, Handler] = {}
        self.group_deep_links: set[str] = set()
        self.text_handler: Handler | None = None
        self.photo_handler: Handler | None = None
        self.text_prefilters: list[Handler] = []
        self.card_buttons: list[CardButtons] = []
        self.notices: dict[str, NoticeRenderer] = {}
        self.inline_handler: InlineHandler | None = None

    # -- registration ---------------------------------------------------------------
    def command(self, name: str, handler: Handler, *, help_key: str | None = None,
                roles: set[str] | None = None, aliases: tuple[str, ...] = (), menu: bool = True,
                in_groups: bool = False) -> None:
        """Register ``/name``. Commands work in private chats only unless ``in_groups``: students
        are minors, and a group must never see one member's loans, holds or drafts."""
        self.commands[name] = Command(name, handler, help_key, frozenset(roles) if roles else None, menu,
                                      in_groups)
        for alias in aliases:
            self.aliases[alias] = name

    def button(self, action: str, handler: ButtonHandler, *, in_groups: bool = False) -> None:
        if ":" in action or "~" in action:
            raise ValueError("button actions may not contain ':' or '~'")
        self.buttons[action] = handler
        if in_groups:
            self.group_buttons.add(action)

    def flow(self, name: str, handler: Handler) -> None:
        """Plain text goes to ``handler`` while the chat's conversation state is in this flow."""
        self.flows[name] = handler

    def deep_link(self, prefix: str, handler: Handler, *, in_groups: bool = False) -> None:
        """``/start <prefix><rest>`` (from a QR code or a channel's deep link) goes to ``handler``.
        Like commands, private chats only unless ``in_groups`` (a link code must never run in a group)."""
        self.deep_links[prefix] = handler
        if in_groups:
            self.group_deep_links.add(prefix)

    def fallback_text(self, handler: Handler) -> None:
        """Plain text that no flow or prefilter took (the catalog search)."""
        self.text_handler = handler

    def prefilter_text(self, handler: Handler) -> None:
        """Sees plain text before the fallback; returns None to pass it on (e.g. a link code)."""
        self.text_prefilters.append(handler)

    def book_card_buttons(self, provider: CardButtons) -> None:
        """Features add buttons to a book card (Reserve, Reflections…) without the card knowing them."""
        self.card_buttons.append(provider)

    def notice(self, kind: str, renderer: NoticeRenderer) -> None:
        """How a pushed notification of ``kind`` reads (reminders, moderation outcomes…)."""
        self.notices[kind] = renderer

    def inline(self, handler: InlineHandler) -> None:
        """Inline queries (``@bot QUERY`` in any chat), where the platform has them."""
        self.inline_handler = handler

    # -- button payloads --------------------------------------------------------------
    def _mac(self, chat_id: str, body: str) -> str:
        digest = hmac.new(self.deps.button_secret, f"{chat_id}|{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:6]).decode()

    def encode(self, chat_id: str, action: str, *args: object, limit: int = PLAIN.max_payload) -> str:
        """``1:action:arg…~mac``: versioned, bound to the chat, at most ``limit`` bytes."""
        body = ":".join([BUTTON_VERSION, action, *map(str, args)])
        payload = f"{body}~{self._mac(chat_id, body)}"
        if len(payload.encode()) > limit:
            raise ValueError(f"button payload too long: {payload!r}")
        return payload

    def decode(self, chat_id: str, payload: str) -> tuple[str, list[str]] | None:
        """The action and its arguments, or None for a forged, stale or foreign payload."""
        body, _, mac = payload.rpartition("~")
        if not body or not hmac.compare_digest(mac, self._mac(chat_id, body)):
            return None
        version, _, rest = body.partition(":")
        if version != BUTTON_VERSION:
            return None
        action, *args = rest.split(":")
        return (action, args) if action in self.buttons else None

    # -- dispatch ---------------------------------------------------------------------
    def allowed(self, command: Command, actor: Actor) -> bool:
        if command.roles is None:
            return True
        role = actor.role.value if actor.role else "guest"
        return role in command.roles

    async def context_for(self, event: Incoming) -> Context:
        actor = await patrons.resolve_actor(
            self.deps.db, event.channel, event.user_id, event.chat_id,
            display_name=event.display_name, language_hint=event.language_hint,
            default_language=self.deps.default_language, private=event.chat_type == "private",
        )
        return Context(self.deps, actor, event, self)

    async def dispatch(self, event: Incoming) -> list[Reply]:
        """Handle one event. Refusals become friendly replies; nothing escapes as a crash."""
        fallback_lang = patrons.pick_language(event.language_hint, default=self.deps.default_language)
        t = self.deps.catalogs.translator(fallback_lang, self.deps.timezone)
        try:
            ctx = await self.context_for(event)
            t = ctx.t
            result = await self._route(event, ctx)
        except DomainError as refusal:
            result = Reply(t(refusal.key, **refusal.params))
        except (OperationalError, DBAPIError, PoolTimeout, ConnectionError, OSError) as exc:
            log.warning("database unavailable while handling %s: %s", event.channel, exc)
            result = Reply(t("error.unavailable"))
        except Exception:
            log.exception("handler failed for %s chat %s", event.channel, event.chat_id)
            result = Reply(t("error.internal"))
        if result is None:
            return []
        return result if isinstance(result, list) else [result]

    async def _route(self, event: Incoming, ctx: Context) -> list[Reply] | Reply | None:
        t = ctx.t
        private = event.chat_type == "private"
        if event.button is not None:
            decoded = self.decode(event.chat_id, event.button)
            if decoded is None:
                return Reply(t("error.button_expired"), toast=t("error.button_expired"))
            action, args = decoded
            if not private and action not in self.group_buttons:
                return self._private_only(ctx, toast=True)
            return await self.buttons[action](event, ctx, args)

        text = clean_text(event.text)
        if len(event.text) > ctx.channel.max_input:
            return Reply(t("error.too_long", limit=ctx.channel.max_input))
        if event.photo_ref and not text and self.photo_handler is not None:
            return await self.photo_handler(event, ctx)
        if not text:
            return Reply(t("error.empty"))
        event = _with_text(event, text)
        ctx.event = event

        name = event.command
        if name is not None:
            name = self.aliases.get(name, name)
            command = self.commands.get(name)
            if command is None:
                return Reply(t("error.unknown_command", command="/" + name))
            if not self.allowed(command, ctx.actor):
                return Reply(t("error.not_allowed" if ctx.actor.is_linked else "link.required"))
            if not private and not command.in_groups:
                return self._private_only(ctx)
            return await command.handler(event, ctx)
        if text.startswith("/"):
            return Reply(t("error.unknown_command", command=text.split()[0][:40]))
        if not private:
            # Conversations and link codes belong to one person's private chat, never a group's.
            return await self.text_handler(event, ctx) if self.text_handler is not None else None

        state = await conversations.get_state(self.deps.db, event.channel, event.chat_id)
        if state is not None and state.flow in self.flows:
            return await self.flows[state.flow](event, ctx)
        for prefilter in self.text_prefilters:
            result = await prefilter(event, ctx)
            if result is not None:
                return result
        if self.text_handler is not None:
            return await self.text_handler(event, ctx)
        return Reply(t("error.empty"))

    def _private_only(self, ctx: Context, toast: bool = False) -> Reply:
        text = ctx.t("error.private_only")
        buttons = []
        if ctx.channel.home:
            buttons = [[Button(ctx.t("error.open_private"), url=ctx.channel.home)]]
        return Reply(text, buttons=buttons, toast=text if toast else None)

    def start_payload_handler(self, payload: str, *, private: bool = True) -> Handler | None:
        """The deep-link handler for ``payload``; in a group, one that says "private chat only"
        for links that are not meant for groups (nothing runs, so a link code is not used up)."""
        for prefix, handler in self.deep_links.items():
            if payload.startswith(prefix):
                if not private and prefix not in self.group_deep_links:
                    return self._private_only_handler
                return handler
        return None

    async def _private_only_handler(self, event: Incoming, ctx: Context) -> Reply:
        return self._private_only(ctx)

    def help_lines(self, ctx: Context) -> list[str]:
        return [ctx.t(c.help_key) for c in self.commands.values()
                if c.help_key and self.allowed(c, ctx.actor)]


def _with_text(event: Incoming, text: str) -> Incoming:
    from dataclasses import replace

    return replace(event, text=text)
