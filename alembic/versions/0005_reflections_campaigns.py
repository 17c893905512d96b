"""reflections and reading campaigns

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status IN ('draft','submitted','changes_requested','approved')"


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("theme", sa.Text(), nullable=True),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("title_ids", sa.JSON(), nullable=False),
        sa.Column("subjects", sa.JSON(), nullable=False),
        sa.Column("goal_books", sa.Integer(), nullable=False),
        sa.Column("goal_reflections", sa.Integer(), nullable=False),
        sa.Column("min_words", sa.Integer(), nullable=True),
        sa.Column("max_words", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"], name=op.f("fk_campaigns_library_id_libraries"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["patrons.id"], name=op.f("fk_campaigns_created_by_patrons"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index(op.f("ix_campaigns_library_id"), "campaigns", ["library_id"])

    op.create_table(
        "campaign_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("patron_id", sa.Integer(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name=op.f("fk_campaign_members_campaign_id_campaigns"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["patron_id"], ["patrons.id"],
                                name=op.f("fk_campaign_members_patron_id_patrons"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_members")),
        sa.UniqueConstraint("campaign_id", "patron_id", name=op.f("uq_campaign_members_campaign_id_patron_id")),
    )
    op.create_index(op.f("ix_campaign_members_campaign_id"), "campaign_members", ["campaign_id"])
    op.create_index(op.f("ix_campaign_members_patron_id"), "campaign_members", ["patron_id"])

    op.create_table(
        "reflection_prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("library_id", sa.Integer(), nullable=False),
        sa.Column("message_key", sa.String(length=64), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(["library_id"], ["libraries.id"],
                                name=op.f("fk_reflection_prompts_library_id_libraries"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reflection_prompts")),
    )
    op.create_index(op.f("ix_reflection_prompts_library_id"), "reflection_prompts", ["library_id"])

    with op.batch_alter_table("reflections") as batch:
        batch.add_column(sa.Column("word_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("flags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("campaign_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(op.f("fk_reflections_campaign_id_campaigns"), "campaigns",
                                 ["campaign_id"], ["id"], ondelete="SET NULL")
    op.execute("UPDATE reflections SET flags = '[]' WHERE flags IS NULL")
    with op.batch_alter_table("reflections") as batch:
        batch.alter_column("flags", existing_type=sa.JSON(), nullable=False)
    op.create_index("uq_reflections_live_patron_title", "reflections", ["patron_id", "title_id"], unique=True,
                    sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))
    op.create_index("ix_reflections_queue", "reflections", ["library_id", "status", "submitted_at"])

    op.create_table(
        "campaign_shortlist",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("reflection_id", sa.Integer(), nullable=False),
        sa.Column("added_by", sa.Integer(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name=op.f("fk_campaign_shortlist_campaign_id_campaigns"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reflection_id"], ["reflections.id"],
                                name=op.f("fk_campaign_shortlist_reflection_id_reflections"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["added_by"], ["patrons.id"],
                                name=op.f("fk_campaign_shortlist_added_by_patrons"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_shortlist")),
        sa.UniqueConstraint("campaign_id", "reflection_id",
                            name=op.f("uq_campaign_shortlist_campaign_id_reflection_id")),
    )
    op.create_index(op.f("ix_campaign_shortlist_campaign_id"), "campaign_shortlist", ["campaign_id"])


def downgrade() -> None:
    op.drop_table("campaign_shortlist")
    op.drop_index("ix_reflections_queue", table_name="reflections")
    op.drop_index("uq_reflections_live_patron_title", table_name="reflections")
    with op.batch_alter_table("reflections") as batch:
        batch.drop_constraint(op.f("fk_reflections_campaign_id_campaigns"), type_="foreignkey")
        batch.drop_column("published_at")
        batch.drop_column("campaign_id")
        batch.drop_column("flags")
        batch.drop_column("word_count")
    op.drop_table("reflection_prompts")
    op.drop_table("campaign_members")
    op.drop_table("campaigns")
