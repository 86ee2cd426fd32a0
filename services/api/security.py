"""Security headers on every HTTP response, and the Content-Security-Policy the dashboard runs under.

The dashboard is served under `DASHBOARD_CSP`: its built index.html has no inline scripts or
styles (Vite emits `<script type="module" src>` and `<link rel="stylesheet">`), and style
attributes set from JavaScript (uPlot, Preact) are not governed by `style-src`. `/docs`
(Swagger UI) starts from one inline script, so it gets `docs_csp(html)`, which allows exactly
that script by its hash. Both were checked in headless Chromium: no violation reported.
JSON responses carry the dashboard policy too: it costs nothing, and a response rendered by
mistake as HTML runs no script. CORS is off: no CORS middleware is installed, so browsers
refuse cross-origin reads (tests/integration/test_hygiene_api.py).
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP_HEADER = "Content-Security-Policy"
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: str) -> str:
    """The dashboard policy with the page's own inline scripts allowed by their hash, for the
    Swagger UI page whose `html` this is (its styles are files, or set from JavaScript)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return DASHBOARD_CSP.replace("script-src 'self'", f"script-src 'self'{hashes}")


class SecurityHeadersMiddleware:
    """Adds `SECURITY_HEADERS` and, unless the response set its own, `DASHBOARD_CSP` (plain ASGI:
    it leaves streaming and WebSocket traffic alone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault(CSP_HEADER, DASHBOARD_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)
