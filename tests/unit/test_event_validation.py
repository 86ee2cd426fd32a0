"""Trainer payloads are checked at the worker's boundary: valid ones pass unchanged, malformed ones become INTERNAL."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.worker.backends.local import LocalBackend
from services.worker.backends.modal import ModalBackend
from shared.errors import DataFormatError, describe
from shared.schemas.events import MALFORMED_MESSAGE_CHARS, check_trainer_payload
from shared.settings import Settings
from tests.unit.conftest import tiny_spec

# What services/gpu/trainer.py and modal_app.py really send (same fields, same value types).
PROGRESS = {
    "type": "progress",
    "step": 3,
    "total_steps": 10,
    "epoch": 0.3,
    "total_epochs": 1,
    "loss": 2.5,
    "learning_rate": 1.9e-4,
    "grad_norm": None,
    "tokens_per_second": 812.4,
    "eta_seconds": 4.2,
    "progress": 30.0,
    "gpu_memory_used_gb": None,
    "tokens_seen": 2048,
    "elapsed_seconds": 2.52,
    "eval_loss": 2.61,
}
LOG = {"type": "log", "level": "warning", "message": "2 examples are longer than max_seq_length"}
COMPLETE = {
    "type": "complete",
    "final_loss": 1.2,
    "initial_loss": 2.9,
    "training_time_seconds": 12.5,
    "adapter_path": "/data/staging/job-1",
    "steps": 10,
    "tokens_per_second": 801.0,
    "training_path": "trl",
    "peak_gpu_memory_gb": None,
    "eval_examples": 0,
    "eval_loss_before": None,
    "eval_loss_after": None,
    "improvement_pct": None,
}
TRAINER_PAYLOADS = [
    PROGRESS,
    {**PROGRESS, "loss": float("nan"), "progress": 100},  # a NaN loss is a measurement, not a malformed event
    LOG,
    COMPLETE,
    {"type": "error", **describe(DataFormatError("invalid format: no conversations"))},
]
REMOTE_PAYLOADS = [
    {"type": "remote_call", "function_call_id": "fc-123", "gpu": "A10G"},
    {"type": "remote_call", "function_call_id": None, "gpu": "A10G"},  # `.local()` has no call id
    {"type": "adapter_file", "name": "adapter_model.safetensors", "offset": 0, "data": b"\x00" * 64, "last": True},
    {**COMPLETE, "adapter_ref": "skill/jobs/job-1-a1", "gpu_seconds": 31.2},
    {"type": "error", **describe(RuntimeError("boom")), "gpu_seconds": 3.0},
]

MALFORMED: list[tuple[object, str]] = [
    ([1, 2], "expected a JSON object, got list"),
    ("progress", "expected a JSON object, got str"),
    (42, "expected a JSON object, got int"),
    (None, "expected a JSON object, got NoneType"),
    ({"message": "no type"}, "no event type"),
    ({"type": "telemetry", "cpu": 1}, "unknown event type 'telemetry'"),
    ({"type": "status", "status": "completed"}, "unknown event type 'status'"),  # the worker's own, not a trainer's
    ({"type": "remote_call", "function_call_id": "fc"}, "unknown event type 'remote_call'"),  # Modal only
    ({**PROGRESS, "step": "3"}, "progress.step"),
    ({**PROGRESS, "total_epochs": True}, "progress.total_epochs"),
    ({**PROGRESS, "progress": 250.0}, "progress.progress"),
    ({k: v for k, v in PROGRESS.items() if k != "total_steps"}, "progress.total_steps"),
    ({**LOG, "level": "loud"}, "log.level"),
    ({**LOG, "message": {"nested": "blob"}}, "log.message"),
    ({**COMPLETE, "final_loss": "low"}, "complete.final_loss"),
    ({"type": "error", "category": "SOMETHING", "message": "x"}, "error.category"),
    ({"type": "error", "category": "INTERNAL"}, "error.message"),
    ({"type": "error", "category": "INTERNAL", "message": "x", "suggestions": "try again"}, "error.suggestions"),
]


def _assert_internal(payload: dict[str, Any], fragment: str) -> None:
    assert payload["type"] == "error" and payload["category"] == "INTERNAL", payload
    assert payload["message"].startswith("Trainer sent a malformed event: "), payload["message"]
    assert fragment in payload["message"], payload["message"]
    assert len(payload["message"]) <= MALFORMED_MESSAGE_CHARS
    assert "final" not in payload  # like every trainer error: recovery decides, and INTERNAL fails the job
    assert payload["user_message"] and payload["suggestions"]
    assert check_trainer_payload(payload) is payload, "the replacement is itself a valid error payload"


@pytest.mark.parametrize("payload", TRAINER_PAYLOADS, ids=lambda p: p["type"])
def test_trainer_payloads_pass_unchanged(payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    for remote in (False, True):
        checked = check_trainer_payload(payload, remote=remote)
        assert checked is payload
    assert json.dumps(payload, sort_keys=True) == json.dumps(before, sort_keys=True)


@pytest.mark.parametrize("payload", REMOTE_PAYLOADS, ids=lambda p: p["type"])
def test_modal_payloads_pass_unchanged_on_the_remote_path(payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    assert check_trainer_payload(payload, remote=True) is payload
    assert payload == before


def test_json_round_trip_of_a_trainer_line_validates() -> None:
    line = json.dumps(PROGRESS, default=str, ensure_ascii=False)  # as the trainer's event writer does
    data = json.loads(line)
    assert check_trainer_payload(data) is data


@pytest.mark.parametrize(("data", "fragment"), MALFORMED, ids=[fragment for _, fragment in MALFORMED])
def test_malformed_payloads_become_internal_errors(data: object, fragment: str) -> None:
    _assert_internal(check_trainer_payload(data), fragment)


def test_remote_only_types_are_checked_too() -> None:
    _assert_internal(
        check_trainer_payload({"type": "adapter_file", "name": "x", "offset": -1, "data": b""}, remote=True),
        "adapter_file.offset",
    )
    _assert_internal(
        check_trainer_payload({"type": "adapter_file", "name": "x", "data": "not bytes"}, remote=True),
        "adapter_file.data",
    )


def test_a_huge_blob_is_not_forwarded() -> None:
    blob = "x" * 1_000_000
    payload = check_trainer_payload({"type": "log", "level": "info", "message": 1, "dump": blob})
    _assert_internal(payload, "log.message")
    assert blob[:200] not in json.dumps(payload)


# --- the local backend: a trainer that prints a malformed line ---------------------------------

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    Path(os.environ["FASTBRAIN_TEST_FAKE_PID_FILE"]).write_text(str(os.getpid()))
    for line in json.loads(os.environ["FASTBRAIN_TEST_FAKE_LINES"]):
        print(line, flush=True)
    time.sleep(float(os.environ.get("FASTBRAIN_TEST_FAKE_LINGER", "0")))
    """
)


async def _run_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str], linger: float = 0) -> Any:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    pid_file = tmp_path / "pid"
    # FASTBRAIN_TEST_*: names the trainer env allow-list passes to the child
    monkeypatch.setenv("FASTBRAIN_TEST_FAKE_PID_FILE", str(pid_file))
    monkeypatch.setenv("FASTBRAIN_TEST_FAKE_LINES", json.dumps(lines))
    monkeypatch.setenv("FASTBRAIN_TEST_FAKE_LINGER", str(linger))
    backend = LocalBackend(Settings(data_dir=tmp_path), trainer_command=(sys.executable, str(script)))

    async def collect() -> list[dict[str, Any]]:
        return [payload async for payload in backend.train(tiny_spec(tmp_path))]

    payloads = await asyncio.wait_for(collect(), 30)
    return payloads, int(pid_file.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"type": "telemetry", "blob": "xxxx"}', "unknown event type 'telemetry'"),
        ('{"type": "progress", "step": "one", "total_steps": 2, "epoch": 0, "total_epochs": 1, "progress": 0}', "step"),
    ],
    ids=["not-an-object", "unknown-type", "wrong-field-type"],
)
async def test_local_backend_turns_a_malformed_line_into_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, fragment: str
) -> None:
    good = json.dumps(LOG)
    # The fake would linger for a minute after the bad line: the backend stops it instead of waiting.
    payloads, pid = await _run_fake(tmp_path, monkeypatch, [good, line, json.dumps(COMPLETE)], linger=60)
    assert payloads[0] == LOG
    assert len(payloads) == 2, "nothing after the malformed event is forwarded"
    _assert_internal(payloads[1], fragment)
    assert _gone(pid), "the trainer that sent it was stopped"


async def test_local_backend_keeps_non_json_stdout_in_the_error_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads, _ = await _run_fake(tmp_path, monkeypatch, ["not json at all", json.dumps(LOG)])
    assert payloads[0] == LOG
    crash = payloads[1]
    assert crash["type"] == "error" and "exited with code 0" in crash["message"]
    assert "[stdout] not json at all" in crash["traceback_tail"]


# --- the Modal backend: a remote generator that yields a malformed payload ----------------------


class _Stream:
    def __init__(self, payloads: list[Any]) -> None:
        self.payloads = payloads

    @property
    def remote_gen(self) -> _Stream:
        return self

    async def aio(self, spec: dict[str, Any]) -> AsyncIterator[Any]:
        for payload in self.payloads:
            yield payload


class _RecordingModalBackend(ModalBackend):
    cancelled: list[str]

    async def _cancel(self, call_id: str) -> None:  # type: ignore[override]
        self.cancelled.append(call_id)


async def test_modal_backend_turns_a_malformed_payload_into_an_internal_error_and_cancels(tmp_path: Path) -> None:
    trainer = type("Trainer", (), {})()
    trainer.train = _Stream(
        [{"type": "remote_call", "function_call_id": "fc-1", "gpu": "A10G"}, LOG, {"type": "progress", "step": 1}]
    )
    backend = _RecordingModalBackend(Settings(data_dir=tmp_path), lookup=lambda: trainer)
    backend.cancelled = []
    payloads = [p async for p in backend.train(tiny_spec(tmp_path))]
    assert payloads[0] == LOG
    assert len(payloads) == 2
    _assert_internal(payloads[1], "progress.total_steps")
    assert backend.cancelled == ["fc-1"], "the remote call that sent it is cancelled"
