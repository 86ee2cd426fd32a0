"""The chaos run (bench/chaos.py) as a test: workers SIGKILLed and paused, Redis restarted,
PostgreSQL connections terminated, while 12 real tiny-random trainings run on three workers.

Everything is real: PostgreSQL, a private redis-server (restarted), the API, the workers
and the trainer processes. The figures print with `-s`; docs/benchmarks.md records a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.chaos import ROUNDS, SKILLS, run_chaos
from shared.settings import Settings


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_jobs_complete_exactly_once_through_chaos(
    migrated: Settings, clean_db: AsyncEngine, tmp_path: Path
) -> None:
    report = await run_chaos(str(migrated.database_url), tmp_path)
    print("\n" + report.figures())
    assert report.completed == report.jobs == SKILLS * ROUNDS
    assert len(report.kills) == 3 and report.redis_restarts == 1 and report.pg_connections_terminated > 0
    assert report.paused_job is not None and report.paused_lease_lost_lines > 0
    assert report.websocket_replays_ok == report.jobs
    assert report.problems == []
