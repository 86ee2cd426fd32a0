"""Follow a job to its end (`train --follow`, `jobs logs --follow`) and turn the outcome into an exit code."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from services.cli.client import EXIT_FAILED, Api
from services.cli.output import err, out
from services.cli.progress import TrainingView, summary
from services.cli.stream import TERMINAL_STATUSES, Event, Follower

EXIT_INTERRUPTED = 130
SETTLE_SECONDS = 15.0


def job_status(api: Api, job_id: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"/api/training-status/{job_id}", params={"metrics_limit": 0})
    return status


def outcome_code(status: dict[str, Any]) -> int:
    return 0 if status.get("status") == "completed" else EXIT_FAILED


def json_line(event: Event) -> None:
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def event_line(event: Event) -> str:
    """One event as a log line: `#seq time type details`."""
    kind = event.get("type")
    head = f"#{event.get('seq')} {str(event.get('ts', ''))[11:19]} {kind:<8}"
    if kind == "progress":
        return f"{head} step {event.get('step')}/{event.get('total_steps')} loss {event.get('loss')}"
    if kind == "log":
        return f"{head} {event.get('level')}: {event.get('message')}"
    if kind == "status":
        return f"{head} {event.get('status')}" + (f" ({event['message']})" if event.get("message") else "")
    if kind == "error":
        return f"{head} {event.get('category')}: {event.get('user_message') or event.get('message')}"
    if kind == "complete":
        return f"{head} adapter v{event.get('adapter_version')} final loss {event.get('final_loss')}"
    return f"{head} {json.dumps(event, default=str)}"


def follow(api: Api, job_id: str, *, as_json: bool = False, plain: bool = False, after_seq: int = 0) -> int:
    """Stream the job's events until it ends; print them (a bar, plain log lines or JSON lines) and a summary.

    Returns the exit code: 0 when the job completed, 1 when it failed or was cancelled."""
    final_error: Event | None = None

    def notice(message: str) -> None:
        err.print(f"stream: {message}", style="dim", markup=False)

    follower = Follower(api, job_id, after_seq=after_seq, on_reconnect=notice)
    try:
        if as_json or plain:
            for event in follower.events():
                final_error = _final_error(event) or final_error
                if as_json:
                    json_line(event)
                else:
                    out.print(event_line(event), markup=False)
        else:
            with TrainingView(job_id) as view:
                follower.on_reconnect = lambda message: view.note(f"stream: {message}", "yellow")
                for event in follower.events():
                    final_error = _final_error(event) or final_error
                    view.show(event)
    except KeyboardInterrupt:
        err.print(f"\nStopped following; the job goes on (fastbrain jobs status {job_id}).", markup=False)
        return EXIT_INTERRUPTED
    status = final_status(api, job_id)
    if not as_json:
        summary(status, final_error)
    return outcome_code(status)


def _final_error(event: Event) -> Event | None:
    return event if event.get("type") == "error" and event.get("final") is not False else None


def final_status(api: Api, job_id: str) -> dict[str, Any]:
    """The job's status once it has ended: the final event can arrive a moment before the row says so."""
    deadline = time.monotonic() + SETTLE_SECONDS
    status = job_status(api, job_id)
    while status.get("status") not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(0.3)
        status = job_status(api, job_id)
    return status
