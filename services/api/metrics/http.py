"""Request counts and durations by method, route template and status code, for every HTTP request."""

from __future__ import annotations

import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics.instruments import HTTP_DURATION, HTTP_REQUESTS

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests that no route took: 404s, and bodies `CredentialsBeforeBody` refused before routing.
UNMATCHED: Final = "unmatched"


def route_template(scope: Scope, root_path_before: str) -> str:
    """The template the router matched (`/api/skills/{skill_id}`), after the app has run."""
    template = getattr(scope.get("route"), "path_format", None)
    if isinstance(template, str):
        return template
    # A Mount (the dashboard's assets) sets no route, only extends root_path by its own path.
    root_path = str(scope.get("root_path", ""))
    if root_path != root_path_before and root_path.startswith(root_path_before):
        return f"{root_path[len(root_path_before) :]}/{{path}}"
    return UNMATCHED


class HttpMetrics:
    """Plain ASGI, outermost: it also counts what the other middlewares answer themselves
    (401 for an anonymous body, 413), and leaves WebSockets to `fastbrain_websockets_open`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = str(scope.get("root_path", ""))
        status = 500  # what the client gets when the app raises before it starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (method, route_template(scope, root_path), str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_DURATION.labels(*labels).observe(time.perf_counter() - started)
