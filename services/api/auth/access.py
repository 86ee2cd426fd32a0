"""Who may call what. One app-wide dependency (`authorize`) runs before every route:

- it finds the caller's key: `Authorization: Bearer <key>` on HTTP and WebSocket
  alike, or on a WebSocket from a browser (which cannot set headers) a one-use stream
  ticket offered as the subprotocol `fastbrain.ticket.<ticket>` (never a query string,
  which servers and proxies log);
- it checks the key's scope against the route's (`required_scope`: GET and WebSocket
  routes need `read`, other methods `train`, unless the route says otherwise with
  `openapi_extra=needs(...)`) and the key's request rate;
- it leaves the `Principal` on the connection, where the session dependency picks up
  its workspace (shared/db/tenancy.py does the scoping).

Only `PUBLIC_PATHS` skip it: the dashboard's page (which shows a login screen), the
docs page and the health check carry no workspace data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from services.api.auth import rate, tickets
from services.api.auth.protocol import offered_ticket
from services.api.errors import Forbidden, Unauthorized, error_body, error_response
from services.api.limits import discard_body
from shared.db.keys import Principal, Scope, authenticate

if TYPE_CHECKING:
    from services.api.deps import AppState

PUBLIC_PATHS = frozenset({"/", "/favicon.svg", "/docs", "/api/health"})
SCOPE_EXTRA = "x-required-scope"
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="fastbrain"'}
LOGIN_HINTS = [
    "Send `Authorization: Bearer <key>`; `fastbrain keys create --workspace W --scope train` makes a key.",
    "With `fastbrain dev` / ./run.sh, the admin key is in <data dir>/admin-key.",
]


ACCESS_RESPONSES = {
    "401": "No valid API key (`unauthorized`).",
    "403": "The key's scope is too small for this operation (`insufficient_scope`).",
    "429": "Too many requests for this key (`rate_limited`, with `Retry-After`).",
}


def needs(scope: Scope) -> dict[str, Any]:
    """`openapi_extra` for a route whose scope is not the default of its method (it shows in the schema too)."""
    return {SCOPE_EXTRA: scope.value}


def required_scope(route: Any) -> Scope:
    extra = getattr(route, "openapi_extra", None) or {}
    if SCOPE_EXTRA in extra:
        return Scope(extra[SCOPE_EXTRA])
    if isinstance(route, APIWebSocketRoute):
        return Scope.READ
    methods = set(getattr(route, "methods", None) or ())
    return Scope.READ if methods <= {"GET", "HEAD"} else Scope.TRAIN


def is_public(route: Any) -> bool:
    return getattr(route, "path", None) in PUBLIC_PATHS


def _bearer(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(
            "The Authorization header must be `Bearer <key>`.",
            suggestions=LOGIN_HINTS,
            code="invalid_authorization",
            headers=WWW_AUTHENTICATE,
        )
    return value.strip()


async def _principal(connection: HTTPConnection, state: AppState) -> Principal | None:
    secret = _bearer(connection)
    if secret is not None:
        async with state.system_sessionmaker() as session, session.begin():
            return await authenticate(session, secret)
    if connection.scope["type"] == "websocket":
        ticket = offered_ticket(connection)
        if ticket is not None:
            principal = await tickets.redeem(state, ticket)
            if principal is None:  # the key may be fine: the client should fetch another ticket
                raise Unauthorized(
                    "The stream ticket is unknown, expired or already used.",
                    suggestions=["Get a new one with POST /api/stream-tickets just before connecting."],
                    code="invalid_ticket",
                )
            return principal
    return None


async def authorize(connection: HTTPConnection) -> None:
    route = connection.scope.get("route")
    if is_public(route):
        return
    state: AppState = connection.app.state.fastbrain
    principal = await _principal(connection, state)
    if principal is None:
        raise Unauthorized(
            "A valid API key is required.", suggestions=LOGIN_HINTS, code="unauthorized", headers=WWW_AUTHENTICATE
        )
    needed = required_scope(route)
    if not principal.scope.allows(needed):
        raise Forbidden(
            f"This needs a key with the '{needed.value}' scope; this key has '{principal.scope.value}'.",
            details={"required_scope": needed.value, "key_scope": principal.scope.value},
            suggestions=[
                f"Create one with `fastbrain keys create --workspace {principal.workspace_id} --scope {needed.value}`."
            ],
            code="insufficient_scope",
        )
    await rate.check_request(state, principal)
    connection.state.principal = principal
    bind_request_ids(connection, principal)


# Path parameters bound on the request's log lines (structlog contextvars), with the caller's workspace.
LOGGED_PATH_PARAMS = ("skill_id", "job_id", "adapter_id")


def bind_request_ids(connection: HTTPConnection, principal: Principal) -> None:
    """Every log line of this request (ours, and uvicorn's access line) carries its workspace and the
    skill, job or adapter its path names. The request runs in a task of its own, so nothing leaks
    into the next one."""
    params = connection.scope.get("path_params") or {}
    ids = {name: str(params[name]) for name in LOGGED_PATH_PARAMS if params.get(name) is not None}
    structlog.contextvars.bind_contextvars(workspace_id=principal.workspace_id, **ids)


class CredentialsBeforeBody:
    """A request with a body but no `Authorization` header at all is answered 401 before its
    body is read. FastAPI reads (and, for multipart, spools) a body before it runs any
    dependency, `authorize` included; without this an anonymous client could make the server
    parse uploads only to be refused. Every public path is a GET, so no route is needed here."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD")
            or any(name == b"authorization" for name, _ in scope.get("headers", ()))
        ):
            await self.app(scope, receive, send)
            return
        await discard_body(receive, self.max_bytes)  # bounded, so the client is still listening for the answer
        body = error_body("unauthorized", "A valid API key is required.", suggestions=LOGIN_HINTS)
        await error_response(scope.get("path", ""), 401, body, WWW_AUTHENTICATE)(scope, receive, send)


def principal_of(connection: HTTPConnection) -> Principal:
    principal: Principal | None = getattr(connection.state, "principal", None)
    if principal is None:  # a public route asked for workspace data: refuse rather than guess
        raise Unauthorized("A valid API key is required.", suggestions=LOGIN_HINTS, headers=WWW_AUTHENTICATE)
    return principal


def app_routes(app: FastAPI) -> list[APIRoute | APIWebSocketRoute]:
    """Every HTTP and WebSocket route of the app, included routers flattened (the route table
    `authorize` guards, the schema documents and the route-coverage test walks)."""
    routes = (context.original_route for context in iter_route_contexts(app.routes))
    return [route for route in routes if isinstance(route, APIRoute | APIWebSocketRoute)]


def document_security(app: FastAPI) -> None:
    """The schema says what `authorize` does: a bearer scheme on every operation but the
    public ones, and each operation's `x-required-scope` (clients and schemathesis read both)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`fb_...`) from `fastbrain keys create` or <data dir>/admin-key.",
        }
        for route in app_routes(app):
            operations = schema.get("paths", {}).get(route.path_format, {})
            for method in getattr(route, "methods", None) or ():
                operation = operations.get(method.lower())
                if operation is None:
                    continue
                if is_public(route):
                    operation["security"] = []
                else:
                    operation["security"] = [{"apiKey": []}]
                    operation[SCOPE_EXTRA] = required_scope(route).value
                    responses = operation.setdefault("responses", {})
                    for code, description in ACCESS_RESPONSES.items():
                        responses.setdefault(code, {"description": description})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
