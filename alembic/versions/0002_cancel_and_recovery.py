"""Cancel requests and recovery bookkeeping on training jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fb_training_jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    # What auto-recovery did for this job, in order: [{category, action, message, ...}].
    op.add_column(
        "fb_training_jobs",
        sa.Column("recovery_attempts", pg.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    # Index for the reaper's scan of running jobs by heartbeat age.
    op.create_index(
        "idx_training_jobs_running_heartbeat",
        "fb_training_jobs",
        ["heartbeat_at"],
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("idx_training_jobs_running_heartbeat", table_name="fb_training_jobs")
    op.drop_column("fb_training_jobs", "recovery_attempts")
    op.drop_column("fb_training_jobs", "cancel_requested_at")
