"""The export task: claim an export, run the exporter process, publish its events, finish it.

The exporter (`python -m services.gpu.exports`) runs as a child process, as the trainer does: a
crash cannot take the worker down and cancel is a signal to its process group. It writes into a
staging folder `adapters/<skill>/.staging/export-<id>-a<attempt>`; only after it reported success
(its verification passed) is that folder renamed to `adapters/<skill>/exports/<id>` (deleting the
skill removes it) and the export marked completed, with the rename undone when that did not commit.
A failed, cancelled or lost export
leaves no files. Every write is fenced by the export's lease (`shared.db.export_state`): a worker
that lost it writes nothing more and removes its staging folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.worker.backends.local import REPO_ROOT, trainer_env
from services.worker.context import WorkerContext
from services.worker.lease import in_transaction
from shared.db import export_state
from shared.db.job_state import Lease
from shared.db.models import Export
from shared.events import publish
from shared.schemas.exports import ExportSpec
from shared.settings import Settings

log = structlog.get_logger(__name__)

EXPORTER_COMMAND = (sys.executable, "-m", "services.gpu.exports")
POLL_SECONDS = 1.0
# Where the API leaves a hub token given with the request (services/api/exports/service.py `token_key`).
TOKEN_KEY = "fastbrain:export-token:{}"
KILL_GRACE_SECONDS = 3.0
STDERR_TAIL_LINES = 30


def export_dir(settings: Settings, skill_id: str, export_id: uuid.UUID | str) -> Path:
    """Beside the skill's adapters, so deleting the skill removes its exports' files too."""
    return settings.adapters_dir / skill_id / "exports" / str(export_id)


def staging_dir(settings: Settings, skill_id: str, export_id: uuid.UUID | str, attempt: int) -> Path:
    return settings.adapters_dir / skill_id / ".staging" / f"export-{export_id}-a{attempt}"


def spec_for(settings: Settings, export: Export, staging: Path) -> ExportSpec:
    request = export.request
    return ExportSpec(
        export_id=str(export.id),
        format=export.format,
        adapter_dir=request["adapter_dir"],
        base_model=request["base_model"],
        models_dir=str(settings.models_dir),
        output_dir=str(staging),
        name=request["name"],
        system_prompt=request.get("system_prompt") or "",
        prompts=request.get("prompts") or ["Hello! What can you help me with?"],
        manifest=request.get("manifest") or {},
        quantizations=export.options.get("quantizations") or ["f16", "q8_0"],
        hub=export.options if export.format == "hub" else None,
    )


async def run_export(ctx: WorkerContext, export_id_text: str) -> str:
    """The arq task. Idempotent: an export that is not `queued` is left alone."""
    export_id = uuid.UUID(export_id_text)
    structlog.contextvars.bind_contextvars(export_id=export_id_text)
    settings = ctx["settings"]
    redis = ctx["redis"]

    async def reap(session: AsyncSession) -> list[dict[str, Any]]:
        return await export_state.reap_stale(session, settings.heartbeat_stale_seconds)

    reaped = await in_transaction(ctx, reap)
    if reaped:
        await publish(redis, reaped)

    async def claim(session: AsyncSession) -> tuple[Lease, Export, dict[str, Any]] | None:
        return await export_state.claim(session, export_id, ctx["worker_id"])

    claimed = await in_transaction(ctx, claim)
    if claimed is None:
        return "not queued"
    lease, export, started = claimed
    await publish(redis, started)
    token = await redis.getdel(TOKEN_KEY.format(export_id)) if export.format == "hub" else None
    staging = staging_dir(settings, export.skill_id, export_id, lease.attempt)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        return await _run(ctx, lease, spec_for(settings, export, staging), staging, export.skill_id, token)
    except Exception as exc:  # our own bug or a database refusal: the export fails, it does not hang
        log.exception("export_crashed")
        message = f"{type(exc).__name__}: {exc}"[:2000]
        return await _fail(
            ctx, lease, {"category": "INTERNAL", "message": message, "user_message": "The export failed."}
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # moved into place on success; otherwise nothing is kept


def _env(token: bytes | str | None) -> dict[str, str]:
    """The trainer's allow-listed environment (no database URL, no Modal tokens), plus a hub token given
    with this export's request, for this child alone."""
    env = trainer_env()
    if token:
        env["HF_TOKEN"] = token.decode() if isinstance(token, bytes) else token
    return env


async def _write(ctx: WorkerContext, work: Any) -> dict[str, Any] | None:
    event: dict[str, Any] | None = await in_transaction(ctx, work)
    if event is not None:
        await publish(ctx["redis"], event)
    return event


async def _run(
    ctx: WorkerContext, lease: Lease, spec: ExportSpec, staging: Path, skill_id: str, token: bytes | str | None = None
) -> str:
    settings = ctx["settings"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fastbrain-export-", delete=False) as spec_file:
        spec_file.write(spec.model_dump_json())
    process = await asyncio.create_subprocess_exec(
        *EXPORTER_COMMAND,
        spec_file.name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
        env=_env(token),
        start_new_session=True,
        limit=16 * 1024 * 1024,
    )
    log.info("exporter_started", pid=process.pid, format=spec.format)
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    readers = [
        asyncio.create_task(_read_stdout(process, lines)),
        asyncio.create_task(_read_stderr(process, stderr_tail)),
    ]
    outcome: dict[str, Any] | None = None
    started = time.monotonic()
    last_beat = 0.0
    try:
        while True:
            try:
                item = await asyncio.wait_for(lines.get(), POLL_SECONDS)
            except TimeoutError:
                item = {}
            if item is None:  # stdout closed: the process is ending
                break
            if item.get("type") in ("progress", "log"):
                if await _write(ctx, lambda s, p=item: export_state.emit(s, lease, p)) is None:
                    return await _lost(process)
            elif item.get("type") in ("result", "error"):
                outcome = item
            if time.monotonic() - last_beat >= POLL_SECONDS:
                last_beat = time.monotonic()
                state = await in_transaction(ctx, lambda s: export_state.look(s, lease, beat=True))
                if state == "lost":
                    return await _lost(process)
                if state == "cancel_requested":
                    await _stop(process)
                    await _write(
                        ctx,
                        lambda s: export_state.cancelled(
                            s,
                            lease,
                            {"type": "status", "status": "cancelled", "message": "Export cancelled"},
                            error_message="The export was cancelled.",
                        ),
                    )
                    return "cancelled"
        returncode = await process.wait()
        await asyncio.gather(*readers, return_exceptions=True)
    finally:
        if process.returncode is None:
            await _stop(process)
        for task in readers:
            task.cancel()
        with contextlib.suppress(OSError):
            os.unlink(spec_file.name)
    if outcome is None or outcome["type"] != "result" or returncode != 0:
        error = outcome if outcome and outcome["type"] == "error" else _crash(returncode, list(stderr_tail))
        return await _fail(ctx, lease, error)
    return await _finish(
        ctx, lease, staging, outcome, time.monotonic() - started, export_dir(settings, skill_id, lease.job_id)
    )


async def _finish(
    ctx: WorkerContext, lease: Lease, staging: Path, result: dict[str, Any], seconds: float, target: Path
) -> str:

    def undo() -> None:
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)

    async def complete(session: AsyncSession) -> dict[str, Any] | None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a leftover of a crashed finish of this very export
            shutil.rmtree(target)
        os.replace(staging, target)
        return await export_state.complete(
            session,
            lease,
            {
                "type": "complete",
                "files": result["files"],
                "verification": result["verification"],
                "export_seconds": round(seconds, 2),
            },
            storage_path=str(target),
            files=result["files"],
            verification={**result["verification"], "export_seconds": round(seconds, 2)},
            stage="done",
        )

    event: dict[str, Any] | None = await in_transaction(ctx, complete, undo=undo)
    if event is None:
        undo()
        return "lost"
    await publish(ctx["redis"], event)
    log.info("export_completed", files=len(result["files"]), seconds=round(seconds, 1))
    return "completed"


async def _fail(ctx: WorkerContext, lease: Lease, error: dict[str, Any]) -> str:
    payload = {**error, "type": "error", "final": True}
    message = str(error.get("user_message") or error.get("message"))
    details = {k: v for k, v in error.items() if k not in ("type",)}
    await _write(
        ctx,
        lambda s: export_state.fail(s, lease, payload, error_message=message, error_details=details, stage="failed"),
    )
    log.warning("export_failed", category=error.get("category"), message=error.get("message"))
    return "failed"


async def _lost(process: asyncio.subprocess.Process) -> str:
    log.warning("export_lease_lost")
    await _stop(process)
    return "lost"


async def _read_stdout(process: asyncio.subprocess.Process, lines: asyncio.Queue[dict[str, Any] | None]) -> None:
    assert process.stdout is not None
    try:
        async for raw in process.stdout:
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                await lines.put(data)
    finally:
        await lines.put(None)


async def _read_stderr(process: asyncio.subprocess.Process, tail: deque[str]) -> None:
    assert process.stderr is not None
    async for raw in process.stderr:
        tail.append(raw.decode("utf-8", errors="replace").rstrip())


async def _stop(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def _crash(returncode: int | None, tail: list[str]) -> dict[str, Any]:
    last = next((line for line in reversed(tail) if line.strip()), "")
    message = f"The exporter exited with code {returncode}" + (f": {last}" if last else "")
    return {
        "category": "INTERNAL",
        "message": message,
        "user_message": "The export stopped unexpectedly.",
        "traceback_tail": "\n".join(tail)[-4000:],
    }
