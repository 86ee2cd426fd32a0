"""The kept (best) step and the side-by-side evaluation on training jobs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fb_training_jobs", sa.Column("best_step", sa.Integer()))
    op.add_column("fb_training_jobs", sa.Column("best_eval_loss", sa.Float()))
    op.add_column("fb_training_jobs", sa.Column("last_eval_loss", sa.Float()))
    op.add_column("fb_training_jobs", sa.Column("evaluation", postgresql.JSONB()))


def downgrade() -> None:
    for column in ("evaluation", "last_eval_loss", "best_eval_loss", "best_step"):
        op.drop_column("fb_training_jobs", column)
