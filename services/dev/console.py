"""The console of `fastbrain dev`: a short summary on the terminal, the full log in a file.

`fastbrain dev` runs the API, the worker and the inference engine as child processes that log JSON lines
(FASTBRAIN_LOG_FORMAT=json) into a pipe each; its own log lines (migrations) come here the same way, as
`dev`. Every line goes to the log file (`Settings.dev_log_file`, `<data dir>/logs/dev.log`; the previous
run's is kept as `dev.log.1`), one JSON object per line with `process` naming where it came from. A line
that was not JSON (a library's print, a crash's traceback) is kept as `{"process", "event", "raw": true}`,
its secrets masked like every log line's.

The terminal shows only:
- one line per job state change (`shared.logging.JOB_STATUS_EVENTS`): the skill, the job id and what
  matters at that point (examples and model when queued; version, held-out loss before and after and the
  time when completed; the error category and message when failed);
- warnings and errors, on one line each (a traceback's last line; the whole of it is in the file);
- what `fastbrain dev` prints itself (where the services are, the login link).
Never arq's health and cron lines, HTTP access lines or model loading chatter: those are in the file.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

from shared.logging import JOB_STATUS_EVENTS, mask_text

PROBLEM_LEVELS = ("warning", "error", "critical", "exception")
# Keys a warning's console line leaves out: they are on every line, or long (they stay in the file).
QUIET_KEYS = frozenset({"timestamp", "level", "logger", "event", "process", "exception", "traceback_tail", "raw"})
JOB_KEYS = frozenset({"job_id", "attempt", "skill_id", "workspace_id"})  # said once, at the end
MAX_VALUE_CHARS = 160
MAX_LINE_CHARS = 400
RECENT_LINES = 40


def _clock(timestamp: Any) -> str:
    """HH:MM:SS in local time, from the line's ISO timestamp (UTC); now when it has none."""
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        moment = datetime.now()
    return moment.astimezone().strftime("%H:%M:%S")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """`value` on one line (runs of whitespace and newlines become one space), at most `limit` characters."""
    return _cut(" ".join(str(value).split()), limit)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _completed(record: Mapping[str, Any]) -> list[str]:
    parts = []
    if record.get("version") is not None:
        parts.append(f"v{record['version']}")
    before, after = _number(record.get("eval_loss_before")), _number(record.get("eval_loss_after"))
    if before is not None and after is not None:
        change = f" ({(after - before) / before * 100:+.1f}%)" if before else ""
        parts.append(f"held-out loss {before:.3f} -> {after:.3f}{change}")
    elif (final := _number(record.get("final_loss"))) is not None:
        parts.append(f"final loss {final:.3f}")
    if (stars := _number(record.get("quality_stars"))) is not None:
        parts.append(f"{stars:.0f}/5 stars")
    if (seconds := _number(record.get("wall_seconds"))) is not None:
        parts.append(f"{seconds:.0f} s")
    if (cost := _number(record.get("cost_usd"))) is not None and cost > 0:
        parts.append(f"${cost:.2f}")
    if record.get("activated") is False:
        parts.append("not activated (worse than the active version)")
    return parts


def _details(status: str, record: Mapping[str, Any]) -> list[str]:
    if status == "queued" and record.get("examples") is not None:
        minutes = _number(record.get("estimated_minutes"))
        estimate = ""
        if minutes is not None:
            estimate = f", ~{minutes:.0f} min" if minutes >= 1 else f", ~{minutes * 60:.0f} s"
        return [f"{record['examples']} examples on {record.get('base_model')} ({record.get('preset')}){estimate}"]
    if status == "queued":  # requeued: a new attempt will resume it
        nxt = f"; attempt {record['next_attempt']} next" if record.get("next_attempt") else ""
        return [f"{_short(record.get('message') or 'requeued')}{nxt}"]
    if status == "running":
        return [f"attempt {record.get('attempt', 1)} on {record.get('backend', 'local')}"]
    if status == "completed":
        return _completed(record)
    if status == "failed":
        category = record.get("category") or "INTERNAL"
        message = record.get("user_message") or record.get("message")
        technical = record.get("message") if record.get("user_message") else None
        text = f"{category}: {_short(message)}" if message else str(category)
        return [text + (f" ({_short(technical)})" if technical and technical != message else "")]
    if status == "cancelled" and record.get("before_start"):
        return ["before it started"]
    return []


def job_line(record: Mapping[str, Any]) -> str:
    """The console line of a job state change."""
    event = str(record.get("event"))
    status = str(record.get("status") or event.removeprefix("job_"))
    label = "requeued" if event == "job_requeued" else status
    skill_id, name = record.get("skill_id"), record.get("skill_name")
    skill = _short(f"{name} ({skill_id})" if name and skill_id and name != skill_id else (name or skill_id or "?"))
    head = f"{_clock(record.get('timestamp'))}  {label:<9}  {skill}  job {record.get('job_id', '?')}"
    details = _details(status, record)
    return _cut(f"{head}  {', '.join(details)}" if details else head, MAX_LINE_CHARS)


def problem_line(process: str, record: Mapping[str, Any]) -> str:
    """The console line of a warning or an error: what happened, its fields, then which job (if any)."""
    level = str(record.get("level", "warning")).upper()
    event = str(record.get("event", "")).strip().splitlines() or [""]
    what = event[0]
    if what == "trainer_log" and record.get("message"):  # a line the trainer wrote, relayed by the worker
        what, process = str(record["message"]), f"{process} (trainer)"
    skip = QUIET_KEYS | JOB_KEYS | ({"message"} if process.endswith("(trainer)") else set())
    fields = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in skip and v is not None)
    line = f"{_clock(record.get('timestamp'))}  {level:<7}  {process}: {_short(what)}"
    if fields:
        line += f"  {fields}"
    if record.get("job_id"):
        line += f"  (job {record['job_id']}" + (f", skill {record['skill_id']})" if record.get("skill_id") else ")")
    traceback = [ln for ln in str(record.get("exception") or "\n".join(event[1:])).splitlines() if ln.strip()]
    if traceback:
        line += f"  [{_short(traceback[-1])}; traceback in the log file]"
    return _cut(line, MAX_LINE_CHARS * 2)


def render(process: str, record: Mapping[str, Any]) -> str | None:
    """What the console shows for one JSON log line of `process`, or None (the line goes to the file only)."""
    if str(record.get("event")) in JOB_STATUS_EVENTS:
        return job_line(record)
    if str(record.get("level", "")).lower() in PROBLEM_LEVELS:
        return problem_line(process, record)
    return None


def _parse(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class _LineWriter(io.TextIOBase):
    """A text stream that hands each complete line to the console (for the supervisor's own logging)."""

    def __init__(self, console: DevConsole, process: str) -> None:
        self._console = console
        self._process = process
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._console.feed(self._process, line)
        return len(text)


class DevConsole:
    """Lines from the dev processes: all into `log_file`, the summary onto `out` (default: stdout)."""

    def __init__(self, log_file: Path, out: TextIO | None = None) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        if log_file.exists():
            log_file.replace(log_file.with_name(log_file.name + ".1"))
        self.log_file = log_file
        self._file = log_file.open("a", encoding="utf-8")
        self._out = out
        self._lock = threading.Lock()
        self._recent: dict[str, deque[str]] = {}
        self._readers: list[threading.Thread] = []
        self._stopping = False

    def stopping(self) -> None:
        """The processes are being stopped: from now on the console shows job state changes only (a job
        handed back by the stopping worker), not the tracebacks of tasks cancelled on the way out."""
        self._stopping = True

    def feed(self, process: str, line: str) -> None:
        """One line of `process`'s output. Safe from any thread."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        record = _parse(line)
        if record is None:
            text = mask_text(line)
            stored: dict[str, Any] = {"process": process, "event": text, "raw": True}
            shown = None
        else:
            text = str(record.get("event", line))
            stored = {"process": process, **record}
            shown = render(process, record)
            if self._stopping and str(record.get("event")) not in JOB_STATUS_EVENTS:
                shown = None
        with self._lock:
            if self._file.closed:  # a line after `close` (the supervisor's last words): the terminal only
                if shown is not None:
                    print(shown, file=self._out or sys.stdout, flush=True)
                return
            self._file.write(json.dumps(stored, ensure_ascii=False, default=str) + "\n")
            self._file.flush()
            self._recent.setdefault(process, deque(maxlen=RECENT_LINES)).append(_short(text, MAX_LINE_CHARS))
            if shown is not None:
                print(shown, file=self._out or sys.stdout, flush=True)

    def follow(self, process: str, stream: IO[bytes]) -> None:
        """Read `stream` (a child's stdout and stderr) line by line on a thread, until it closes."""

        def read() -> None:
            with stream:
                for raw in iter(stream.readline, b""):
                    self.feed(process, raw.decode("utf-8", errors="replace"))

        reader = threading.Thread(target=read, name=f"dev-console-{process}", daemon=True)
        reader.start()
        self._readers.append(reader)

    def writer(self, process: str) -> TextIO:
        """A stream whose lines are fed as `process`'s (give it to `configure_logging`)."""
        return _LineWriter(self, process)  # type: ignore[return-value]

    def recent(self, process: str) -> list[str]:
        """The last lines `process` wrote (what a crash report shows)."""
        with self._lock:
            return list(self._recent.get(process, ()))

    def close(self, timeout: float = 5.0) -> None:
        """Wait for the readers to reach the end of their streams (the children exited), then close the file."""
        for reader in self._readers:
            reader.join(timeout)
        with self._lock:
            self._file.close()
