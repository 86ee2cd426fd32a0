"""Measurements of completed jobs that calibrate time and cost estimates.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("device", sa.Text()),  # cpu, cuda, or the Modal GPU type (a10g, t4, ...)
    ("tokens_trained", sa.BigInteger()),  # non-padding tokens through the optimizer steps
    ("tokens_per_second", sa.Float()),  # tokens_trained / seconds of optimizer steps
    ("startup_seconds", sa.Float()),  # the run's wall time that was not optimizer steps
    ("estimate_error_pct", sa.Float()),  # (estimated - actual) / actual x 100, on time
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("fb_training_jobs", sa.Column(name, type_))
    # The estimator's rolling median: recent completed jobs per device (and base model).
    op.create_index(
        "idx_training_jobs_calibration",
        "fb_training_jobs",
        ["device", "completed_at"],
        postgresql_where=sa.text("status = 'completed' AND tokens_per_second IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("idx_training_jobs_calibration", table_name="fb_training_jobs")
    for name, _ in reversed(COLUMNS):
        op.drop_column("fb_training_jobs", name)
