"""The OpenAI fine-tuning mapping without a server: ids, statuses, hyperparameters, skill ids, objects."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.api.errors import ApiError
from services.api.finetuning import ids, mapping
from services.api.finetuning.files import InvalidFile, parse_chat_file
from services.api.finetuning.schemas import FineTuningJobCreate, HyperparametersIn
from shared.db.models import FineTuningJob, TrainingJob, TrainingLog
from shared.schemas.skills import SKILL_ID_PATTERN
from shared.schemas.training import Preset, preset_values

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_ids_round_trip_and_refuse_anything_else() -> None:
    key = uuid.uuid4()
    assert ids.parse_file(ids.file_id(key)) == key and ids.parse_job(ids.job_id(key)) == key
    assert ids.parse_checkpoint(ids.checkpoint_id(key)) == key
    assert ids.parse_event(ids.event_id(key, 7), key) == 7
    for bad in ("", "file-", f"file-{key.hex.upper()}", f"file-{key.hex}0", f"ftjob-{key.hex}", f" file-{key.hex}"):
        assert ids.parse_file(bad) is None, bad
    assert ids.parse_event(ids.event_id(uuid.uuid4(), 7), key) is None  # another job's event
    assert ids.parse_event(f"ftevent-{key.hex}-{2**31}", key) is None  # past the seq column
    assert ids.parse_event(f"ftevent-{key.hex}-{'9' * 40}", key) is None


@pytest.mark.parametrize(
    ("suffix", "stem"),
    [
        ("Syrup Bot", "syrup-bot"),
        ("ÜBER/model:v2!", "ber-model-v2"),
        ("x" * 64, "x" * 40),
        ("---", "tiny-random"),
        (None, "tiny-random"),
    ],
)
def test_skill_ids_are_valid_and_fresh(suffix: str | None, stem: str) -> None:
    first, second = mapping.skill_id_for(suffix, "tiny-random"), mapping.skill_id_for(suffix, "tiny-random")
    assert first != second
    for skill_id in (first, second):
        assert re.match(SKILL_ID_PATTERN, skill_id) and re.fullmatch(rf"ft-{stem}-[0-9a-f]{{12}}", skill_id)


def test_hyperparameters_auto_keeps_the_preset_and_numbers_override_it() -> None:
    base = preset_values(Preset.STANDARD, 12)
    auto = mapping.training_config("tiny-random", HyperparametersIn(), None, 12).resolve(12)
    assert (auto.epochs, auto.batch_size, auto.learning_rate, auto.seed) == (
        base.epochs,
        base.batch_size,
        base.learning_rate,
        base.seed,
    )
    given = HyperparametersIn(n_epochs=2, batch_size=4, learning_rate_multiplier=0.5)
    resolved = mapping.training_config("tiny-random", given, 9, 12).resolve(12)
    assert (resolved.epochs, resolved.batch_size, resolved.seed) == (2, 4, 9)
    assert resolved.learning_rate == pytest.approx(base.learning_rate * 0.5)
    shown = mapping.resolved_hyperparameters(resolved, 12)
    assert shown == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    with pytest.raises(ApiError) as caught:
        mapping.training_config("tiny-random", HyperparametersIn(learning_rate_multiplier=50), None, 12)
    assert caught.value.status_code == 400 and caught.value.details["param"].endswith("learning_rate_multiplier")


def test_the_request_takes_hyperparameters_in_either_place_but_once() -> None:
    nested = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    body = FineTuningJobCreate.model_validate({"model": "m", "training_file": "f", "method": nested})
    assert body.requested.n_epochs == 3
    old = FineTuningJobCreate.model_validate({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 4}})
    assert old.requested.n_epochs == 4
    with pytest.raises(ValidationError):
        FineTuningJobCreate.model_validate(
            {"model": "m", "training_file": "f", "method": nested, "hyperparameters": {"n_epochs": 4}}
        )
    with pytest.raises(ValidationError) as caught:
        FineTuningJobCreate.model_validate({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 2.5}})
    assert caught.value.errors()[0]["loc"] == ("hyperparameters", "n_epochs")  # one error, naming the field
    for bad in ({"integrations": [{"type": "wandb"}]}, {"model": "m\x00"}, {"unknown": 1}, {"seed": -1}):
        with pytest.raises(ValidationError):
            FineTuningJobCreate.model_validate({"model": "m", "training_file": "f", **bad})


def _rows(status: str, **job: object) -> tuple[FineTuningJob, TrainingJob]:
    key = uuid.uuid4()
    row = FineTuningJob(
        id=key,
        workspace_id="ws",
        model="tiny-random",
        training_file="file-a",
        seed=42,
        hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0},
        created_at=NOW,
    )
    return row, TrainingJob(id=key, skill_id="ft-x", status=status, **job)


@pytest.mark.parametrize(
    ("status", "openai_status"),
    [
        ("pending", "validating_files"),
        ("queued", "queued"),
        ("running", "running"),
        ("completed", "succeeded"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
    ],
)
def test_statuses_map(status: str, openai_status: str) -> None:
    row, job = _rows(status)
    assert mapping.job_object(row, job, None).status == openai_status


def test_a_failed_job_has_an_error_a_succeeded_one_a_model() -> None:
    row, job = _rows("failed", error_message="Out of memory.", error_details={"category": "CUDA_OOM"}, completed_at=NOW)
    failed = mapping.job_object(row, job, None)
    assert failed.error is not None and (failed.error.code, failed.error.message) == ("cuda_oom", "Out of memory.")
    assert failed.fine_tuned_model is None and failed.finished_at == int(NOW.timestamp())
    row, job = _rows("completed", tokens_trained=1234, completed_at=NOW)
    done = mapping.job_object(row, job, 3)
    assert done.error is None and done.fine_tuned_model == "ft-x@v3" and done.trained_tokens == 1234
    row, job = _rows("running", estimated_completion=NOW)
    assert mapping.job_object(row, job, None).estimated_finish == int(NOW.timestamp())


def test_events_map_levels_and_metrics() -> None:
    job_id = uuid.uuid4()
    progress = {"job_id": str(job_id), "seq": 4, "ts": "t", "type": "progress", "step": 2, "loss": 1.5}
    log = TrainingLog(job_id=job_id, seq=4, event_type="progress", level="info", message="Step 2/4", data=progress)
    log.timestamp = NOW
    event = mapping.event_object(log)
    assert (event.type, event.level, event.message) == ("metrics", "info", "Step 2/4")
    assert event.data["train_loss"] == 1.5 and "job_id" not in event.data
    assert ids.parse_event(event.id, job_id) == 4
    warning = TrainingLog(job_id=job_id, seq=5, event_type="log", level="warning", message=None, data={"type": "log"})
    warning.timestamp = NOW
    assert (mapping.event_object(warning).level, mapping.event_object(warning).type) == ("warn", "message")


def test_chat_files_are_refused_with_their_line() -> None:
    good = b'{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, '
    good += b'{"role": "assistant", "content": "Hello"}]}\n'
    parsed = parse_chat_file("a.jsonl", good * 2)
    assert parsed.parsed.system_prompt == "S" and len(parsed.parsed.conversations) == 2
    assert any("exact duplicate" in w for w in parsed.warnings) and any("at least 10" in w for w in parsed.warnings)
    bad = good + b'{"messages": [{"role": "user", "content": "Hi"}]}\n' + good + b'{"messages": "x"}\n'
    with pytest.raises(InvalidFile) as caught:
        parse_chat_file("a.jsonl", bad)
    assert caught.value.message.startswith("line 2: wrong role order") and "line 4:" in caught.value.message
    assert caught.value.status_code == 400 and caught.value.details["param"] == "file"
    with pytest.raises(InvalidFile) as caught:
        parse_chat_file("a.csv", b"user,assistant\nHi,Hello\n")
    assert caught.value.message.startswith("row 2: not the OpenAI chat format")
