"""Observability of a job: JSON log lines with its ids, the dev console's summary, and its MLflow run.

In-process burst workers with a fake GPU backend (PostgreSQL, Redis, arq and the worker are real) for
what the worker does with its lines and its run in every ending; then one real stack (API and worker
processes, JSON logs, an MLflow SQLite store) training `tiny-random` for real, its logs read line by
line and its run read back with MlflowClient.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq import create_pool
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.dev.console import DevConsole
from services.worker import tracking
from services.worker.reaper import reap_stale_jobs
from shared.db import job_state
from shared.db.keys import Scope
from shared.db.models import JobStatus, Skill, TrainingJob
from shared.logging import configure_logging, reset_logging
from shared.queue import redis_settings
from shared.schemas.training import TrainingSpec
from shared.settings import Settings
from tests.conftest import Stack, create_skill, demo_conversations, make_key, wait_for_status
from tests.integration.test_job_state import FakeBackend, _enqueue, _job, _mid_run, _run, _worker

PASSWORD = "pw-obs-" + uuid.uuid4().hex[:12]
SECRET_URL = f"postgresql://fastbrain:{PASSWORD}@db.internal:5432/fastbrain"
API_KEY_SHAPED = "fb_" + uuid.uuid4().hex + uuid.uuid4().hex[:12]
HYPERPARAMETERS = {"learning_rate": 0.001, "epochs": 2, "batch_size": 2, "lora_r": 8}


class ChattyBackend(FakeBackend):
    """The fake trainer, with a log line holding secrets first and held-out figures in its `complete`."""

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "log", "level": "warning", "message": f"slow mirror {SECRET_URL} key {API_KEY_SHAPED}"}
        async for payload in super().train(spec):
            if payload["type"] == "complete":
                payload = {**payload, "eval_loss_before": 2.5, "eval_loss_after": 1.25, "improvement_pct": 50.0}
            yield payload


@pytest.fixture
def fast(migrated: Settings) -> Settings:
    # model_copy skips validation: these are shorter than the settings allow in production.
    return migrated.model_copy(
        update={
            "queue_name": f"{migrated.queue_name}:obs:{uuid.uuid4().hex[:6]}",
            "heartbeat_seconds": 0.2,
            "cancel_poll_seconds": 0.1,
            "heartbeat_stale_seconds": 2.0,
            "gpu_unavailable_delay_seconds": 0.0,
            "worker_metrics_port": 0,
        }
    )


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=stream)
    yield stream
    reset_logging()


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for those who ask
    return (tmp_path / "mlruns").as_uri()


async def _new_job(sessionmaker: async_sessionmaker[AsyncSession], skill_id: str, max_attempts: int = 3) -> uuid.UUID:
    async with sessionmaker() as session, session.begin():
        session.add(
            Skill(
                id=skill_id,
                workspace_id="default",
                name=f"{skill_id} name",
                system_prompt="p",
                training_data=demo_conversations(10),
            )
        )
        await session.flush()
        job = TrainingJob(
            skill_id=skill_id,
            config={"base_model": "tiny-random", "hyperparameters": HYPERPARAMETERS, "preset": "quick"},
            dataset={"system_prompt": "p", "conversations": demo_conversations(10)},
            max_attempts=max_attempts,
        )
        await job_state.start(session, job, "Queued")
        return job.id


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object


def _run_of(uri: str, job_id: uuid.UUID) -> Any:
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name("fastbrain")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`fastbrain.job_id` = '{job_id}'")
    assert len(runs) == 1, "one run per job"
    return runs[0]


async def test_a_jobs_json_lines_carry_its_ids_and_mask_secrets(
    clean_db: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    fast: Settings,
    json_logs: io.StringIO,
    tmp_path: Path,
) -> None:
    job_id = await _new_job(sessionmaker, "obs-logs")
    await _enqueue(fast, job_id)
    await _run(_worker(fast, ChattyBackend()))
    assert (await _job(sessionmaker, job_id)).status == JobStatus.COMPLETED.value

    lines = _lines(json_logs)
    ours = [line for line in lines if line.get("job_id") == str(job_id)]
    by_event = {line["event"]: line for line in ours}
    assert {"job_running", "trainer_log", "job_completed"} <= by_event.keys(), [line["event"] for line in ours]
    for line in ours:
        if line["logger"].startswith("services."):  # ours: all the ids
            assert (line["skill_id"], line["workspace_id"], line["attempt"]) == ("obs-logs", "default", 1), line
    assert len([line for line in ours if line["logger"] == "arq.worker"]) == 2, "arq's start and end lines too"
    for line in lines:  # no line names the job without carrying its id
        if str(job_id) in json.dumps(line):
            assert line.get("job_id") == str(job_id), line
    relayed = by_event["trainer_log"]
    assert relayed["level"] == "warning" and "fastbrain:***@db.internal" in relayed["message"]
    assert "fb_***" in relayed["message"]
    assert PASSWORD not in json_logs.getvalue() and API_KEY_SHAPED not in json_logs.getvalue()
    assert by_event["job_completed"]["skill_name"] == "obs-logs name"
    print(json.dumps(by_event["job_completed"]))

    # The dev console, fed these very lines: the job's two state changes and the trainer's warning.
    out = io.StringIO()
    console = DevConsole(tmp_path / "dev.log", out=out)
    for text_line in json_logs.getvalue().splitlines():
        console.feed("worker", text_line)
    console.close()
    shown = out.getvalue().splitlines()
    print(out.getvalue())
    assert [line.split()[1] for line in shown] == ["running", "WARNING", "completed"], shown
    assert f"obs-logs name (obs-logs)  job {job_id}  attempt 1 on fake" in shown[0]
    assert "held-out loss 2.500 -> 1.250 (-50.0%)" in shown[2] and "v1" in shown[2]


async def test_one_mlflow_run_per_job_across_attempts(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings, file_store: str
) -> None:
    settings = fast.model_copy(update={"mlflow_tracking_uri": file_store})
    job_id = await _new_job(sessionmaker, "obs-mlflow")
    await _enqueue(settings, job_id)
    # Attempt 1 finds no GPU and is requeued; attempt 2 completes: both write into the job's one run.
    await _run(_worker(settings, ChattyBackend(lambda spec: "error:GPU_UNAVAILABLE" if spec.attempt == 1 else "ok")))
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.COMPLETED.value and job.attempt == 2

    run = _run_of(file_store, job_id)
    client = tracking.client(file_store)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert {k: params[k] for k in ("base_model", "preset", "skill_id", "skill_name", "workspace_id")} == {
        "base_model": "tiny-random",
        "preset": "quick",
        "skill_id": "obs-mlflow",
        "skill_name": "obs-mlflow name",
        "workspace_id": "default",
    }
    assert {k: params[k] for k in HYPERPARAMETERS} == {k: str(v) for k, v in HYPERPARAMETERS.items()}
    assert params["examples"] == "10" and params["backend"] == "fake"
    assert run.data.tags["fastbrain.attempt"] == "2" and run.data.tags["fastbrain.adapter_version"] == "1"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in losses] == [(1, 2.0), (2, 1.0), (1, 2.0), (2, 1.0)], "both attempts' steps"
    assert run.data.metrics["eval_loss_after"] == 1.25 and run.data.metrics["improvement_pct"] == 50.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")] == ["adapter/adapter_model.safetensors"]


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
async def test_the_run_ends_as_the_job_does(
    clean_db: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    fast: Settings,
    file_store: str,
    ending: str,
) -> None:
    settings = fast.model_copy(update={"mlflow_tracking_uri": file_store})
    if ending == "failed":
        job_id = await _new_job(sessionmaker, "obs-failed")
        await _enqueue(settings, job_id)
        await _run(_worker(settings, FakeBackend(lambda spec: "error:DATA_FORMAT_ERROR")))
    else:
        job_id, _, run_task = await _mid_run(sessionmaker, settings, "obs-cancelled")
        async with sessionmaker() as session, session.begin():
            assert (await job_state.cancel(session, job_id)).outcome == "cancelling"
        await run_task
    assert (await _job(sessionmaker, job_id)).status == ending
    run = _run_of(file_store, job_id)
    assert run.info.status == tracking.RUN_STATUS[ending] == {"failed": "FAILED", "cancelled": "KILLED"}[ending]
    if ending == "failed":
        assert run.data.tags["fastbrain.error_category"] == "DATA_FORMAT_ERROR"


async def test_the_reaper_ends_the_run_of_a_job_whose_worker_died(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings, file_store: str
) -> None:
    settings = fast.model_copy(update={"mlflow_tracking_uri": file_store})
    job_id = await _new_job(sessionmaker, "obs-reaped", max_attempts=1)
    async with sessionmaker() as session, session.begin():
        assert await job_state.claim(session, job_id, "w-dead") is not None
        await session.execute(
            text("UPDATE fb_training_jobs SET heartbeat_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": job_id},
        )
    # What the dead worker's attempt had written: the run, started.
    dead = tracking.start(
        settings,
        job_id=str(job_id),
        config={"base_model": "tiny-random"},
        skill_id="obs-reaped",
        skill_name=None,
        workspace_id="default",
        attempt=1,
        examples=10,
        backend="local",
    )
    await dead.detach()
    assert _run_of(file_store, job_id).info.status == "RUNNING"
    pool = await create_pool(redis_settings(str(settings.redis_url)))
    try:
        ctx = {"settings": settings, "sessionmaker": sessionmaker, "redis": pool, "worker_id": "reaper"}
        await reap_stale_jobs(ctx)  # type: ignore[arg-type]
    finally:
        await pool.aclose()
    assert (await _job(sessionmaker, job_id)).status == JobStatus.FAILED.value
    run = _run_of(file_store, job_id)
    assert run.info.status == "FAILED" and run.data.tags["fastbrain.error_category"] == "WORKER_LOST"


async def test_a_tracking_failure_never_fails_the_job(
    clean_db: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    fast: Settings,
    json_logs: io.StringIO,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses a file store without it
    settings = fast.model_copy(update={"mlflow_tracking_uri": (tmp_path / "refused").as_uri()})
    job_id = await _new_job(sessionmaker, "obs-untracked")
    await _enqueue(settings, job_id)
    await _run(_worker(settings, FakeBackend()))
    assert (await _job(sessionmaker, job_id)).status == JobStatus.COMPLETED.value
    warnings = [line for line in _lines(json_logs) if line["event"] == "mlflow_tracking_failed"]
    assert len(warnings) == 1, "one warning, then tracking stops for the job"
    assert warnings[0]["job_id"] == str(job_id) and warnings[0]["skill_id"] == "obs-untracked"
    assert warnings[0]["level"] == "warning" and "MLFLOW_ALLOW_FILE_STORE" in warnings[0]["error"]


# -- one real job on a real stack ------------------------------------------------------------------

TINY = {"base_model": "tiny-random", "max_steps": 6, "batch_size": 2, "gradient_accumulation_steps": 1}


@pytest.fixture(scope="module")
def observed_stack(migrated: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    url = make_url(str(migrated.database_url)).set(password=PASSWORD)  # trust auth: any password works
    env = {
        "FASTBRAIN_DATABASE_URL": url.render_as_string(hide_password=False),
        "FASTBRAIN_LOG_FORMAT": "json",
        "FASTBRAIN_MLFLOW_TRACKING_URI": store,
        "FASTBRAIN_WORKER_METRICS_PORT": "0",
    }
    stack = Stack("observed", migrated, env=env)
    stack.start_worker()
    yield stack, store
    stack.stop()


@pytest.mark.slow
async def test_a_real_job_json_logs_and_mlflow_run(
    observed_stack: tuple[Stack, str], clean_db: AsyncEngine, migrated: Settings
) -> None:
    stack, store = observed_stack
    key = await make_key(clean_db, "obs-ws", Scope.TRAIN)
    async with stack.client(key=key) as http:
        await create_skill(http, "obs-real")
        started = await http.post("/api/train-skill/obs-real", json={"config": TINY})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        status = await wait_for_status(http, job_id, {"completed", "failed"}, timeout=300)
        assert status["status"] == "completed", status
        assert (await http.get(f"/api/training-status/{job_id}?api_key={key}")).status_code == 200

    client = tracking.client(store)
    deadline = time.monotonic() + 60
    while (run := _run_of(store, uuid.UUID(job_id))).info.status != "FINISHED" and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # the worker ends the run just after the job's completion commits
    assert run.info.status == "FINISHED"
    assert run.data.params["base_model"] == "tiny-random" and run.data.params["skill_id"] == "obs-real"
    assert run.data.params["workspace_id"] == "obs-ws" and run.data.params["max_steps"] == "6"
    assert "learning_rate" in run.data.params and "lora_r" in run.data.params
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 7))
    assert len(client.get_metric_history(run.info.run_id, "tokens_per_second")) == 6
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == 6
    assert run.data.metrics["eval_loss_after"] == pytest.approx(status["eval_loss_after"])
    assert run.data.metrics["eval_loss_before"] == pytest.approx(status["eval_loss_before"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= artifacts

    stack.stop()  # flush and close the logs
    api = [json.loads(line) for line in stack.api.log_path.read_text().splitlines()]
    worker = [json.loads(line) for line in stack.workers[0].log_path.read_text().splitlines()]
    ids = {"job_id": job_id, "skill_id": "obs-real", "workspace_id": "obs-ws"}
    queued = [line for line in api if line["event"] == "job_queued"]
    assert len(queued) == 1 and {k: queued[0][k] for k in ids} == ids
    access = [line for line in api if line["logger"] == "uvicorn.access" and line.get("job_id") == job_id]
    assert access and all(line["workspace_id"] == "obs-ws" for line in access), "the request's lines too"
    ours = [line for line in worker if line.get("job_id") == job_id and line["logger"].startswith("services.")]
    assert {"job_running", "trainer_log", "mlflow_run_started", "job_completed", "mlflow_run_ended"} <= {
        line["event"] for line in ours
    }
    for line in ours:
        assert {k: line[k] for k in ids} == ids, line
    print(json.dumps(next(line for line in ours if line["event"] == "job_completed")))
    text = stack.api.log_path.read_text() + stack.workers[0].log_path.read_text()
    assert PASSWORD not in text and key not in text and "fb_***" in text
