"""The API's client of the inference engine (`fastbrain serve`): one pooled HTTP/1.1 connection set.

`stream()` yields the engine's events; a refusal (full queue, missing adapter files,
template mismatch...) or an unreachable engine is raised as an `ApiError` before the
first event, so the caller answers with a proper status instead of a broken stream.
Leaving the `async with` (the caller's client went away) closes the engine response,
which stops that generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx
from pydantic import TypeAdapter

from services.api.errors import ApiError, Unavailable
from shared.schemas.serving import EngineEvent, GenerateRequest

EVENT = TypeAdapter[EngineEvent](EngineEvent)
RETRY_AFTER_SECONDS = "2"
START_HINTS = ["Start the inference engine: `fastbrain serve` (`fastbrain dev` runs one)."]


class EngineRefused(ApiError):
    """An engine refusal passed on with its status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, headers=headers)
        self.status_code = status


class EngineClient:
    def __init__(self, base_url: str, first_event_timeout: float) -> None:
        # No read timeout between events: a long answer streams for as long as it takes; the
        # first event (after queueing and the prefill) has its own deadline.
        timeout = httpx.Timeout(connect=5.0, read=first_event_timeout, write=30.0, pool=30.0)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    @asynccontextmanager
    async def stream(self, request: GenerateRequest) -> AsyncIterator[AsyncIterator[EngineEvent]]:
        try:
            async with self._http.stream("POST", "/generate", content=request.model_dump_json()) as response:
                if response.status_code != 200:
                    raise await self._refusal(response)
                yield self._events(response)
        except httpx.TimeoutException as exc:
            raise Unavailable(
                "The inference engine did not start answering in time.",
                code="engine_timeout",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from exc
        except httpx.TransportError as exc:
            raise Unavailable(
                f"The inference engine is not reachable ({type(exc).__name__}).",
                code="engine_unavailable",
                suggestions=START_HINTS,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from exc

    @staticmethod
    async def _events(response: httpx.Response) -> AsyncIterator[EngineEvent]:
        async for line in response.aiter_lines():
            if line:
                yield EVENT.validate_json(line)

    @staticmethod
    async def _refusal(response: httpx.Response) -> EngineRefused:
        await response.aread()
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "engine_error", f"The inference engine answered HTTP {response.status_code}."
        headers = {"Retry-After": response.headers["Retry-After"]} if "Retry-After" in response.headers else None
        return EngineRefused(response.status_code, code, message, headers)

    async def evict(self, adapter_id: str) -> None:
        """Best effort: an engine that is down holds nothing to forget."""
        with suppress(httpx.HTTPError):
            await self._http.post(f"/adapters/{adapter_id}/evict", timeout=5.0)

    async def health(self) -> dict[str, object] | None:
        try:
            response = await self._http.get("/health", timeout=2.0)
            body: dict[str, object] = response.json()
            return body
        except (httpx.HTTPError, ValueError):
            return None
