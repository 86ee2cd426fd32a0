"""`fastbrain serve`: the inference engine as a small internal HTTP service.

It listens on 127.0.0.1 by default and is reached only through the API, which
authenticates the caller, resolves the model name in the caller's workspace and
sends a `GenerateRequest`. Routes:

- `POST /generate`: newline-delimited JSON events (`start`, `delta`..., `done`); a
  refusal before generation (unknown base, missing files, template mismatch, full
  queue) is an HTTP error with `{"error": {"code", "message"}}`. Closing the response
  stops the generation.
- `POST /adapters/{name}/evict`: forget a deleted adapter.
- `GET /health`: queue depth, resident models and load counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.gpu.serving.residency import Residency
from services.gpu.serving.scheduler import QueueFull, Scheduler, Ticket
from shared.schemas.serving import EngineEvent, ErrorEvent, GenerateRequest

NDJSON = "application/x-ndjson"
RETRY_AFTER_SECONDS = 1


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _line(event: EngineEvent) -> bytes:
    return event.model_dump_json().encode() + b"\n"


@dataclass(frozen=True)
class EngineConfig:
    """The engine's settings (`fastbrain serve` fills them from FASTBRAIN_* settings; the GPU side reads no env)."""

    models_dir: Path
    adapters_dir: Path
    device: str | None = None
    max_adapters: int = 8
    max_active: int = 8
    max_queue: int = 64
    preload: tuple[str, ...] = ()


def create_engine_app(config: EngineConfig) -> Starlette:
    residency = Residency(config.models_dir, config.device, config.max_adapters, config.adapters_dir)
    scheduler = Scheduler(residency, config.max_queue, config.max_active)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        for model_id in config.preload:  # loaded before the first chat, between requests
            scheduler.call(partial(residency.base, model_id))
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    async def generate(request: Request) -> Response:
        try:
            body = GenerateRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return _error(400, "invalid_request", str(exc))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def emit(event: EngineEvent) -> None:  # called on the compute thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        ticket = Ticket(body, emit=emit)
        try:
            scheduler.submit(ticket)
        except QueueFull as exc:
            return _error(503, "engine_busy", str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            first = await events.get()
        except BaseException:
            ticket.cancelled.set()
            raise
        if isinstance(first, ErrorEvent):
            return _error(first.status, first.code, first.message)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield _line(first)
                while True:
                    event = await events.get()
                    yield _line(event)
                    if event.type in ("done", "error"):
                        return
            finally:  # finished, or the client went away: either way this generation stops
                ticket.cancelled.set()

        return StreamingResponse(stream(), media_type=NDJSON)

    async def evict(request: Request) -> Response:
        name = request.path_params["name"]
        evicted = await asyncio.wrap_future(scheduler.call(lambda: residency.evict(name)))
        return JSONResponse({"evicted": evicted})

    async def health(_: Request) -> Response:
        return JSONResponse(asdict(scheduler.stats()))

    return Starlette(
        routes=[
            Route("/generate", generate, methods=["POST"]),
            Route("/adapters/{name}/evict", evict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
