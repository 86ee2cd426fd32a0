"""Held-out evaluation metrics on training jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fb_training_jobs", sa.Column("eval_loss_before", sa.Float()))
    op.add_column("fb_training_jobs", sa.Column("eval_loss_after", sa.Float()))
    op.add_column("fb_training_jobs", sa.Column("eval_examples", sa.Integer()))
    op.add_column("fb_training_jobs", sa.Column("improvement_pct", sa.Float()))


def downgrade() -> None:
    for column in ("improvement_pct", "eval_examples", "eval_loss_after", "eval_loss_before"):
        op.drop_column("fb_training_jobs", column)
