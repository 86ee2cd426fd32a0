"""The data quality report of a skill, computed on a worker (tokenizer and embedder live there)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api.deps import PrincipalDep, StateDep
from services.api.errors import ApiError, GatewayTimeout, Unavailable
from services.api.skills.service import get_skill
from services.api.training.service import validate_base_model
from shared.rules import tasks
from shared.schemas.training import DEFAULT_BASE_MODEL

router = APIRouter(prefix="/api", tags=["data"])


class ReportFailed(ApiError):
    status_code = 502
    code = "report_failed"


@router.get("/skills/{skill_id}/data-report", summary="Data quality report for a skill's examples")
async def data_report(
    skill_id: str,
    state: StateDep,
    principal: PrincipalDep,
    base_model: str = DEFAULT_BASE_MODEL,
    max_seq_length: Annotated[int, Query(ge=32, le=8192)] = 512,
) -> dict[str, Any]:
    """Example count; average, median and histogram of tokens in `base_model`'s real
    tokens (its chat template included); topic coverage from sentence-embedding
    clusters; exact and near-duplicate pairs (indices into the skill's examples);
    a 1-5 star score from the spec's thresholds; and recommendations such as
    "Add 38 more examples for optimal results"."""
    # The report runs on a local worker: its tokenizer must be a local model's.
    validate_base_model(base_model, field="base_model")
    async with state.session(principal) as session:
        skill = await get_skill(session, skill_id)
        request = {
            "base_model": base_model,
            "system_prompt": skill.system_prompt,
            "conversations": skill.training_data,
            "max_seq_length": max_seq_length,
        }
    job = await state.redis.enqueue_job(tasks.DATA_REPORT, request, _queue_name=state.settings.queue_name)
    if job is None:
        raise Unavailable("Could not queue the report.")
    try:
        report: dict[str, Any] = await job.result(timeout=state.settings.generation_timeout_seconds, poll_delay=0.1)
    except TimeoutError as exc:
        raise GatewayTimeout(
            "The report did not finish in time.", suggestions=["Check that a worker is running (GET /api/health)."]
        ) from exc
    except Exception as exc:
        raise ReportFailed(f"The report failed: {type(exc).__name__}: {exc}") from exc
    return {"skill_id": skill_id, **report}
