"""OpenAI-compatible fine-tuning: `/v1/files` and `/v1/fine_tuning/jobs` (docs/openai-fine-tuning.md).

Point an OpenAI SDK at `<server>/v1` with a Fast Brain API key: `client.files.create(...)`,
`client.fine_tuning.jobs.create(...)`, then chat with the job's `fine_tuned_model` through
`client.chat.completions.create`. Errors take OpenAI's shape, `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile

from services.api.deps import AfterCommitDep, SessionDep, SettingsDep
from services.api.errors import ApiError
from services.api.finetuning import files, jobs
from services.api.finetuning.schemas import (
    PURPOSE,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)
from services.api.skills.importers import MAX_IMPORT_BYTES

router = APIRouter(prefix="/v1", tags=["openai"])

Cursor = Annotated[
    str | None, Query(max_length=200, description="The last id of the previous page; the page after it follows.")
]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such file or job in this workspace (`param` names it)."}
}
BAD: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input, in OpenAI's error shape with `param` naming the field."}
}


@router.post(
    "/files",
    summary="Upload a fine-tuning file (OpenAI-compatible)",
    responses={
        **BAD,
        413: {"description": "The file is larger than 20 MB, or the request than FASTBRAIN_MAX_REQUEST_BODY_BYTES."},
    },
)
async def upload_file(
    session: SessionDep,
    file: Annotated[UploadFile, File(description='Chat-format JSONL: one `{"messages": [...]}` per line.')],
    purpose: Annotated[str, Form(max_length=64, description="Only `fine-tune`.")],
) -> FileObject:
    """The file is validated as it is uploaded (off the event loop, by the same importer as
    POST /api/skills/{id}/examples/import): each line one conversation of `system` (optional, first),
    then `user` and `assistant` messages alternating, ending with the assistant's. A problem is a 400
    whose message starts with its line, `line 7: ...`, with `param: "file"`; nothing is stored then."""
    if purpose != PURPOSE:
        raise ApiError(
            f"purpose: '{purpose}' is not supported; Fast Brain keeps files for fine-tuning only ('{PURPOSE}').",
            details={"param": "purpose"},
            code="invalid_purpose",
        )
    raw = await file.read(MAX_IMPORT_BYTES + 1)
    return await files.upload(session, file.filename, raw)


@router.get("/files", summary="List files (OpenAI-compatible)", responses=BAD)
async def list_files(
    session: SessionDep,
    purpose: Annotated[str | None, Query(max_length=64, description="Only `fine-tune` files exist.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation time; newest first by default.")] = "desc",
    after: Cursor = None,
) -> FileList:
    """The workspace's files, newest first unless `order=asc`; page with `after` = the last id while
    `has_more` (the SDK's `for f in client.files.list()` does)."""
    return await files.listing(session, purpose=purpose, limit=limit, order=order, after=after)


@router.get("/files/{file_id}", summary="One file (OpenAI-compatible)", responses=NOT_FOUND)
async def retrieve_file(file_id: str, session: SessionDep) -> FileObject:
    """A file of the workspace by its `file-...` id; any other id is a 404."""
    return await files.retrieve(session, file_id)


@router.delete("/files/{file_id}", summary="Delete a file (OpenAI-compatible)", responses=NOT_FOUND)
async def delete_file(file_id: str, session: SessionDep) -> FileDeleted:
    """Jobs made from it keep its id and their skills keep its examples."""
    return await files.delete(session, file_id)


@router.post(
    "/fine_tuning/jobs",
    summary="Create a fine-tuning job (OpenAI-compatible)",
    responses={
        **BAD,
        **NOT_FOUND,
        429: {"description": "The workspace's concurrent trainings or monthly GPU budget (`Retry-After`)."},
    },
)
async def create_job(
    body: FineTuningJobCreate, session: SessionDep, settings: SettingsDep, after_commit: AfterCommitDep
) -> FineTuningJob:
    """A new skill whose examples are the training file's conversations (its system message, if any,
    becomes the skill's system prompt), trained by a normal training job on `model`: the queue, worker,
    events, recovery, limits and budget apply as to any training. `hyperparameters` (or
    `method.supervised.hyperparameters`) override the `standard` preset. `fine_tuned_model`, once the
    job succeeded, is `skill_id@v1`, served by /v1/chat/completions."""
    return await jobs.create(session, after_commit, settings, body)


@router.get("/fine_tuning/jobs", summary="List fine-tuning jobs, newest first (OpenAI-compatible)", responses=BAD)
async def list_jobs(
    session: SessionDep, after: Cursor = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> FineTuningJobList:
    """The jobs made through this API in the workspace, newest first; page with `after` = the last id
    while `has_more`. Trainings started from the dashboard or /api are not listed here."""
    return await jobs.listing(session, after=after, limit=limit)


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}", summary="One fine-tuning job (OpenAI-compatible)", responses=NOT_FOUND
)
async def retrieve_job(fine_tuning_job_id: str, session: SessionDep) -> FineTuningJob:
    """Status (`validating_files`, `queued`, `running`, `succeeded`, `failed`, `cancelled`), `error` on
    failure, `fine_tuned_model`, `trained_tokens`, `estimated_finish` while running."""
    return await jobs.retrieve(session, fine_tuning_job_id)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    summary="Cancel a fine-tuning job (OpenAI-compatible)",
    responses={**NOT_FOUND, 409: {"description": "The job already ended."}},
)
async def cancel_job(fine_tuning_job_id: str, session: SessionDep, after_commit: AfterCommitDep) -> FineTuningJob:
    """A queued job is `cancelled` at once; a running one stays `running` for the seconds its worker
    takes to stop the trainer, then is `cancelled` (no adapter is made)."""
    return await jobs.cancel(session, after_commit, fine_tuning_job_id)


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/events",
    summary="A fine-tuning job's events, newest first (OpenAI-compatible)",
    responses={**BAD, **NOT_FOUND},
)
async def list_events(
    fine_tuning_job_id: str,
    session: SessionDep,
    after: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> FineTuningJobEventList:
    """The job's stored events (GET /api/training-jobs/{id}/events) as `fine_tuning.job.event`s:
    progress ones are `type: "metrics"` with the step, loss (`train_loss`) and the rest in `data`."""
    return await jobs.events(session, fine_tuning_job_id, after=after, limit=limit)


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    summary="A fine-tuning job's checkpoints (OpenAI-compatible)",
    responses={**BAD, **NOT_FOUND},
)
async def list_checkpoints(
    fine_tuning_job_id: str,
    session: SessionDep,
    after: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> FineTuningJobCheckpointList:
    """One checkpoint once the job succeeded: its adapter (the best held-out step's weights), named
    `skill_id@vN` for /v1/chat/completions; none before or when it failed."""
    return await jobs.checkpoints(session, fine_tuning_job_id, after=after, limit=limit)
