"""Experiment tracking, optional: one MLflow run per training job, written by the worker.

With `FASTBRAIN_MLFLOW_TRACKING_URI` set (and the `mlflow` extra installed: `mlflow-skinny`), the worker
records each job in a run of the experiment `FASTBRAIN_MLFLOW_EXPERIMENT`. Everything comes from what the
worker has anyway, so the trainer and the Modal image need nothing new:

- at the claim: the params (base model, preset, skill id and name, workspace, backend, examples and every
  requested hyperparameter) and the tags `fastbrain.job_id`, `fastbrain.skill_id`, `fastbrain.workspace_id`.
  A requeued job's next attempt, on any worker, finds its run by the job id tag and goes on in it (params
  are written once: MLflow refuses to change one; a recovery's new settings become `fastbrain.recovery.N` tags);
- every committed `progress` event: `loss`, `learning_rate`, `grad_norm`, `tokens_per_second`, `eval_loss`
  (held-out, on the steps where it is measured), `epoch`, `gpu_memory_used_gb`, at its step;
- the completion: the held-out and summary figures of the `complete` event (`eval_loss_before`,
  `eval_loss_after`, `improvement_pct`, `best_step`, ..., `cost_usd`), the adapter's files as artifacts
  under `adapter/`, status FINISHED. A final failure is FAILED (tags `fastbrain.error_category`,
  `fastbrain.error_message`), a cancel KILLED, also when the reaper ends a job whose worker died.

Every MLflow call runs on the tracker's own thread, in order, never on the event loop. The first call that
fails logs `mlflow_tracking_failed` (a warning) and ends tracking for that job; the job goes on. An ending
waits for the run's calls at most `FINISH_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from shared.settings import Settings

log = structlog.get_logger(__name__)

TAG_JOB_ID = "fastbrain.job_id"
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
# Progress event fields logged as per-step metrics, under the same names.
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss", "epoch", "gpu_memory_used_gb")
# Fields of the `complete` event logged once at the end (metric name: field), at the last step seen.
FINAL_METRICS = {
    "final_loss": "final_loss",
    "initial_loss": "initial_loss",
    "eval_loss_before": "eval_loss_before",
    "eval_loss_after": "eval_loss_after",
    "improvement_pct": "improvement_pct",
    "best_step": "best_step",
    "best_eval_loss": "best_eval_loss",
    "last_eval_loss": "last_eval_loss",
    "eval_examples": "eval_examples",
    "training_time_seconds": "training_time_seconds",
    "wall_time_seconds": "wall_time_seconds",
    "cost_usd": "cost_usd",
    "tokens_trained": "tokens_trained",
    "avg_tokens_per_second": "tokens_per_second",
    "adapter_version": "adapter_version",
}
FINISH_TIMEOUT_SECONDS = 120.0
MAX_TAG_CHARS = 5000  # MLflow keeps tag values up to 8000 characters
# Stores that keep their artifacts under "./mlruns" of the process unless told otherwise: a worker's
# current directory is no place for them, so their new experiments keep artifacts under the data dir.
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

_clients: dict[str, Any] = {}
_experiments: dict[tuple[str, str], str] = {}
_clients_lock = threading.Lock()


def enabled(settings: Settings) -> bool:
    return bool(settings.mlflow_tracking_uri)


def _entities() -> Any:
    """`mlflow.entities`, imported the way this module needs mlflow imported (every import goes through here)."""
    # Before mlflow is first imported: its log lines go through ours (JSON, masked) rather than a handler
    # of its own, and a self-hosted service sends no usage telemetry unless its operator says otherwise.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow.entities

    return mlflow.entities


def client(uri: str) -> Any:
    """The process's MlflowClient for `uri` (one per URI: a database store checks its schema when it is
    made), mlflow imported as this module imports it."""
    _entities()
    with _clients_lock:
        if uri not in _clients:
            from mlflow import MlflowClient

            _clients[uri] = MlflowClient(tracking_uri=uri)
        return _clients[uri]


def _experiment_id(store: Any, settings: Settings) -> str:
    uri, name = str(settings.mlflow_tracking_uri), settings.mlflow_experiment
    with _clients_lock:
        cached = _experiments.get((uri, name))
    if cached is not None:
        return cached
    experiment = store.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = str(experiment.experiment_id)
    else:
        location = None
        if uri.split(":", 1)[0].split("+", 1)[0].lower() in _DATABASE_SCHEMES:
            location = (settings.data_dir.resolve() / "mlflow-artifacts").as_uri()
        try:
            experiment_id = str(store.create_experiment(name, artifact_location=location))
        except Exception:  # another worker made it meanwhile
            experiment = store.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = str(experiment.experiment_id)
    with _clients_lock:
        _experiments[(uri, name)] = experiment_id
    return experiment_id


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _millis(ts: Any) -> int:
    if isinstance(ts, str):
        try:
            return int(datetime.fromisoformat(ts).timestamp() * 1000)
        except ValueError:
            pass
    return int(time.time() * 1000)


def job_params(config: Mapping[str, Any], **fields: Any) -> dict[str, str]:
    """A run's params: the given fields and every requested hyperparameter (as MLflow keeps them, strings)."""
    params: dict[str, Any] = {
        "base_model": config.get("base_model"),
        "preset": config.get("preset"),
        **fields,
        **(config.get("hyperparameters") or {}),
    }
    return {key: str(value)[:MAX_TAG_CHARS] for key, value in params.items() if value is not None}


class _Calls:
    """MLflow calls of one run, in order, on a daemon thread of their own (a hung server cannot hold
    the event loop, or the worker's exit). Each call runs in the context it was submitted from, so its
    warnings carry the job's ids. After the first failure the rest are skipped."""

    def __init__(self, name: str) -> None:
        self.failed = False
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], Future[None]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, what: str, call: Callable[[], None]) -> Future[None]:
        done: Future[None] = Future()
        context = contextvars.copy_context()
        self._queue.put((lambda: context.run(self._guarded, what, call), done))
        return done

    def _guarded(self, what: str, call: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as exc:
            self.failed = True
            log.warning("mlflow_tracking_failed", call=what, error=f"{type(exc).__name__}: {exc}"[:2000])

    def _run(self) -> None:
        while True:
            call, done = self._queue.get()
            try:
                call()
            finally:
                done.set_result(None)


class RunTracker:
    """What an attempt records in its job's run; this base records nothing (tracking is off)."""

    def event(self, event: Mapping[str, Any]) -> None:
        """A committed event of the attempt (progress becomes metrics; a recovery, a tag)."""

    async def finish(
        self, status: str, event: Mapping[str, Any] | None = None, adapter_dir: Path | None = None
    ) -> None:
        """The job ended (`completed`, `failed` or `cancelled`): end the run likewise."""

    async def detach(self) -> None:
        """The attempt ended but not the job (requeued, lease lost, worker stopping): the run stays RUNNING."""


class MlflowRunTracker(RunTracker):
    """The run of one job. Without `params` it starts nothing and only ends the job's run, found by its tag."""

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.run_id: str | None = None
        self._client: Any = None
        self._last_step = 0
        self._recoveries = 0
        self._calls = _Calls(f"mlflow-{job_id[:8]}")
        if params is not None:
            start_params, start_tags = dict(params), dict(tags or {})
            self._calls.submit("start_run", lambda: self._start(start_params, start_tags))

    # -- on the tracker's thread -------------------------------------------------------------

    def _find(self) -> tuple[Any, str | None]:
        store = client(str(self.settings.mlflow_tracking_uri))
        experiment_id = _experiment_id(store, self.settings)
        found = store.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG_JOB_ID}` = '{self.job_id}'", max_results=1
        )
        return store, (found[0].info.run_id if found else None)

    def _start(self, params: dict[str, str], tags: dict[str, str]) -> None:
        self._client, self.run_id = self._find()
        if self.run_id is not None:  # a later attempt of the job: go on in its run
            self._client.update_run(self.run_id, status="RUNNING")
            self._tags(tags)
            return
        experiment_id = _experiment_id(self._client, self.settings)
        run = self._client.create_run(
            experiment_id,
            run_name=f"{tags.get('fastbrain.skill_id', 'job')}-{self.job_id[:8]}",
            tags={TAG_JOB_ID: self.job_id, **tags},
        )
        self.run_id = run.info.run_id
        self._client.log_batch(self.run_id, params=[_entities().Param(k, v) for k, v in params.items()])
        log.info("mlflow_run_started", run_id=self.run_id, experiment_id=experiment_id)

    def _metrics(self, values: Mapping[str, float], step: int, ts: int) -> None:
        if self.run_id is None:
            return
        metrics = [_entities().Metric(name, value, ts, step) for name, value in values.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def _tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id is not None and tags:
            tagged = [_entities().RunTag(k, v[:MAX_TAG_CHARS]) for k, v in tags.items()]
            self._client.log_batch(self.run_id, tags=tagged)

    def _end(self, status: str, event: Mapping[str, Any], adapter_dir: Path | None) -> None:
        if self._client is None:  # a job the reaper ended: its run, if it has one
            self._client, self.run_id = self._find()
        if self.run_id is None:
            return
        if status == "completed":
            final = {name: _number(event.get(field)) for name, field in FINAL_METRICS.items()}
            stars = _number((event.get("quality") or {}).get("stars"))
            values = {name: value for name, value in {**final, "quality_stars": stars}.items() if value is not None}
            self._metrics(values, self._last_step, _millis(event.get("ts")))
            self._tags(
                {
                    f"fastbrain.{key}": str(event[key])
                    for key in ("adapter_id", "adapter_version", "activated", "device")
                    if event.get(key) is not None
                }
            )
            if adapter_dir is not None and adapter_dir.is_dir():
                self._client.log_artifacts(self.run_id, str(adapter_dir), artifact_path="adapter")
        elif status == "failed":
            self._tags(
                {
                    "fastbrain.error_category": str(event.get("category") or "INTERNAL"),
                    "fastbrain.error_message": str(event.get("user_message") or event.get("message") or ""),
                }
            )
        self._client.set_terminated(self.run_id, status=RUN_STATUS[status], end_time=_millis(event.get("ts")))
        log.info("mlflow_run_ended", run_id=self.run_id, status=RUN_STATUS[status])

    # -- on the event loop -------------------------------------------------------------------

    def event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "progress":
            step = int(event.get("step") or 0)
            self._last_step = max(self._last_step, step)
            values = {name: number for name in STEP_METRICS if (number := _number(event.get(name))) is not None}
            ts = _millis(event.get("ts"))
            self._calls.submit("log_metrics", lambda: self._metrics(values, step, ts))
        elif kind == "error" and not event.get("final"):  # a recovery inside the attempt
            self._recoveries += 1
            tag = {f"fastbrain.recovery.{self._recoveries}": f"{event.get('category')}: {event.get('recovery')}"}
            self._calls.submit("log_recovery", lambda: self._tags(tag))

    async def _wait(self, done: Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), FINISH_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("mlflow_tracking_slow", waited_seconds=FINISH_TIMEOUT_SECONDS, run_id=self.run_id)

    async def finish(
        self, status: str, event: Mapping[str, Any] | None = None, adapter_dir: Path | None = None
    ) -> None:
        ending = dict(event or {})
        await self._wait(self._calls.submit("end_run", lambda: self._end(status, ending, adapter_dir)))

    async def detach(self) -> None:
        await self._wait(self._calls.submit("flush", lambda: None))


def start(
    settings: Settings,
    *,
    job_id: str,
    config: Mapping[str, Any],
    skill_id: str,
    skill_name: str | None,
    workspace_id: str | None,
    attempt: int,
    examples: int,
    backend: str,
) -> RunTracker:
    """The attempt's tracker: an MLflow run's when tracking is configured, else one that records nothing."""
    if not enabled(settings):
        return RunTracker()
    params = job_params(
        config,
        skill_id=skill_id,
        skill_name=skill_name,
        workspace_id=workspace_id,
        backend=backend,
        examples=examples,
    )
    tags = {"fastbrain.skill_id": skill_id, "fastbrain.attempt": str(attempt)}
    if workspace_id:
        tags["fastbrain.workspace_id"] = workspace_id
    return MlflowRunTracker(settings, job_id, params, tags)


async def end_orphaned(settings: Settings, job_id: str, status: str, event: Mapping[str, Any] | None = None) -> None:
    """End the run of a job that ended without its attempt (the reaper's WORKER_LOST, or its cancel)."""
    if enabled(settings):
        await MlflowRunTracker(settings, job_id).finish(status, event)
