"""The CLI's HTTP client of a running API: where it is, which key, and what its errors mean.

Every failure becomes a `CliError` carrying the exit code the user (or a script) sees:
1 for anything the server refused on its merits, 3 when the server cannot be reached or
refuses the key, so a script can tell "fix your request" from "fix your setup".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
# Short requests; a data report or an import waits on a worker and gets longer (see the callers).
TIMEOUT_SECONDS = 60.0


@dataclass
class CliError(Exception):
    """What to tell the user on stderr, and the exit code."""

    message: str
    suggestions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    exit_code: int = EXIT_FAILED

    def __str__(self) -> str:
        return self.message


def default_url() -> str:
    # FASTBRAIN_API_URL is what `skills import` read before this CLI; it still works.
    return os.environ.get("FASTBRAIN_URL") or os.environ.get("FASTBRAIN_API_URL") or DEFAULT_URL


def resolve_key(given: str | None) -> str | None:
    """--api-key, else FASTBRAIN_API_KEY, else the dev admin key `fastbrain dev` wrote under the data dir."""
    if given:
        return given
    from services.admin.commands import local_api_key

    return local_api_key()


def error_from_response(response: httpx.Response) -> CliError:
    """The server's `{"error": {code, message, details, suggestions}}` (or OpenAI's shape on /v1) as a CliError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return CliError(f"HTTP {response.status_code} from {response.request.url}: {response.text[:500]}")
    raw_details = error.get("details")
    details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
    problems = [str(p.get("message")) for p in details.get("problems") or [] if isinstance(p, dict)]
    refused_key = response.status_code in (401, 403)
    return CliError(
        message=str(error.get("message") or f"HTTP {response.status_code}"),
        suggestions=[str(s) for s in error.get("suggestions") or []],
        problems=problems,
        exit_code=EXIT_UNREACHABLE if refused_key else EXIT_FAILED,
    )


class Api:
    """A synchronous client: the CLI does one thing at a time, and rich draws from the same thread."""

    def __init__(self, url: str, key: str | None, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.http = httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def headers(self) -> dict[str, str]:
        if not self.key:
            raise CliError(
                "No API key: set FASTBRAIN_API_KEY or pass --api-key.",
                suggestions=["Create one on the server with `fastbrain keys create --workspace W --scope train`."],
                exit_code=EXIT_UNREACHABLE,
            )
        return {"Authorization": f"Bearer {self.key}"}

    def unreachable(self, exc: Exception) -> CliError:
        return CliError(
            f"cannot reach the Fast Brain API at {self.url} ({exc}); is it running?",
            suggestions=["Start it with `fastbrain dev` (./run.sh), or point --url / FASTBRAIN_URL at it."],
            exit_code=EXIT_UNREACHABLE,
        )

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response of a successful request; anything else raises a CliError."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CliError(f"the API at {self.url} did not answer in time ({exc}).") from exc
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(f"HTTP {response.status_code} from {path} is not JSON: {response.text[:300]}") from exc

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.json("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.json("POST", path, **kwargs)

    def ws_url(self, path: str) -> str:
        return ("wss://" + self.url[8:] if self.url.startswith("https://") else "ws://" + self.url[7:]) + path

    def close(self) -> None:
        self.http.close()
