"""kiosks and visits: SIP2 self-check logins, and one visit per reader per day

Revision ID: 0008_kiosks_visits
Revises: 0007_hardening
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_kiosks_visits"
down_revision: str | Sequence[str] | None = "0007_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kiosks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"], name=op.f("fk_kiosks_library_id_libraries"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kiosks")),
        sa.UniqueConstraint("name", name=op.f("uq_kiosks_name")),
    )
    op.create_index(op.f("ix_kiosks_library_id"), "kiosks", ["library_id"])

    op.create_table(
        "visits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("patron_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"], name=op.f("fk_visits_library_id_libraries"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["patron_id"], ["patrons.id"], name=op.f("fk_visits_patron_id_patrons"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_visits")),
        sa.UniqueConstraint("patron_id", "day", name=op.f("uq_visits_patron_id_day")),
    )
    op.create_index("ix_visits_library_day", "visits", ["library_id", "day"])


def downgrade() -> None:
    op.drop_index("ix_visits_library_day", table_name="visits")
    op.drop_table("visits")
    op.drop_index(op.f("ix_kiosks_library_id"), table_name="kiosks")
    op.drop_table("kiosks")
