"""the librarian's web desk: sign-in links, sessions, passwords, set-aside holds, daily loan counts, page indexes

Revision ID: 0011_desk
Revises: 0010_zalo
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_desk"
down_revision: str | Sequence[str] | None = "0010_zalo"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "returned_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "desk_sign_in_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("patron_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["patron_id"], ["patrons.id"], ondelete="CASCADE",
                                name=op.f("fk_desk_sign_in_links_patron_id_patrons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_desk_sign_in_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_desk_sign_in_links_token_hash")),
    )
    op.create_index(op.f("ix_desk_sign_in_links_patron_id"), "desk_sign_in_links", ["patron_id"])
    op.create_table(
        "desk_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("patron_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["patron_id"], ["patrons.id"], ondelete="CASCADE",
                                name=op.f("fk_desk_sessions_patron_id_patrons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_desk_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_desk_sessions_token_hash")),
    )
    op.create_index(op.f("ix_desk_sessions_patron_id"), "desk_sessions", ["patron_id"])
    op.create_table(
        "desk_passwords",
        sa.Column("patron_id", sa.Integer(), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patron_id"], ["patrons.id"], ondelete="CASCADE",
                                name=op.f("fk_desk_passwords_patron_id_patrons")),
        sa.PrimaryKeyConstraint("patron_id", name=op.f("pk_desk_passwords")),
    )
    op.create_table(
        "desk_days",
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("loans", sa.Integer(), nullable=False),
        sa.Column("visits", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"], ondelete="CASCADE",
                                name=op.f("fk_desk_days_library_id_libraries")),
        sa.PrimaryKeyConstraint("library_id", "day", name=op.f("pk_desk_days")),
    )
    op.create_index("ix_loans_checked_out_at", "loans", ["checked_out_at"])
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_loans_library_checked_out", "loans", ["library_id", "checked_out_at"])
    op.create_index("ix_loans_library_returned", "loans", ["library_id", "returned_at"])
    op.create_index("ix_loans_open_library_due", "loans", ["library_id", "due_date"],
                    sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))
    op.create_index("ix_holds_library_status_deadline", "holds", ["library_id", "status", "pickup_deadline"])


def downgrade() -> None:
    op.drop_index("ix_holds_library_status_deadline", table_name="holds")
    op.drop_index("ix_loans_open_library_due", table_name="loans")
    op.drop_index("ix_loans_library_returned", table_name="loans")
    op.drop_index("ix_loans_library_checked_out", table_name="loans")
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("set_aside_at")
    op.drop_index("ix_loans_checked_out_at", table_name="loans")
    op.drop_table("desk_days")
    op.drop_table("desk_passwords")
    op.drop_index(op.f("ix_desk_sessions_patron_id"), table_name="desk_sessions")
    op.drop_table("desk_sessions")
    op.drop_index(op.f("ix_desk_sign_in_links_patron_id"), table_name="desk_sign_in_links")
    op.drop_table("desk_sign_in_links")
