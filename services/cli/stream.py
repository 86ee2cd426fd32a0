"""Follow a job's events over the WebSocket, across dropped connections, each event once.

The same protocol as the dashboard (services/api/dashboard/src/stream.js): reconnect with
`?after_seq=<last seq seen>` and drop any seq at or below it, so the caller sees every
event exactly once and in order. A program may put its key on the WebSocket itself
(`Authorization: Bearer`), so no stream ticket is needed (those exist for browsers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from services.cli.client import EXIT_FAILED, EXIT_UNREACHABLE, Api, CliError

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
CLOSE_NORMAL = 1000
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
# Consecutive failed connects before giving up (backoff 0.5 s doubling to 5 s: about a minute).
MAX_FAILURES = 15
OPEN_TIMEOUT_SECONDS = 10.0
# The server PINGs every 5 s; our own PINGs find a half-open connection (laptop slept, NAT dropped it).
PING_INTERVAL_SECONDS = 10.0

Event = dict[str, Any]


def is_terminal(event: Event) -> bool:
    kind = event.get("type")
    if kind == "complete":
        return True
    if kind == "error":
        return event.get("final") is not False  # a recoverable error: the job is queued again
    return kind == "status" and event.get("status") in TERMINAL_STATUSES


def backoff(retry: int, at_least: float = 0.0) -> float:
    return max(at_least, min(5.0, 0.25 * 2.0 ** min(retry, 5)))


class Follower:
    """Iterate `events()`; it ends after the job's final event (or when the server ends the stream)."""

    def __init__(
        self,
        api: Api,
        job_id: str,
        after_seq: int = 0,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.job_id = job_id
        self.last_seq = after_seq
        self.on_reconnect = on_reconnect or (lambda _message: None)
        self.finished = False

    def events(self) -> Iterator[Event]:
        failures = 0
        while True:
            refusal: Event | None = None
            url = self.api.ws_url(f"/api/training-stream/{self.job_id}?after_seq={self.last_seq}")
            try:
                with connect(
                    url,
                    additional_headers=self.api.headers(),
                    open_timeout=OPEN_TIMEOUT_SECONDS,
                    ping_interval=PING_INTERVAL_SECONDS,
                    ping_timeout=PING_INTERVAL_SECONDS,
                    close_timeout=2,
                ) as socket:
                    for raw in socket:
                        event = json.loads(raw)
                        if event.get("seq") is None:
                            if event.get("type") == "error":
                                refusal = event  # about this connection (refused, unknown job), not the job
                            continue
                        if event["seq"] <= self.last_seq:
                            continue
                        self.last_seq = event["seq"]
                        failures = 0  # events flow: the next drop starts the backoff afresh
                        yield event
                        if is_terminal(event):
                            self.finished = True
                            return
                    code = socket.close_code
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise CliError(f"the server refused the key (HTTP {status}).", exit_code=EXIT_UNREACHABLE) from exc
                code = None if status != 429 else CLOSE_TOO_MANY
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                failures += 1
                if failures >= MAX_FAILURES:
                    raise self.api.unreachable(exc) from exc
                self.on_reconnect(f"cannot connect to the stream ({exc}); retrying")
                time.sleep(backoff(failures))
                continue
            if code == CLOSE_NORMAL:
                return  # the server ended the stream: the job is over (its final event came before)
            message = str((refusal or {}).get("message") or f"the stream was closed (code {code})")
            if code in (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN):
                raise CliError(message, exit_code=EXIT_UNREACHABLE)
            if code is not None and code >= 4000 and code != CLOSE_TOO_MANY:
                raise CliError(message, exit_code=EXIT_FAILED)  # unknown job, bad position: it never will stream
            failures += 1
            if failures >= MAX_FAILURES:
                raise CliError(f"lost the event stream: {message}", exit_code=EXIT_UNREACHABLE)
            self.on_reconnect(f"connection lost ({message}); resuming after event {self.last_seq}")
            time.sleep(backoff(failures, 5.0 if code == CLOSE_TOO_MANY else 0.0))
