"""Export endpoints: ask for an export of an adapter, follow it, cancel it, download its files."""

from __future__ import annotations

import base64
import uuid

from fastapi import APIRouter, status
from fastapi.responses import FileResponse

from services.api.deps import AfterCommitDep, SessionDep, StateDep
from services.api.exports import service
from shared.db import export_state
from shared.schemas.exports import ExportCancelled, ExportList, ExportOut, ExportRequest
from shared.schemas.jobs import Deleted

router = APIRouter(prefix="/api", tags=["exports"])


@router.post(
    "/adapters/{adapter_id}/exports",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Export an adapter (peft, merged, gguf): a verified export job",
    responses={404: {"description": "No such adapter."}, 409: {"description": "The adapter's files are not here."}},
)
async def create_export(
    adapter_id: uuid.UUID, body: ExportRequest, session: SessionDep, after_commit: AfterCommitDep, state: StateDep
) -> ExportOut:
    """Queue an export job; a worker runs it. Follow it on `stream_url` (a WebSocket with the same
    `{job_id, seq, ts, type, ...}` events as a training stream: `status`, `progress` with `stage`,
    `log`, then `complete` or a final `error`) or poll `GET /api/exports/{id}`.

    Its files are offered only once verified against the adapter: `merged` by fp32 logits on a
    held-out prompt (largest |Δ| ≤ 1e-3); `gguf` in llama.cpp (the embedded chat template renders
    the skill's prompt exactly as training does, and the f16 greedy answer equals the merged
    PyTorch model's for 16 tokens; q8_0's first token matches; `gguf-lora`: base GGUF + LoRA answers as
    the merged GGUF). `hub` pushes to a Hugging Face Hub repository (`repo_id`, `push`, `endpoint`,
    `token`: the token is never stored in the database nor answered back). A failed check fails the export
    with the measurements in `error_details`, and no file is kept."""
    return await service.start(session, after_commit, state.redis, adapter_id, body)


@router.get("/exports", summary="List exports (newest first)")
async def list_exports(session: SessionDep, adapter_id: uuid.UUID | None = None) -> ExportList:
    return ExportList(exports=await service.listed(session, adapter_id))


@router.get("/exports/{export_id}", summary="One export: state, verification, files with sha256")
async def get_export(export_id: uuid.UUID, session: SessionDep) -> ExportOut:
    return service.to_out(await service.get(session, export_id))


@router.post("/exports/{export_id}/cancel", summary="Cancel an export")
async def cancel_export(export_id: uuid.UUID, session: SessionDep, after_commit: AfterCommitDep) -> ExportCancelled:
    """A queued export is cancelled at once; a running one is stopped by its worker within about a second,
    its partial files removed."""
    await service.get(session, export_id)  # another workspace's export is a 404
    result = await export_state.cancel(session, export_id)
    if result.event is not None:
        after_commit.publish(result.event)
    messages = {
        "cancelled": "Export cancelled",
        "cancelling": "Cancel requested: the worker stops the export",
        "ended": "The export had already ended",
        "not_found": "Export not found",
    }
    return ExportCancelled(export_id=export_id, status=result.status, message=messages[result.outcome])


@router.delete("/exports/{export_id}", summary="Delete an export (row and files)")
async def delete_export(export_id: uuid.UUID, session: SessionDep, after_commit: AfterCommitDep) -> Deleted:
    export = await service.get(session, export_id)
    paths = [export.storage_path] if export.storage_path else []
    await session.delete(export)
    after_commit.call(lambda: service.remove_files(paths))
    return Deleted(message="Export deleted")


@router.get(
    "/exports/{export_id}/files/{name}",
    summary="Download one file of a completed export (resumable)",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file"},
        206: {"description": "The requested byte range (`Range: bytes=N-`), to resume a download"},
        416: {"description": "The range lies past the file's end"},
    },
)
async def download_export_file(export_id: uuid.UUID, name: str, session: SessionDep) -> FileResponse:
    """`name` is one of the export's `files`. Answers `Range` requests (`206`, `Accept-Ranges: bytes`)
    so a broken download resumes where it stopped; `Repr-Digest` (RFC 9530) and `X-Checksum-SHA256`
    carry the whole file's sha256, which `GET /api/exports/{id}` lists too."""
    export = await service.get(session, export_id)
    path, entry = service.file_of(export, name)
    digest = base64.b64encode(bytes.fromhex(entry["sha256"])).decode()
    return FileResponse(
        path,
        filename=path.name,
        media_type="application/octet-stream",
        headers={"Repr-Digest": f"sha-256=:{digest}:", "X-Checksum-SHA256": entry["sha256"]},
    )
