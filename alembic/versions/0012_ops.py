"""operations: durable heartbeats of background jobs (the reminder sweep)

Revision ID: 0012_ops
Revises: 0011_desk
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_ops"
down_revision: str | Sequence[str] | None = "0011_desk"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runtime_heartbeats",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("worker", sa.String(length=120), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_runtime_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("runtime_heartbeats")
