"""Initial schema: fb_skills, fb_training_jobs, fb_adapters, fb_training_logs.

The spec's tables, without the Supabase auth.users reference, plus the plumbing
columns the worker needs (attempts, event sequence, lease, heartbeat).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
EMPTY_LIST = sa.text("'[]'::jsonb")
EMPTY_OBJ = sa.text("'{}'::jsonb")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fb_skills",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("knowledge_items", pg.JSONB(), nullable=False, server_default=EMPTY_LIST),
        sa.Column("training_data", pg.JSONB(), nullable=False, server_default=EMPTY_LIST),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
    )
    op.create_table(
        "fb_training_jobs",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("skill_id", sa.Text(), sa.ForeignKey("fb_skills.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("config", pg.JSONB(), nullable=False, server_default=EMPTY_OBJ),
        sa.Column("dataset", pg.JSONB(), nullable=False, server_default=EMPTY_OBJ),
        sa.Column("progress", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("current_step", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("total_steps", sa.Integer()),
        sa.Column("current_epoch", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("total_epochs", sa.Integer()),
        sa.Column("current_loss", sa.Float()),
        sa.Column("eta_seconds", sa.Float()),
        sa.Column("started_at", TZ),
        sa.Column("completed_at", TZ),
        sa.Column("estimated_completion", TZ),
        sa.Column("initial_loss", sa.Float()),
        sa.Column("final_loss", sa.Float()),
        sa.Column("training_time_seconds", sa.Integer()),
        sa.Column("cost_usd", sa.Float()),
        sa.Column("estimated_cost", sa.Float()),
        sa.Column("estimated_time_minutes", sa.Float()),
        sa.Column("error_message", sa.Text()),
        sa.Column("error_details", pg.JSONB()),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3")),
        sa.Column("event_seq", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("lease_owner", sa.Text()),
        sa.Column("heartbeat_at", TZ),
        sa.Column("arq_job_id", sa.Text()),
        sa.Column("backend", sa.Text(), nullable=False, server_default="local"),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("created_by", pg.UUID(as_uuid=True)),
    )
    op.create_index("idx_training_jobs_skill", "fb_training_jobs", ["skill_id"])
    op.create_index("idx_training_jobs_status", "fb_training_jobs", ["status"])
    # One active training per skill, enforced by the database, not by a check-then-insert race.
    op.create_index(
        "uq_training_jobs_one_active",
        "fb_training_jobs",
        ["skill_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'queued', 'running')"),
    )
    op.create_table(
        "fb_adapters",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("skill_id", sa.Text(), sa.ForeignKey("fb_skills.id", ondelete="CASCADE"), nullable=False),
        sa.Column("training_job_id", pg.UUID(as_uuid=True), sa.ForeignKey("fb_training_jobs.id", ondelete="SET NULL")),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("final_loss", sa.Float()),
        sa.Column("training_examples", sa.Integer()),
        sa.Column("training_time_seconds", sa.Integer()),
        sa.Column("storage_path", sa.Text(), nullable=False),
        sa.Column("adapter_size_bytes", sa.BigInteger()),
        sa.Column("base_model", sa.Text()),
        sa.Column("lora_config", pg.JSONB()),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("notes", sa.Text()),
        sa.UniqueConstraint("skill_id", "version", name="uq_adapters_skill_version"),
        sa.UniqueConstraint("training_job_id", name="uq_adapters_training_job"),
    )
    op.create_index("idx_adapters_skill", "fb_adapters", ["skill_id"])
    op.create_index(
        "uq_adapters_one_active", "fb_adapters", ["skill_id"], unique=True, postgresql_where=sa.text("is_active")
    )
    op.create_table(
        "fb_training_logs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", pg.UUID(as_uuid=True), sa.ForeignKey("fb_training_jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("timestamp", TZ, nullable=False, server_default=NOW),
        sa.Column("level", sa.Text()),
        sa.Column("message", sa.Text()),
        sa.Column("data", pg.JSONB(), nullable=False),
        sa.UniqueConstraint("job_id", "seq", name="uq_training_logs_job_seq"),
    )
    op.create_index("idx_training_logs_job", "fb_training_logs", ["job_id"])


def downgrade() -> None:
    op.drop_table("fb_training_logs")
    op.drop_table("fb_adapters")
    op.drop_table("fb_training_jobs")
    op.drop_table("fb_skills")
