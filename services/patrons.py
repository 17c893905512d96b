"""Who is talking: chat identities, the patrons they are linked to, roles and languages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from services.common import Clock, DomainError, PermissionDenied
from services.db import Database
from services.models import ChatIdentity, Library, Patron, Role

SUPPORTED_LANGUAGES = ("vi", "en")
# Library setting: how students are named in public (reflections, leaderboards):
# first_name_class (default) | full_name_class | class_only.
SETTING_AUTHOR = "reflection_author"
# How stale ``last_seen_at`` may get before a message updates it (one write a minute per chat at most).
SEEN_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Actor:
    """The person behind an incoming message, as the domain sees them.

    ``patron_id`` is None for a chat that has not been linked to a library card yet: such a
    guest may search the catalog but sees no loans, holds or anyone's data.
    """

    identity_id: int | None
    channel: str
    chat_id: str
    language: str
    patron_id: int | None = None
    library_id: int | None = None
    library_code: str | None = None
    role: Role | None = None
    full_name: str | None = None
    class_name: str | None = None

    @property
    def is_linked(self) -> bool:
        return self.patron_id is not None

    @property
    def is_staff(self) -> bool:
        return self.role is not None and self.role.is_staff

    @property
    def can_moderate(self) -> bool:
        return self.role is not None and self.role.can_moderate


def pick_language(*candidates: str | None, default: str = "vi") -> str:
    """The first supported language among the candidates ("en-US" counts as "en")."""
    for candidate in candidates:
        if candidate:
            short = candidate.strip().lower().replace("_", "-").split("-")[0]
            if short in SUPPORTED_LANGUAGES:
                return short
    return default


async def resolve_actor(
    db: Database,
    channel: str,
    external_id: str,
    chat_id: str,
    *,
    display_name: str | None = None,
    language_hint: str | None = None,
    default_language: str = "vi",
    private: bool = True,
) -> Actor:
    """Find or create the chat identity and return who it is. Safe when two messages race.

    ``private`` is False for group chats and inline queries: then ``chat_id`` is not where the
    person's own messages (reminders) should go, so the stored chat is left alone (a new
    identity gets ``external_id``, which is the private chat on Telegram).
    """
    async with db.transaction() as s:
        identity = await _identity(s, channel, external_id)
        if identity is None:
            identity = ChatIdentity(
                channel=channel, external_id=external_id, chat_id=chat_id if private else external_id,
                display_name=display_name,
                language=None,
            )
            try:
                async with s.begin_nested():
                    s.add(identity)
                    await s.flush()
            except IntegrityError:
                identity = await _identity(s, channel, external_id)
                assert identity is not None
        if private and (identity.unreachable_at is not None or identity.chat_id != chat_id):
            identity.unreachable_at = None  # they wrote to us, so we may write back
            identity.chat_id = chat_id
        if private:
            # Notices go to the chat the person used last (services.outbox.recipients).
            now = datetime.now(UTC)
            seen = identity.last_seen_at
            if seen is None or (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) < now - SEEN_EVERY:
                identity.last_seen_at = now
        patron = library = None
        if identity.patron_id is not None:
            row = (await s.execute(
                select(Patron, Library).join(Library, Library.id == Patron.library_id)
                .where(Patron.id == identity.patron_id, Patron.active.is_(True))
            )).first()
            if row is not None:
                patron, library = row
        language = pick_language(
            patron.language if patron else None, identity.language, language_hint, default=default_language
        )
        return Actor(
            identity_id=identity.id,
            channel=channel,
            chat_id=chat_id,
            language=language,
            patron_id=patron.id if patron else None,
            library_id=patron.library_id if patron else None,
            library_code=library.code if library else None,
            role=patron.role if patron else None,
            full_name=patron.full_name if patron else None,
            class_name=patron.class_name if patron else None,
        )


async def _identity(s, channel: str, external_id: str) -> ChatIdentity | None:
    return (await s.execute(
        select(ChatIdentity).where(ChatIdentity.channel == channel, ChatIdentity.external_id == external_id)
    )).scalar_one_or_none()


async def set_language(db: Database, actor: Actor, language: str) -> str:
    """Remember the language on the chat identity and on the linked patron."""
    if language not in SUPPORTED_LANGUAGES:
        raise DomainError("language.unsupported", language=language)
    async with db.transaction() as s:
        if actor.identity_id is not None:
            await s.execute(update(ChatIdentity).where(ChatIdentity.id == actor.identity_id)
                            .values(language=language))
        if actor.patron_id is not None:
            await s.execute(update(Patron).where(Patron.id == actor.patron_id).values(language=language))
    return language


async def mark_unreachable(db: Database, channel: str, chat_id: str, clock: Clock | None = None) -> int:
    """The platform refused delivery (e.g. the user blocked the bot): stop writing to that chat."""
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        result = await s.execute(
            update(ChatIdentity)
            .where(ChatIdentity.channel == channel, ChatIdentity.chat_id == chat_id,
                   ChatIdentity.unreachable_at.is_(None))
            .values(unreachable_at=now)
        )
        return result.rowcount or 0


async def is_unreachable(db: Database, channel: str, chat_id: str) -> bool:
    """True when delivery to this chat was refused and the person has not written since."""
    async with db.session() as s:  # a plain read: it sits on the sending path of every reminder
        found = (await s.execute(
            select(ChatIdentity.id).where(ChatIdentity.channel == channel, ChatIdentity.chat_id == chat_id,
                                          ChatIdentity.unreachable_at.is_not(None)).limit(1)
        )).scalar_one_or_none()
        return found is not None


async def link_trusted(db: Database, actor: Actor, library_code: str, card_number: str,
                       clock: Clock | None = None) -> Actor:
    """Link this chat to a card without a code. Only for operator tools on the server itself
    (the terminal chat's ``--as CARD``); chats link with single-use codes instead."""
    now = (clock or Clock()).now()
    async with db.transaction() as s:
        patron = (await s.execute(
            select(Patron).join(Library, Library.id == Patron.library_id)
            .where(Library.code == library_code, Patron.card_number == card_number)
        )).scalar_one_or_none()
        if patron is None:
            raise DomainError("link.card_not_found", card=card_number)
        await s.execute(update(ChatIdentity).where(ChatIdentity.id == actor.identity_id)
                        .values(patron_id=patron.id, linked_at=now))
    return await resolve_actor(db, actor.channel, _external_of(actor), actor.chat_id,
                               language_hint=actor.language)


def _external_of(actor: Actor) -> str:
    # Terminal and test channels use the chat id as the external user id.
    return actor.chat_id


def require_staff(actor: Actor, library_id: int | None = None) -> None:
    """Staff-only actions check here, in the service layer, not only in the handler."""
    if not actor.is_staff:
        raise PermissionDenied()
    if library_id is not None and actor.library_id != library_id:
        raise PermissionDenied()


def require_linked(actor: Actor) -> None:
    if not actor.is_linked:
        raise DomainError("link.required")


async def chat_language(db: Database, channel: str, chat_id: str, default: str = "vi") -> str:
    """The language to write to a chat in when no message of theirs is at hand (pushed notices
    on platforms where the adapter adds its own words, e.g. Zalo's "reply with a number")."""
    async with db.session() as s:
        row = (await s.execute(
            select(Patron.language, ChatIdentity.language)
            .select_from(ChatIdentity).outerjoin(Patron, Patron.id == ChatIdentity.patron_id)
            .where(ChatIdentity.channel == channel, ChatIdentity.chat_id == chat_id).limit(1)
        )).first()
    return pick_language(*(row or ()), default=default)


def public_author(patron: Patron, library: Library) -> str | None:
    """How a student is named in public: per the library setting, never when they asked to hide."""
    if (patron.preferences or {}).get("hide_name"):
        return None
    mode = (library.settings or {}).get(SETTING_AUTHOR, "first_name_class")
    if mode == "full_name_class":
        return patron.full_name
    if mode == "class_only":
        return None
    return patron.first_name
