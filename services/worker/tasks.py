"""arq task functions. Thin: each delegates to its domain module."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from services.worker.context import WorkerContext

log = structlog.get_logger(__name__)


async def data_report(ctx: WorkerContext, request: dict[str, Any]) -> dict[str, Any]:
    """The data quality report for a skill's examples (needs the tokenizer and the embedder)."""
    from services.gpu.quality import build_report  # torch lives only on this path

    return await asyncio.to_thread(
        build_report,
        models_dir=ctx["settings"].models_dir,
        base_model=request["base_model"],
        system_prompt=request["system_prompt"],
        conversations=request["conversations"],
        max_seq_length=request["max_seq_length"],
    )


async def delete_remote_adapter(ctx: WorkerContext, ref: str) -> bool:
    """Remove a deleted adapter's copy from the Modal Volume (False: it was already gone).

    Queued by the API when it deletes an adapter (or its skill) that trained on Modal; runs on
    any worker, whatever its own backend, since the copy is Modal's either way.
    """
    from services.worker.backends.modal import ModalBackend

    backend = ctx["backend"]
    modal = backend if isinstance(backend, ModalBackend) else ModalBackend(ctx["settings"])
    removed = await modal.delete_remote(ref)
    log.info("remote_adapter_deleted", ref=ref, removed=removed)
    return removed
