"""Where an adapter trained on Modal keeps its copy on the Volume.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fb_adapters", sa.Column("remote_ref", sa.Text()))


def downgrade() -> None:
    op.drop_column("fb_adapters", "remote_ref")
