"""A per-skill adapter version counter: versions are never reused after a delete.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "fb_skills", sa.Column("adapter_version_seq", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    # Existing skills continue after their newest surviving version.
    op.execute(
        "UPDATE fb_skills s SET adapter_version_seq = COALESCE("
        "(SELECT max(a.version) FROM fb_adapters a WHERE a.skill_id = s.id), 0)"
    )


def downgrade() -> None:
    op.drop_column("fb_skills", "adapter_version_seq")
