"""Workspaces, API keys and the GPU spend ledger; every skill belongs to a workspace.

Existing skills (and through them their jobs, adapters and events) move into the
`default` workspace.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fb_workspaces",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("monthly_budget_usd", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.execute("INSERT INTO fb_workspaces (id) VALUES ('default')")
    op.create_table(
        "fb_api_keys",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("workspace_id", sa.Text(), sa.ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("scope IN ('read', 'train', 'admin')", name="ck_api_keys_scope"),
    )
    op.create_index("idx_api_keys_workspace", "fb_api_keys", ["workspace_id"])
    # One row per training job, its cumulative bill; no foreign key to the job, so
    # deleting a skill (and its jobs) does not give its spend back.
    op.create_table(
        "fb_gpu_spend",
        sa.Column("job_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("workspace_id", sa.Text(), sa.ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("billed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("idx_gpu_spend_workspace_month", "fb_gpu_spend", ["workspace_id", "billed_at"])
    op.add_column(
        "fb_skills",
        sa.Column(
            "workspace_id",
            sa.Text(),
            sa.ForeignKey("fb_workspaces.id", ondelete="CASCADE"),
            nullable=False,
            server_default="default",
        ),
    )
    op.alter_column("fb_skills", "workspace_id", server_default=None)
    op.create_index("idx_skills_workspace", "fb_skills", ["workspace_id"])
    op.execute(
        "INSERT INTO fb_gpu_spend (job_id, workspace_id, cost_usd, billed_at) "
        "SELECT j.id, s.workspace_id, j.cost_usd, COALESCE(j.started_at, j.created_at) "
        "FROM fb_training_jobs j JOIN fb_skills s ON s.id = j.skill_id WHERE j.cost_usd > 0"
    )


def downgrade() -> None:
    op.drop_index("idx_skills_workspace", table_name="fb_skills")
    op.drop_column("fb_skills", "workspace_id")
    op.drop_table("fb_gpu_spend")
    op.drop_table("fb_api_keys")
    op.drop_table("fb_workspaces")
