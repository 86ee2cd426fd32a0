"""Domain exceptions with a status code, mapped to the one JSON error shape:

{"error": {"code", "message", "details", "suggestions"}}

except under `/v1/` (the OpenAI-compatible routes), where the same errors take OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`, so its SDKs read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket
from structlog import get_logger

from services.api.auth.protocol import accepted_subprotocol

log = get_logger(__name__)


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        suggestions: list[str] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.suggestions = suggestions or []
        self.headers = headers or {}
        if code:
            self.code = code


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class Unprocessable(ApiError):
    status_code = 422
    code = "validation_error"


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"


class GatewayTimeout(ApiError):
    status_code = 504
    code = "timeout"


def error_body(
    code: str, message: str, details: dict[str, Any] | None = None, suggestions: list[str] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}, "suggestions": suggestions or []}}


OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    path: str, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """`body` (from `error_body`) as the response, in OpenAI's shape on the `/v1/` routes."""
    if path.startswith(OPENAI_PREFIX):
        error = body["error"]
        body = openai_error(status, error["code"], error["message"], error["details"].get("param"))
    return JSONResponse(body, status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def validation_message(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5])


async def refuse_websocket(websocket: WebSocket, exc: ApiError) -> None:
    """A WebSocket refused before its stream starts (no key, scope, limits): accepted, told
    why in one `error` message, and closed with 4000 + the HTTP status (4401, 4403, 4429).
    A browser sees neither the status nor the body of a refused handshake; this it can read."""
    await websocket.accept(subprotocol=accepted_subprotocol(websocket))
    await websocket.send_json(
        {"type": "error", "category": exc.code.upper(), "message": exc.message, "details": exc.details, "final": True}
    )
    await websocket.close(code=4000 + exc.status_code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(connection: HTTPConnection, exc: ApiError) -> JSONResponse | None:
        if isinstance(connection, WebSocket):
            await refuse_websocket(connection, exc)
            return None
        body = error_body(exc.code, exc.message, exc.details, exc.suggestions)
        return error_response(connection.url.path, exc.status_code, body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        details: dict[str, Any] = {"errors": errors, "param": errors[0]["field"] if errors else None}
        body = error_body("validation_error", validation_message(list(exc.errors())), details)
        # OpenAI answers a bad parameter with 400; the rest of this API with 422, as FastAPI does.
        status = 400 if request.url.path.startswith(OPENAI_PREFIX) else 422
        return error_response(request.url.path, status, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request.url.path, exc.status_code, error_body(code, str(exc.detail)), exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error=str(exc))
        return error_response(request.url.path, 500, error_body("internal_error", "An unexpected error occurred."))
