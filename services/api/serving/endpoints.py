"""OpenAI-compatible serving: `POST /v1/chat/completions` and `GET /v1/models`.

Point an OpenAI SDK at `<server>/v1` with a Fast Brain API key as its `api_key`:
`model` is a skill id, `skill_id@v3` or a base model id (GET /v1/models lists them).
Answers come from the inference engine (`fastbrain serve`): the base model is loaded
once and each skill's adapter is switched on per request; prompts are rendered with the
chat template the adapter was trained with.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from services.api.auth.access import needs
from services.api.deps import AppState, PrincipalDep, SessionDep, StateDep
from services.api.errors import openai_error
from services.api.serving import models, service
from services.api.serving.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Model,
    ModelList,
    OutputMessage,
    Usage,
)
from shared.db.keys import Scope
from shared.schemas.serving import ChatMessage, EngineEvent, GenerateRequest, Sampling

router = APIRouter(prefix="/v1", tags=["openai"])
SSE = "text/event-stream"
STREAM_DOC = (
    "With `stream: true`, server-sent events: `data: {chat.completion.chunk}` lines (the first carries the role, "
    "then content deltas, then one with `finish_reason`; with `stream_options.include_usage` a last one with "
    '`usage`), then `data: [DONE]`. An error after the stream began arrives as `data: {"error": {...}}`.'
)


def _model(entry: models.Listed) -> Model:
    return Model(
        id=entry.id,
        created=int(entry.created.timestamp()),
        owned_by=entry.owned_by,
        kind=entry.kind,
        base_model=entry.base_model,
        skill_id=entry.skill_id,
        version=entry.version,
        adapter_id=entry.adapter_id,
        active=entry.active,
        eval_loss=entry.eval_loss,
    )


@router.get("/models", summary="List the models you can chat with (OpenAI-compatible)")
async def list_models(session: SessionDep) -> ModelList:
    """Each trained skill (its active version), each version as `skill_id@vN`, and the base models."""
    return ModelList(data=[_model(entry) for entry in await models.listed(session)])


@router.get("/models/{model}", summary="One model (OpenAI-compatible)")
async def get_model(model: str, session: SessionDep) -> Model:
    for entry in await models.listed(session):
        if entry.id == model:
            return _model(entry)
    await models.resolve(session, model)  # says why it is unknown (no adapter yet, no such version...)
    raise AssertionError("resolve() found a model that listed() does not list")  # pragma: no cover


@router.post(
    "/chat/completions",
    summary="Chat with a skill (OpenAI-compatible)",
    description=STREAM_DOC,
    openapi_extra=needs(Scope.READ),  # chatting changes nothing: a read key may
    response_model=ChatCompletion,
    responses={200: {"content": {SSE: {"schema": {"type": "string"}}}, "description": "JSON, or SSE when streamed"}},
)
async def chat_completions(
    body: ChatCompletionRequest, state: StateDep, principal: PrincipalDep
) -> ChatCompletion | StreamingResponse:
    started = time.perf_counter()
    async with state.session(principal) as session:  # short: no connection is held while the model answers
        target = await models.resolve(session, body.model)
    first = service.FirstToken(target.base_model, started)  # resolving the model counts too
    messages = [
        ChatMessage(role="system" if m.role in ("system", "developer") else m.role, content=m.text)
        for m in body.messages
    ]
    sampling = Sampling(
        max_tokens=body.token_limit,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=body.stops,
        seed=None if body.seed is None else body.seed % 2**64,
    )
    request = service.engine_request(target, messages, sampling)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(state, request, completion_id, created, body.model, include_usage, first)
    answer = await service.complete(state.engine, request, first)
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=body.model,
        choices=[Choice(message=OutputMessage(content=answer.text), finish_reason=answer.finish_reason)],
        usage=Usage(
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            total_tokens=answer.prompt_tokens + answer.completion_tokens,
        ),
    )


def _data(payload: ChatCompletionChunk | dict[str, Any]) -> str:
    text = payload.model_dump_json() if isinstance(payload, ChatCompletionChunk) else json.dumps(payload)
    return f"data: {text}\n\n"


async def _stream(
    state: AppState,
    request: GenerateRequest,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    first: service.FirstToken,
) -> StreamingResponse:
    stack = AsyncExitStack()
    # Entered here, not in the body: a refusal (unknown files, full queue) is still an HTTP error status.
    events = await stack.enter_async_context(state.engine.stream(request))

    def chunk(delta: Delta, finish: Any = None) -> str:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return _data(ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[choice]))

    async def body() -> AsyncIterator[str]:
        prompt_tokens = 0
        try:
            yield chunk(Delta(role="assistant", content=""))
            event: EngineEvent
            async for event in events:
                if event.type == "start":
                    prompt_tokens = event.prompt_tokens
                elif event.type == "delta":
                    first.token()
                    yield chunk(Delta(content=event.text))
                elif event.type == "error":
                    yield _data(openai_error(502, event.code, f"Generation failed: {event.message}"))
                    break
                else:
                    yield chunk(Delta(), event.finish_reason)
                    if include_usage:
                        usage = Usage(
                            prompt_tokens=prompt_tokens,
                            completion_tokens=event.completion_tokens,
                            total_tokens=prompt_tokens + event.completion_tokens,
                        )
                        final = ChatCompletionChunk(
                            id=completion_id, created=created, model=model, choices=[], usage=usage
                        )
                        yield _data(final)
                    break
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: closing the engine response stops the generation
            await stack.aclose()

    return StreamingResponse(body(), media_type=SSE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
