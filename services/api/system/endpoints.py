"""System endpoints: health (database, Redis, worker and engine liveness), models, presets."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import text

from services.api.deps import StateDep
from services.gpu.catalog import list_models
from shared.schemas.training import PRESET_DESCRIPTIONS, PRESETS, SMALL_SKILL_EXAMPLES, SMALL_SKILL_PRESETS

router = APIRouter(prefix="/api", tags=["system"])


def health_key(queue_name: str) -> str:
    """arq's own liveness key, refreshed by every worker every `health_check_interval`."""
    return f"{queue_name}:health-check"


@router.get("/health", summary="Database, Redis, worker and inference engine liveness")
async def health(state: StateDep, response: Response) -> dict[str, Any]:
    """`status` is `ok` when all four answer, `degraded` when only the worker (trainings
    wait in the queue) or the inference engine (chats answer 503) is missing, `down`
    otherwise (503)."""
    checks: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        async with state.system_sessionmaker() as session:  # public: no workspace, no tenant rows
            await session.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    worker_report: bytes | None = None
    started = time.perf_counter()
    try:
        await state.redis.ping()
        checks["redis"] = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        worker_report = await state.redis.get(health_key(state.settings.queue_name))
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    checks["worker"] = {
        "ok": worker_report is not None,
        "report": worker_report.decode() if worker_report else None,
    }
    engine = await state.engine.health()  # public: counts only, never which adapters are resident
    checks["engine"] = {"ok": engine is not None} | (
        {key: engine.get(key) for key in ("waiting", "active", "served")} if engine else {}
    )
    if not (checks["database"]["ok"] and checks["redis"]["ok"]):
        status = "down"
        response.status_code = 503
    else:
        status = "ok" if checks["worker"]["ok"] and checks["engine"]["ok"] else "degraded"
    return {"status": status, **checks}


@router.get("/models", summary="The base-model catalog")
async def models() -> dict[str, Any]:
    return {"models": [m.to_dict() if hasattr(m, "to_dict") else dict(vars(m)) for m in list_models()]}


@router.get("/presets", summary="Training presets with their hyperparameters")
async def presets() -> dict[str, Any]:
    return {
        "presets": [
            {
                "id": preset.value,
                "description": PRESET_DESCRIPTIONS[preset],
                "hyperparameters": hp.model_dump(),
                "small_skill_hyperparameters": SMALL_SKILL_PRESETS[preset].model_dump(),
            }
            for preset, hp in PRESETS.items()
        ],
        "small_skill_examples": SMALL_SKILL_EXAMPLES,
        "note": (
            f"`hyperparameters` apply to skills with {SMALL_SKILL_EXAMPLES} examples or more; smaller skills get "
            "`small_skill_hyperparameters` (more epochs, higher learning rate: see docs/presets.md). Any field "
            "given in the training request overrides the preset's value."
        ),
    }
