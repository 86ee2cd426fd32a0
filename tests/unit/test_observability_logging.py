"""Log formats, the ids on a job's lines, arq's periodic lines, and the quiet dev console.

Lines are produced by the real setup (`shared.logging.configure_logging`) through the real loggers:
structlog's, and the standard library's under the names and message formats arq and uvicorn use.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from services.dev.console import DevConsole, render
from shared.logging import configure_logging, reset_logging
from shared.settings import Settings

SECRET_URL = "postgresql://fastbrain:hunter2@db.internal:5432/fastbrain"
API_KEY = "fb_" + "k" * 43
JOB_ID = "3f2a9c1e-8b7d-4c56-9e01-23456789abcd"
IDS = {"job_id": JOB_ID, "attempt": 1, "skill_id": "molasses", "workspace_id": "acme"}
arq_log = logging.getLogger("arq.worker")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    reset_logging()


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object


def _arq_noise() -> None:
    """What an idle arq worker with the reaper cron logs, every few seconds, in arq's own formats."""
    arq_log.info("recording health: %s", "Dec-02 13:32:06 j_complete=1 j_failed=0 j_retried=0 j_ongoing=0 queued=0")
    arq_log.info("%6.2fs → %s(%s)%s", 0.51, "cron:reap_stale_jobs", "", "")
    arq_log.info("%6.2fs ← %s ● %s", 0.08, "cron:reap_stale_jobs", 0)


def test_log_format_setting_and_its_old_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTBRAIN_LOG_FORMAT", raising=False)
    monkeypatch.delenv("FASTBRAIN_LOG_JSON", raising=False)
    assert Settings().log_format == "console" and not Settings().log_json
    monkeypatch.setenv("FASTBRAIN_LOG_FORMAT", "json")
    assert Settings().log_json  # what the commands pass to configure_logging
    monkeypatch.delenv("FASTBRAIN_LOG_FORMAT")
    monkeypatch.setenv("FASTBRAIN_LOG_JSON", "true")
    assert Settings().log_format == "json"
    monkeypatch.setenv("FASTBRAIN_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError):
        Settings()


def test_json_lines_carry_bound_ids_on_every_line_and_mask_secrets(logs: io.StringIO) -> None:
    configure_logging("INFO", json_lines=True, stream=logs)
    log = structlog.get_logger("services.worker.attempt")
    with structlog.contextvars.bound_contextvars(**IDS):
        log.info("job_running", skill_name="Molasses")
        log.info("trainer_log", message=f"connecting to {SECRET_URL}")
        arq_log.info("%6.2fs → %s(%s)%s", 0.4, f"train:{JOB_ID}:1:run_training", f"'{JOB_ID}'", "")
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/?k={API_KEY}", "1.1", 200
        )
        try:
            raise ConnectionError(f"cannot reach {SECRET_URL}")
        except ConnectionError:
            log.exception("watch_failed")
    log.info("worker_ready")
    records = _records(logs)
    assert [r["event"] for r in records][:2] == ["job_running", "trainer_log"]
    for record in records[:-1]:
        assert {k: record[k] for k in IDS} == IDS, record
        assert {"timestamp", "level", "logger"} <= record.keys()
    assert "job_id" not in records[-1], "unbound after the job"
    assert records[2]["logger"] == "arq.worker" and records[3]["logger"] == "uvicorn.access"
    assert records[4]["level"] == "error" and "ConnectionError" in str(records[4]["exception"])
    text = logs.getvalue()
    assert "hunter2" not in text and API_KEY not in text
    assert "fastbrain:***@db.internal" in text and "fb_***" in text


def test_console_tracebacks_are_plain_and_masked(logs: io.StringIO) -> None:
    configure_logging("INFO", json_lines=False, stream=logs)
    database_url = SECRET_URL  # a local a rich traceback would print
    try:
        raise ConnectionError(f"cannot reach {database_url}")
    except ConnectionError:
        structlog.get_logger("t").exception("watch_failed", job_id=JOB_ID)
    text = logs.getvalue()
    assert "watch_failed" in text and f"job_id={JOB_ID}" in text and "Traceback (most recent call last)" in text
    assert "hunter2" not in text and "locals" not in text


@pytest.mark.parametrize("json_lines", [True, False])
def test_arq_health_and_reaper_lines_are_debug_only(logs: io.StringIO, json_lines: bool) -> None:
    configure_logging("INFO", json_lines=json_lines, stream=logs)
    arq_log.info("Starting worker for %d functions: %s", 2, "run_training, reap_stale_jobs")
    _arq_noise()
    arq_log.info("%6.2fs ← %s ● %s", 3.2, f"train:{JOB_ID}:1:run_training", "'completed'")
    text = logs.getvalue()
    assert "recording health" not in text and "reap_stale_jobs(" not in text and "reap_stale_jobs ●" not in text
    assert "Starting worker for 2 functions" in text and "run_training" in text
    configure_logging("DEBUG", json_lines=json_lines, stream=logs)
    _arq_noise()
    assert "recording health" in logs.getvalue() and "reap_stale_jobs(" in logs.getvalue()


def _job_lines(log: structlog.typing.FilteringBoundLogger) -> None:
    """The state changes of one job, as the API and the worker log them."""
    with structlog.contextvars.bound_contextvars(**IDS):
        log.info(
            "job_queued",
            status="queued",
            skill_name="Molasses Master",
            examples=24,
            base_model="tiny-random",
            preset="quick",
            estimated_minutes=0.7,
        )
        log.info("job_running", status="running", skill_name="Molasses Master", backend="local")
        log.info("trainer_log", message="Training started: 6 steps")
        log.warning("trainer_log", message="Loss spiked at step 4")
        log.info(
            "job_completed",
            status="completed",
            skill_name="Molasses Master",
            version=2,
            eval_loss_before=2.31,
            eval_loss_after=1.02,
            improvement_pct=55.8,
            quality_stars=4,
            wall_seconds=42.2,
            cost_usd=0.0,
            activated=True,
        )


def test_dev_console_shows_job_changes_and_warnings_only(tmp_path: Path, logs: io.StringIO) -> None:
    out = io.StringIO()
    console = DevConsole(tmp_path / "logs" / "dev.log", out=out)
    configure_logging("DEBUG", json_lines=True, stream=console.writer("worker"))  # DEBUG: arq's noise is logged
    for _ in range(3):
        _arq_noise()
    logging.getLogger("uvicorn.access").info('%s - "GET /api/health HTTP/1.1" %d', "127.0.0.1:1", 200)
    _job_lines(structlog.get_logger("services.worker.attempt"))
    with structlog.contextvars.bound_contextvars(**IDS):
        structlog.get_logger("services.worker.completion").warning(
            "job_failed",
            status="failed",
            skill_name="Molasses Master",
            category="CUDA_OOM",
            user_message="The GPU ran out of memory.",
            message="CUDA out of memory. Tried to allocate 2.00 GiB",
            traceback_tail="Traceback ...\n" * 30,
        )
    console.feed("engine", f"Traceback (most recent call last): cannot reach {SECRET_URL}")  # not JSON
    console.close()

    shown = out.getvalue().splitlines()
    print("\n".join(shown))
    assert len(shown) == 5, shown
    queued, running, warning, completed, failed = shown
    assert "queued" in queued and f"Molasses Master (molasses)  job {JOB_ID}" in queued
    assert "24 examples on tiny-random (quick), ~42 s" in queued
    assert "running" in running and "attempt 1 on local" in running
    assert "WARNING  worker (trainer): Loss spiked at step 4  (job " in warning and warning.endswith(
        ", skill molasses)"
    )
    assert "completed" in completed and "v2, held-out loss 2.310 -> 1.020 (-55.8%), 4/5 stars, 42 s" in completed
    assert "failed" in failed and "CUDA_OOM: The GPU ran out of memory. (CUDA out of memory." in failed
    assert "Traceback" not in failed, "the traceback stays in the file"
    joined = out.getvalue()
    assert "recording health" not in joined and "reap_stale_jobs" not in joined and "GET /api/health" not in joined

    stored = [json.loads(line) for line in (tmp_path / "logs" / "dev.log").read_text().splitlines()]
    assert sum("recording health" in str(r["event"]) for r in stored) == 3, "the file keeps what was logged"
    assert all(r["process"] in {"worker", "engine"} for r in stored)
    assert stored[-1] == {"process": "engine", "event": stored[-1]["event"], "raw": True}
    assert "hunter2" not in (tmp_path / "logs" / "dev.log").read_text()
    assert console.recent("engine")[-1].startswith("Traceback")


def test_a_new_dev_run_keeps_the_last_log(tmp_path: Path) -> None:
    path = tmp_path / "dev.log"
    path.write_text('{"event": "earlier run"}\n')
    DevConsole(path, out=io.StringIO()).close()
    assert "earlier run" in (tmp_path / "dev.log.1").read_text() and path.read_text() == ""


def test_render_leaves_info_lines_to_the_file() -> None:
    assert (
        render("api", {"event": "127.0.0.1 GET /api/skills 200", "level": "info", "logger": "uvicorn.access"}) is None
    )
    assert render("worker", {"event": "mlflow_run_started", "level": "info"}) is None
    line = render("worker", {"event": "job_cancelled", "status": "cancelled", "skill_id": "s", "job_id": JOB_ID})
    assert line is not None and "cancelled" in line and f"s  job {JOB_ID}" in line
    requeued = {"event": "job_requeued", "status": "queued", "skill_id": "s", "job_id": JOB_ID, "next_attempt": 2}
    assert "requeued" in str(render("worker", {**requeued, "message": "Worker stopped; the job will resume"}))
