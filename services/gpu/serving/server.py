"""`fastbrain serve`: the inference engine as a small internal HTTP service.

It listens on 127.0.0.1 by default and is reached only through the API, which
authenticates the caller, resolves the model name in the caller's workspace and
sends a `GenerateRequest`. Routes:

With `backend="modal"` it loads no model and forwards each request to the deployed Modal
class (services/gpu/serving/remote.py), where the same engine runs on a GPU.

- `POST /generate`: newline-delimited JSON events (`start`, `delta`..., `done`); a
  refusal before generation (unknown base, missing files, template mismatch, full
  queue) is an HTTP error with `{"error": {"code", "message"}}`. Closing the response
  stops the generation.
- `POST /adapters/{name}/evict`: forget a deleted adapter.
- `GET /health`: queue depth, resident models and load counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.gpu.serving.remote import ClassLookup, ModalEngine, deployed
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
    max_active: int = 16
    max_queue: int = 64
    preload: tuple[str, ...] = ()
    backend: str = "local"  # or "modal": forward to the deployed class's `chat` (services/gpu/serving/remote.py)
    modal_app_name: str = "fastbrain-trainer"


def _local(scheduler: Scheduler, request: GenerateRequest) -> AsyncGenerator[EngineEvent]:
    """Submit at once (so a full queue is refused before any response), then relay the compute thread's events."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def emit(event: EngineEvent) -> None:  # called on the compute thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    ticket = Ticket(request, emit=emit)
    scheduler.submit(ticket)

    async def relay() -> AsyncGenerator[EngineEvent]:
        try:
            while True:
                event = await events.get()
                yield event
                if event.type in ("done", "error"):
                    return
        finally:
            ticket.cancelled.set()

    return relay()


def create_engine_app(config: EngineConfig, modal_lookup: ClassLookup | None = None) -> Starlette:
    residency = Residency(config.models_dir, config.device, config.max_adapters, config.adapters_dir)
    scheduler = Scheduler(residency, config.max_queue, config.max_active)
    modal = ModalEngine(modal_lookup or deployed(config.modal_app_name)) if config.backend == "modal" else None

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        for model_id in config.preload if modal is None else ():  # loaded before the first chat, between requests
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
        try:
            events = modal.events(body) if modal is not None else _local(scheduler, body)
        except QueueFull as exc:
            return _error(503, "engine_busy", str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        if isinstance(first, ErrorEvent):
            await events.aclose()
            return _error(first.status, first.code, first.message)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield _line(first)
                async for event in events:
                    yield _line(event)
            finally:  # finished, or the client went away: either way this generation stops
                await events.aclose()

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
