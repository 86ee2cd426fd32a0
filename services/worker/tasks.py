"""arq task functions. Thin: each delegates to its domain module."""

from __future__ import annotations

import time
from typing import Any

from services.worker.context import WorkerContext


async def generate(ctx: WorkerContext, request: dict[str, Any]) -> dict[str, Any]:
    """Answer a test-adapter prompt with a base model plus adapter."""
    started = time.perf_counter()
    response = await ctx["backend"].generate(request)
    return {"response": response, "generation_time_ms": round((time.perf_counter() - started) * 1000)}
