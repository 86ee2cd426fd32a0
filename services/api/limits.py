"""Request body size, enforced while the body is read.

Starlette has no total body limit (`Request.form()`'s `max_part_size` bounds only
non-file fields; file parts spool to a temporary file without limit), so this is a
small pure-ASGI middleware in front of the app:

- a `Content-Length` over the limit is answered 413 without calling the app: nothing of
  the body is parsed or spooled (up to one limit's worth more is read and dropped, so the
  client is still listening for the answer);
- a body without one (chunked, streamed) is counted as it arrives; the chunk that
  goes past the limit is never handed to the app, which sees `BodyTooLarge` raised from
  `receive()` instead and answers 413 (FastAPI re-raises an `HTTPException` met while
  reading the body); whatever was spooled of the part below the limit is dropped with
  the request.

Non-HTTP scopes (WebSocket, lifespan) pass through untouched.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_body, error_response

CODE = "payload_too_large"


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int, received: int | None = None) -> None:
        super().__init__(413, f"The request body is larger than the {limit}-byte limit.")
        self.limit = limit
        self.received = received


def too_large_body(limit: int, content_length: int | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"limit_bytes": limit}
    if content_length is not None:
        details["content_length"] = content_length
    return error_body(
        CODE,
        f"The request body is larger than {limit} bytes.",
        details,
        ["Send less at once: split the examples or the file into parts.", "Or raise FASTBRAIN_MAX_REQUEST_BODY_BYTES."],
    )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await discard_body(receive, self.max_bytes)
            await self._reject(scope, send, declared)
            return

        limit = self.max_bytes
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body"):
                        await discard_body(receive, limit)
                    raise BodyTooLarge(limit, received)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:  # raised where no handler turned it into a response
            if started:
                raise
            await self._reject(scope, send, declared)

    async def _reject(self, scope: Scope, send: Send, declared: int | None) -> None:
        response = error_response(scope.get("path", ""), 413, too_large_body(self.max_bytes, declared))
        await response({"type": "http"}, _no_body, send)


async def discard_body(receive: Receive, budget: int) -> None:
    """Read and drop (never keep) up to `budget` more bytes of the body before answering.

    A server that closes the connection while the client is still sending makes the
    client's TCP stack reset it, and the client never reads the 413; draining a bounded
    amount lets ordinary clients see the answer. Past the budget the connection is closed.
    """
    dropped = 0
    while dropped <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    """The middleware, and a handler so a `BodyTooLarge` raised inside the app answers in the error shape."""

    async def _too_large(request: Request, exc: Exception) -> JSONResponse:
        limit = exc.limit if isinstance(exc, BodyTooLarge) else max_bytes
        return error_response(request.url.path, 413, too_large_body(limit))

    app.add_exception_handler(BodyTooLarge, _too_large)
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
