"""accounts and circulation: closed days, link codes, rate counters

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "closed_days",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"),
                  nullable=False),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"], name=op.f("fk_closed_days_library_id_libraries"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_closed_days")),
    )
    with op.batch_alter_table("closed_days", schema=None) as batch_op:
        batch_op.create_index("ix_closed_days_library_end", ["library_id", "end_date"], unique=False)

    op.create_table(
        "link_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("patron_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_identity_id", sa.Integer(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"),
                  nullable=False),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"], name=op.f("fk_link_codes_library_id_libraries"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["patron_id"], ["patrons.id"], name=op.f("fk_link_codes_patron_id_patrons"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["used_by_identity_id"], ["chat_identities.id"],
                                name=op.f("fk_link_codes_used_by_identity_id_chat_identities"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["created_by"], ["patrons.id"], name=op.f("fk_link_codes_created_by_patrons"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_link_codes_code_hash")),
    )
    with op.batch_alter_table("link_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_link_codes_library_id"), ["library_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_link_codes_patron_id"), ["patron_id"], unique=False)

    op.create_table(
        "rate_counters",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_rate_counters")),
    )


def downgrade() -> None:
    op.drop_table("rate_counters")
    with op.batch_alter_table("link_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_codes_patron_id"))
        batch_op.drop_index(batch_op.f("ix_link_codes_library_id"))
    op.drop_table("link_codes")
    with op.batch_alter_table("closed_days", schema=None) as batch_op:
        batch_op.drop_index("ix_closed_days_library_end")
    op.drop_table("closed_days")
