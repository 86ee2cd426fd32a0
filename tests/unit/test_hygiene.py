"""Hygiene: no tracebacks to clients, an allow-listed trainer environment, secrets masked in logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog

from services.worker.backends.local import LocalBackend, trainer_env
from shared.errors import describe
from shared.logging import MASK, SecretMaskingFilter, configure_logging, is_secret_key, mask_secrets, mask_text
from shared.schemas.events import PRIVATE_ERROR_FIELDS, public_error_details, public_event
from shared.settings import Settings
from tests.unit.conftest import tiny_spec

SECRET_URL = "postgresql+asyncpg://fastbrain:hunter2-secret@db.internal:5432/fastbrain"


# -- no tracebacks to clients ---------------------------------------------------------------------


def _failure() -> dict[str, Any]:
    try:
        raise ConnectionRefusedError("connect call failed")
    except ConnectionRefusedError as exc:
        described = describe(exc)
    return {**described, "attempts": [{"category": "NETWORK_ERROR", "error": "x", "traceback_tail": "tb"}]}


def test_public_error_details_drops_traceback_and_exception_type_keeping_the_rest() -> None:
    details = _failure()
    assert details["traceback_tail"] and details["exception_type"] == "ConnectionRefusedError"
    public = public_error_details(details)
    assert public is not None
    for field in PRIVATE_ERROR_FIELDS:
        assert field not in public and field not in public["attempts"][0]
    assert public["message"] == details["message"] and public["suggestions"] == details["suggestions"]
    assert public["attempts"][0]["error"] == "x"
    assert details["traceback_tail"] and details["attempts"][0]["traceback_tail"] == "tb", "input left as it was"
    assert public_error_details(None) is None


def test_public_event_strips_error_events_and_passes_others_unchanged() -> None:
    error = {"job_id": "j", "seq": 3, "ts": "t", "type": "error", "final": True, **_failure()}
    public = public_event(error)
    assert "Traceback" not in json.dumps(public) and "exception_type" not in public
    assert public["seq"] == 3 and public["category"] == error["category"]
    progress = {"job_id": "j", "seq": 1, "type": "progress", "step": 1, "loss": 2.0}
    assert public_event(progress) == progress


# -- the trainer's environment --------------------------------------------------------------------


def test_trainer_env_is_allow_listed() -> None:
    env = trainer_env(
        {
            "PATH": "/usr/bin",
            "HOME": "/home/x",
            "LC_ALL": "C.UTF-8",
            "HF_HOME": "/cache/hf",
            "OMP_NUM_THREADS": "2",
            "CUDA_VISIBLE_DEVICES": "0",
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
            "FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS": "70",
            "FASTBRAIN_TRAIN_DEVICE": "cpu",
            "FASTBRAIN_DATABASE_URL": SECRET_URL,
            "FASTBRAIN_REDIS_URL": "redis://:pw@redis:6379/0",
            "MODAL_TOKEN_ID": "ak-123",
            "MODAL_TOKEN_SECRET": "as-456",
            "AWS_SECRET_ACCESS_KEY": "x",
            "DATABASE_URL": SECRET_URL,
            "FASTBRAIN_API_KEY": "k",
        }
    )
    assert set(env) == {
        "PATH",
        "HOME",
        "LC_ALL",
        "HF_HOME",
        "OMP_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "PYTORCH_CUDA_ALLOC_CONF",
        "FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS",
        "FASTBRAIN_TRAIN_DEVICE",
        "PYTHONUNBUFFERED",
        "TOKENIZERS_PARALLELISM",
    }


FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({"type": "log", "message": json.dumps(dict(os.environ))}), flush=True)
    print(json.dumps({"type": "complete", "final_loss": 1.0}), flush=True)
    """
)


async def test_trainer_child_gets_no_database_url_or_modal_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTBRAIN_DATABASE_URL", SECRET_URL)
    monkeypatch.setenv("FASTBRAIN_REDIS_URL", "redis://:redis-secret@redis:6379/0")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-modal-id")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-modal-secret")
    monkeypatch.setenv("FASTBRAIN_TEST_STEP_DELAY_SECONDS", "0.25")  # a fault hook: passed on
    script = tmp_path / "env_trainer.py"
    script.write_text(FAKE_TRAINER)
    backend = LocalBackend(Settings(data_dir=tmp_path), trainer_command=(sys.executable, str(script)))
    spec = tiny_spec(tmp_path, job_id="job-env", skill_id="env-skill")

    async def collect() -> list[dict[str, Any]]:
        return [payload async for payload in backend.train(spec)]

    payloads = await asyncio.wait_for(collect(), 30)
    assert [p["type"] for p in payloads] == ["log", "complete"]
    child_env = json.loads(payloads[0]["message"])
    secrets = {"FASTBRAIN_DATABASE_URL", "FASTBRAIN_REDIS_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"}
    assert not secrets & set(child_env)
    assert not any(k.startswith("MODAL_") for k in child_env)
    text = json.dumps(child_env)
    assert "hunter2-secret" not in text and "as-modal-secret" not in text and "redis-secret" not in text
    assert child_env["FASTBRAIN_TEST_STEP_DELAY_SECONDS"] == "0.25" and child_env["PYTHONUNBUFFERED"] == "1"
    assert "PATH" in child_env


# -- secrets never reach logs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SECRET_URL, "postgresql+asyncpg://fastbrain:***@db.internal:5432/fastbrain"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("connect to postgresql://u:p%40ss@h/db failed", "connect to postgresql://u:***@h/db failed"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("https://example.com/a?b=c:d@e", "https://example.com/a?b=c:d@e"),
        ("no url here: a@b", "no url here: a@b"),
        (f'"GET /api/skills?api_key=fb_{"x" * 43} HTTP/1.1" 401', '"GET /api/skills?api_key=fb_*** HTTP/1.1" 401'),
        ("fb_short and fb_ alone", "fb_short and fb_ alone"),
        ("< authorization: Bearer abc.def", "< authorization: Bearer ***"),
        (
            "< sec-websocket-protocol: fastbrain, fastbrain.ticket.Xy-z_9",
            "< sec-websocket-protocol: fastbrain, fastbrain.ticket.***",
        ),
    ],
)
def test_mask_text(text: str, expected: str) -> None:
    assert mask_text(text) == expected


def test_secret_key_names() -> None:
    for key in ("password", "db_password", "MODAL_TOKEN_SECRET", "access_token", "api_key", "X-Api-Key"):
        assert is_secret_key(key), key
    for key in ("Authorization", "client_secret", "token", "credentials"):
        assert is_secret_key(key), key
    for key in ("tokens_seen", "tokens_per_second", "max_new_tokens", "tokenizer", "event", "job_id", "message"):
        assert not is_secret_key(key), key


def test_mask_secrets_processor() -> None:
    event = mask_secrets(
        None,
        "info",
        {
            "event": f"connecting to {SECRET_URL}",
            "database_url": SECRET_URL,
            "token": "abc",
            "headers": {"Authorization": "Bearer xyz", "Accept": "*/*"},
            "urls": [SECRET_URL],
            "tokens_seen": 1234,
            "error": ConnectionError(f"cannot reach {SECRET_URL}"),
        },
    )
    assert "hunter2" not in json.dumps(event, default=str)
    assert event["token"] == MASK and event["headers"] == {"Authorization": MASK, "Accept": "*/*"}
    assert event["database_url"].endswith(":***@db.internal:5432/fastbrain")
    assert event["tokens_seen"] == 1234 and event["event"].startswith("connecting to postgresql")


def test_configured_structlog_and_stdlib_logging_mask_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_lines=True)
    try:
        structlog.get_logger("t").info("settings_loaded", database_url=SECRET_URL, modal_token_secret="as-456")
        err = capsys.readouterr().err
        assert "hunter2" not in err and "as-456" not in err and "settings_loaded" in err
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.addFilter(SecretMaskingFilter())
        stdlib = logging.getLogger("hygiene-test")
        stdlib.addHandler(handler)
        stdlib.warning("engine ready: %s", SECRET_URL)
        stdlib.removeHandler(handler)
        assert "hunter2" not in stream.getvalue() and "fastbrain:***@db.internal" in stream.getvalue()
    finally:
        structlog.reset_defaults()
