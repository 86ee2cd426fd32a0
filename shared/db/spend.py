"""GPU spend per workspace and calendar month (UTC), from the fb_gpu_spend ledger.

`job_state` records a job's cumulative bill whenever a transition writes its
`cost_usd` (each try adds its billed GPU seconds, failed tries included), so the
ledger has one owner, and deleting the job's skill later takes nothing off the month.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import GpuSpend, Workspace

_RECORD = text(
    """
    INSERT INTO fb_gpu_spend (job_id, workspace_id, cost_usd)
    SELECT j.id, s.workspace_id, :cost FROM fb_training_jobs j JOIN fb_skills s ON s.id = j.skill_id
    WHERE j.id = :job_id
    ON CONFLICT (job_id) DO UPDATE SET cost_usd = EXCLUDED.cost_usd
    """
)


async def record(session: AsyncSession, job_id: uuid.UUID, cost_usd: float) -> None:
    if cost_usd > 0:
        await session.execute(_RECORD.bindparams(job_id=job_id, cost=float(cost_usd)))


def month_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime | None = None) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


@dataclass(frozen=True)
class Budget:
    monthly_usd: float | None
    spent_usd: float
    resets_at: datetime

    @property
    def remaining_usd(self) -> float | None:
        return None if self.monthly_usd is None else max(0.0, self.monthly_usd - self.spent_usd)


async def budget(session: AsyncSession, workspace_id: str) -> Budget:
    cap = await session.scalar(select(Workspace.monthly_budget_usd).where(Workspace.id == workspace_id))
    spent = await session.scalar(
        select(func.coalesce(func.sum(GpuSpend.cost_usd), 0.0)).where(
            GpuSpend.workspace_id == workspace_id, GpuSpend.billed_at >= month_start()
        )
    )
    return Budget(monthly_usd=cap, spent_usd=round(float(spent or 0.0), 4), resets_at=next_month_start())
