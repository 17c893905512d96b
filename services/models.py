"""The domain's tables. One deployment serves many school libraries (VietBiblio-style).

Bibliographic records (titles) are shared province-wide; copies, patrons, loans and holds
belong to one library, and every staff action is scoped to it.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy import true as sa_true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from services.db import Base


def _enum(cls: type[enum.Enum]) -> Enum:
    """Enums stored as plain strings (VARCHAR + CHECK-free) so new values need no type migration."""
    return Enum(cls, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e],
                validate_strings=True, create_constraint=False)


class Role(enum.StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"
    LIBRARIAN = "librarian"
    ADMIN = "admin"

    @property
    def is_staff(self) -> bool:
        return self in (Role.LIBRARIAN, Role.ADMIN)

    @property
    def can_moderate(self) -> bool:
        """Teachers review their students' reflections; staff review everyone's."""
        return self in (Role.TEACHER, Role.LIBRARIAN, Role.ADMIN)


class CopyStatus(enum.StrEnum):
    AVAILABLE = "available"
    ON_LOAN = "on_loan"
    ON_HOLD_SHELF = "on_hold_shelf"
    IN_REPAIR = "in_repair"
    DAMAGED = "damaged"        # set aside until someone decides: repair, withdraw or back to the shelf
    LOST = "lost"
    WITHDRAWN = "withdrawn"


class HoldStatus(enum.StrEnum):
    WAITING = "waiting"
    READY = "ready"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class ReflectionStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    CHANGES_REQUESTED = "changes_requested"
    APPROVED = "approved"
    REJECTED = "rejected"


class NotificationStatus(enum.StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"   # was uncertain; a later reminder about the same loan or hold went out


def utcnow() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Library(TimestampMixin, Base):
    __tablename__ = "libraries"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Ho_Chi_Minh")
    # Chat id of the school's channel/group where approved reflections may be published.
    publish_chat_id: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Location(TimestampMixin, Base):
    """A shelf, a room or a classroom reading corner; each has its own QR code."""

    __tablename__ = "locations"
    __table_args__ = (UniqueConstraint("library_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="shelf")  # shelf | classroom | room


class Patron(TimestampMixin, Base):
    __tablename__ = "patrons"
    __table_args__ = (UniqueConstraint("library_id", "card_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    card_number: Mapped[str] = mapped_column(String(32))
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.STUDENT)
    class_name: Mapped[str | None] = mapped_column(String(32), index=True)
    grade: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(8))
    # Contact preferences, e.g. {"quiet": true, "opt_out": ["due_soon"]}.
    preferences: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    library: Mapped[Library] = relationship(lazy="raise")

    @property
    def first_name(self) -> str:
        """Vietnamese names put the given name last ("Nguyễn Văn An" → "An")."""
        parts = self.full_name.split()
        return parts[-1] if parts else self.full_name


class ChatIdentity(TimestampMixin, Base):
    """A chat account on one platform; linked to at most one patron."""

    __tablename__ = "chat_identities"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(64))
    chat_id: Mapped[str] = mapped_column(String(64))
    patron_id: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(8))
    linked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the platform says we may no longer write (e.g. Telegram 403: blocked by the user).
    unreachable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Added by 0006: when the person last wrote from this chat; notices go to the chat used last.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Title(TimestampMixin, Base):
    """A bibliographic record, shared by every library in the deployment."""

    __tablename__ = "titles"

    id: Mapped[int] = mapped_column(primary_key=True)
    # A stable key from the source (e.g. "isbn:978…", "lccn:00033516"); re-imports match on it.
    source_key: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(Text)
    authors: Mapped[str] = mapped_column(Text, default="")
    isbn13: Mapped[str | None] = mapped_column(String(13), index=True)
    publisher: Mapped[str | None] = mapped_column(Text)
    year: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(8))
    subjects: Mapped[str] = mapped_column(Text, default="")
    call_number: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), index=True
    )


class Copy(TimestampMixin, Base):
    __tablename__ = "copies"
    __table_args__ = (UniqueConstraint("library_id", "barcode"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    title_id: Mapped[int] = mapped_column(ForeignKey("titles.id", ondelete="CASCADE"), index=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    location_id: Mapped[int | None] = mapped_column(ForeignKey("locations.id", ondelete="SET NULL"), index=True)
    barcode: Mapped[str] = mapped_column(String(32))
    status: Mapped[CopyStatus] = mapped_column(_enum(CopyStatus), default=CopyStatus.AVAILABLE)
    # Bumped on every status change: lets writers use compare-and-set updates.
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    title: Mapped[Title] = relationship(lazy="raise")
    location: Mapped[Location | None] = relationship(lazy="raise")


class Loan(TimestampMixin, Base):
    __tablename__ = "loans"
    __table_args__ = (
        # A copy is on loan to at most one patron: enforced by the database itself.
        Index("uq_loans_open_copy", "copy_id", unique=True,
              sqlite_where=text("returned_at IS NULL"), postgresql_where=text("returned_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    copy_id: Mapped[int] = mapped_column(ForeignKey("copies.id", ondelete="CASCADE"), index=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    checked_out_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_date: Mapped[date] = mapped_column(Date, index=True)
    returned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    renewals: Mapped[int] = mapped_column(Integer, default=0)
    checked_out_by: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))
    returned_by: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))

    copy: Mapped[Copy] = relationship(lazy="raise")


class Hold(TimestampMixin, Base):
    """A reservation on a title (any copy); the queue is ordered by ``queued_at`` then ``id``."""

    __tablename__ = "holds"
    __table_args__ = (
        Index("uq_holds_active_patron_title", "patron_id", "title_id", unique=True,
              sqlite_where=text("status IN ('waiting','ready')"),
              postgresql_where=text("status IN ('waiting','ready')")),
        Index("uq_holds_ready_copy", "copy_id", unique=True,
              sqlite_where=text("status = 'ready'"), postgresql_where=text("status = 'ready'")),
        Index("ix_holds_queue", "library_id", "title_id", "status", "queued_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"))
    title_id: Mapped[int] = mapped_column(ForeignKey("titles.id", ondelete="CASCADE"), index=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    status: Mapped[HoldStatus] = mapped_column(_enum(HoldStatus), default=HoldStatus.WAITING)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    copy_id: Mapped[int | None] = mapped_column(ForeignKey("copies.id", ondelete="SET NULL"))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pickup_deadline: Mapped[date | None] = mapped_column(Date)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Added by 0011 (desk): when the librarian put the READY copy on the pickup shelf (None: it is
    # still on its usual shelf and has to be fetched).
    set_aside_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    title: Mapped[Title] = relationship(lazy="raise")


class Reflection(TimestampMixin, Base):
    __tablename__ = "reflections"
    __table_args__ = (
        # One live reflection per student and book (a rejected one may be written again).
        Index("uq_reflections_live_patron_title", "patron_id", "title_id", unique=True,
              sqlite_where=text("status IN ('draft','submitted','changes_requested','approved')"),
              postgresql_where=text("status IN ('draft','submitted','changes_requested','approved')")),
        Index("ix_reflections_queue", "library_id", "status", "submitted_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    title_id: Mapped[int] = mapped_column(ForeignKey("titles.id", ondelete="CASCADE"), index=True)
    status: Mapped[ReflectionStatus] = mapped_column(_enum(ReflectionStatus), default=ReflectionStatus.DRAFT)
    prompt: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    rating: Mapped[int | None] = mapped_column(Integer)
    photo_ref: Mapped[str | None] = mapped_column(String(200))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    moderated_by: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))
    moderated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    moderation_note: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # Added by 0005 (reflections and campaigns).
    word_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)  # word-list hits, for the moderator
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Notification(TimestampMixin, Base):
    """An outbound notice. ``key`` makes it unique (e.g. "due:loan=12:2026-12-01"): claimed before
    sending and marked sent after, so several senders never deliver it twice."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_due", "status", "send_after"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(160), unique=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[NotificationStatus] = mapped_column(
        _enum(NotificationStatus), default=NotificationStatus.PENDING
    )
    send_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Written (and committed) just before the send call: a claim that crashed with
    # attempted_at >= claimed_at may have been delivered, so it is never sent again blindly.
    attempted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Where it went: several notices of one digest share the same message.
    channel: Mapped[str | None] = mapped_column(String(16))
    chat_id: Mapped[str | None] = mapped_column(String(64))
    message_ref: Mapped[str | None] = mapped_column(String(64))


class OutboxWorker(Base):
    """A process delivering notices, and when it last said it was alive. Its claims
    (``Notification.claimed_by`` = ``worker``) are taken back soon after the heartbeat stops,
    instead of waiting out the whole lease."""

    __tablename__ = "outbox_workers"

    worker: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Who changed what, when, and through which channel. Append-only."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    library_id: Mapped[int | None] = mapped_column(ForeignKey("libraries.id", ondelete="SET NULL"), index=True)
    actor_patron_id: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))
    channel: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(48))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ConversationState(Base):
    """Where a multi-step conversation stands (e.g. a librarian mid check-out, a draft reflection).
    Kept in the database so it survives restarts and is shared by several worker processes."""

    __tablename__ = "conversation_states"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


# -- reflections and reading campaigns (issue 7) ------------------------------------------------

class ReflectionPrompt(TimestampMixin, Base):
    """A writing prompt a library offers. Built-in defaults carry a message key (translated for
    each reader); prompts a librarian writes carry their own text. A library with no rows uses
    the built-in defaults."""

    __tablename__ = "reflection_prompts"

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    message_key: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Campaign(TimestampMixin, Base):
    """A reading campaign (e.g. the school round of the Reading Culture Ambassador contest)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    theme: Mapped[str | None] = mapped_column(Text)
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    title_ids: Mapped[list[int]] = mapped_column(JSON, default=list)   # empty: any book
    subjects: Mapped[list[str]] = mapped_column(JSON, default=list)    # empty: any subject
    goal_books: Mapped[int] = mapped_column(Integer, default=0)
    goal_reflections: Mapped[int] = mapped_column(Integer, default=0)
    min_words: Mapped[int | None] = mapped_column(Integer)
    max_words: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))


class CampaignMember(Base):
    __tablename__ = "campaign_members"
    __table_args__ = (UniqueConstraint("campaign_id", "patron_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CampaignShortlist(Base):
    """Reflections a librarian picked for the next (district/provincial) ambassador round."""

    __tablename__ = "campaign_shortlist"
    __table_args__ = (UniqueConstraint("campaign_id", "reflection_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    reflection_id: Mapped[int] = mapped_column(ForeignKey("reflections.id", ondelete="CASCADE"))
    added_by: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

# -- accounts and circulation (issue 5) -------------------------------------------------------

class ClosedDay(Base):
    """A range of days the school library is shut (holiday, Tết, summer): due dates and pickup
    deadlines skip them. Weekends are a per-library rule, not rows here."""

    __tablename__ = "closed_days"
    __table_args__ = (Index("ix_closed_days_library_end", "library_id", "end_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"))
    start_date: Mapped[date] = mapped_column(Date)
    end_date: Mapped[date] = mapped_column(Date)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LinkCode(TimestampMixin, Base):
    """A single-use code that links a chat to a patron. Only its SHA-256 is stored."""

    __tablename__ = "link_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by_identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("chat_identities.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="SET NULL"))


class RateCounter(Base):
    """Attempts per key in fixed time windows (e.g. link-code guesses per chat): kept in the
    database so every worker process counts against the same limit."""

    __tablename__ = "rate_counters"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer, default=0)


# -- catalog search (issue 3) ----------------------------------------------------------------------

# Search indexes in every worker poll ``copies.updated_at`` for availability changes.
Index("ix_copies_updated_at", Copy.updated_at)


class SearchQuery(Base):
    """A search text behind paging buttons: payloads carry this id, never the text (64-byte limit).
    Shared by all workers; one row per distinct text."""

    __tablename__ = "search_queries"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(40), unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# -- the librarian's desk (issue 12) ------------------------------------------------------------

class DeskSignInLink(Base):
    """A one-time sign-in link for the web desk, sent to a staff member's own chat (or printed by
    ``docsach staff-login``). Only the SHA-256 of its token is stored; it works once, for minutes."""

    __tablename__ = "desk_sign_in_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    channel: Mapped[str] = mapped_column(String(16))


class DeskSession(Base):
    """A signed-in desk browser. The cookie carries a random token; only its SHA-256 is stored, so
    the table lists sessions (and revokes them) without being able to impersonate anyone."""

    __tablename__ = "desk_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(16))            # link | password
    user_agent: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))   # absolute end
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeskPassword(Base):
    """An optional desk password (argon2id hash) for staff who prefer it to a chat link."""

    __tablename__ = "desk_passwords"

    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeskDay(Base):
    """Loans made and readers visiting per library and day, for the province's statistics: a
    finished day never changes (loans and visits are recorded "now"), so it is counted once and
    read back for every later page."""

    __tablename__ = "desk_days"

    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    loans: Mapped[int] = mapped_column(Integer)
    visits: Mapped[int] = mapped_column(Integer)


# What the desk pages filter on (see bench/desk.py): today's checkouts and returns, open loans by
# due date (overdue), and the pickup shelf.
Index("ix_loans_library_checked_out", Loan.library_id, Loan.checked_out_at)
Index("ix_loans_checked_out_at", Loan.checked_out_at)   # the province's loans of a period
Index("ix_loans_library_returned", Loan.library_id, Loan.returned_at)
Index("ix_loans_open_library_due", Loan.library_id, Loan.due_date,
      sqlite_where=text("returned_at IS NULL"), postgresql_where=text("returned_at IS NULL"))
Index("ix_holds_library_status_deadline", Hold.library_id, Hold.status, Hold.pickup_deadline)


# -- self-check kiosks and visits (issue 13) ------------------------------------------------------

class Kiosk(TimestampMixin, Base):
    """A self-check machine's SIP2 login. It acts for its own library only; the password is kept
    as a salted scrypt hash (see services.kiosks), never in clear."""

    __tablename__ = "kiosks"

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"), index=True)
    # The SIP2 login user id (CN); unique in the deployment because a login names no library.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Visit(Base):
    """A reader came to the library (door QR, kiosk, desk): at most one per reader per day, the
    day counted in the school's time zone. "Visits per day" is the seed's readers-per-day."""

    __tablename__ = "visits"
    __table_args__ = (
        UniqueConstraint("patron_id", "day"),
        Index("ix_visits_library_day", "library_id", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"))
    patron_id: Mapped[int] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(8))  # door | sip2 | desk

# -- channel seam (issue 10) --------------------------------------------------------------------------

class StoredPhoto(Base):
    """A photo a person sent (a handwritten reflection, a drawing), kept by docsach itself so any
    channel or web page can show it. Named by the SHA-256 of its bytes; the bytes live here or, when
    ``DOCSACH_FILES_DIR`` is set, in that directory (``data`` is then NULL)."""

    __tablename__ = "stored_photos"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime_type: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    library_id: Mapped[int | None] = mapped_column(ForeignKey("libraries.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebSession(Base):
    """A browser's session in the web chat. The cookie holds ``id`` and a random token (signed);
    only the token's SHA-256 is stored. ``chat_key`` names the conversation (the chat identity's
    external id); linking rotates the session (new token, same conversation), /unlink ends it."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_key: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    patron_id: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"))
    rotate_ticket_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebMessage(Base):
    """One message in a web chat conversation, in order (``id`` is the resume cursor): what the
    person sent (``outgoing`` False) and what docsach said, pushed notices included (unread until
    ``read_at``). ``patron_id`` is whom it concerns: after an unlink, those messages are hidden."""

    __tablename__ = "web_messages"
    __table_args__ = (
        UniqueConstraint("chat_key", "client_ref"),
        Index("ix_web_messages_chat", "chat_key", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_key: Mapped[str] = mapped_column(String(64))
    patron_id: Mapped[int | None] = mapped_column(ForeignKey("patrons.id", ondelete="CASCADE"))
    outgoing: Mapped[bool] = mapped_column(Boolean, default=True)
    notice: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[dict] = mapped_column(JSON, default=dict)
    client_ref: Mapped[str | None] = mapped_column(String(40))
    attachment: Mapped[bytes | None] = mapped_column(LargeBinary)
    attachment_name: Mapped[str | None] = mapped_column(String(200))
    attachment_type: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- operations (issue 14) -------------------------------------------------------------------------

class Heartbeat(Base):
    """The last time a background job ran (e.g. the reminder sweep), by any worker: durable, so
    ``docsach doctor`` and the alarms see it from another process or after a restart."""

    __tablename__ = "runtime_heartbeats"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    worker: Mapped[str] = mapped_column(String(120))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# -- chats without buttons, repeated deliveries, files as links (issue 11: Zalo) ------------------

class ChatChoice(Base):
    """The numbered choices a chat was last shown, on platforms without buttons (Zalo): the
    person answers "2" or the label. In the database, so a restart or another worker agrees."""

    __tablename__ = "chat_choices"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # [{"n": 1, "label": "...", "payload": "1:renew:..~mac"}, ...]
    choices: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The question that was open when the list was shown ("checkout:copy"), or None: a number
    # typed once another question is open answers that question, not this older list.
    context: Mapped[str | None] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SeenMessage(Base):
    """A platform message already handled: platforms without an offset (Zalo) may deliver the
    same message again, and the first worker to insert its id is the one that answers it."""

    __tablename__ = "seen_messages"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Download(Base):
    """A document (certificate, slip) for a platform that cannot carry files: served from a
    signed link that expires. Rows past ``expires_at`` are deleted."""

    __tablename__ = "downloads"

    id: Mapped[int] = mapped_column(primary_key=True)
    filename: Mapped[str] = mapped_column(String(200))
    mime_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Lease(Base):
    """Work only one process may do at a time (e.g. long-polling one Zalo bot: the platform hands
    each update to whichever poll asks first). Held until ``expires_at`` unless renewed."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    holder: Mapped[str] = mapped_column(String(120))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
