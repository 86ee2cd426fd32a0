"""Chat requests to the engine: building them from a resolved model, and reading whole answers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.api.errors import ApiError
from services.api.metrics.instruments import FIRST_TOKEN
from services.api.serving.engine import EngineClient
from services.api.serving.models import Target
from shared.schemas.serving import ChatMessage, EngineEvent, ErrorEvent, FinishReason, GenerateRequest, Sampling


class GenerationFailed(ApiError):
    status_code = 502
    code = "generation_failed"


def engine_request(target: Target, messages: list[ChatMessage], sampling: Sampling) -> GenerateRequest:
    """The request for `target`: its skill's system prompt comes first unless the caller gave one."""
    if target.system_prompt and not any(m.role == "system" for m in messages):
        messages = [ChatMessage(role="system", content=target.system_prompt), *messages]
    return GenerateRequest(
        base_model=target.base_model,
        adapter=target.adapter,
        messages=messages,
        sampling=sampling,
        queue_key=target.queue_key,
    )


class FirstToken:
    """Observes `fastbrain_inference_first_token_seconds` once, at a request's first token."""

    def __init__(self, base_model: str, started: float | None = None) -> None:
        self.base_model = base_model
        self.started = time.perf_counter() if started is None else started  # a `time.perf_counter()` reading
        self._seen = False

    def token(self) -> None:
        if not self._seen:
            self._seen = True
            FIRST_TOKEN.labels(self.base_model).observe(time.perf_counter() - self.started)


def failure(event: ErrorEvent) -> GenerationFailed:
    return GenerationFailed(f"Generation failed: {event.message}", code=event.code)


@dataclass
class Answer:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    seconds: float


async def complete(engine: EngineClient, request: GenerateRequest, first: FirstToken | None = None) -> Answer:
    """The whole answer (not streamed)."""
    started = time.perf_counter()
    first = first or FirstToken(request.base_model)
    pieces: list[str] = []
    prompt_tokens = 0
    async with engine.stream(request) as events:
        event: EngineEvent
        async for event in events:
            if event.type == "start":
                prompt_tokens = event.prompt_tokens
            elif event.type == "delta":
                first.token()
                pieces.append(event.text)
            elif event.type == "error":
                raise failure(event)
            else:
                return Answer(
                    "".join(pieces),
                    event.finish_reason,
                    prompt_tokens,
                    event.completion_tokens,
                    time.perf_counter() - started,
                )
    raise GenerationFailed("The inference engine ended the answer without finishing it.")
