"""The Modal backend: training and test chats run in the deployed `SkillTrainer` class on a cloud GPU.

`train` streams the remote generator with `.remote_gen()`; its payloads go through the worker's
usual persist-then-publish path, each checked against `shared/schemas/events.py` first (a
malformed one ends the run as an `INTERNAL` error and cancels the call). Two remote-only event
types are consumed here and never recorded: `remote_call` (the Modal call id, to cancel it) and
`adapter_file` (the adapter's files, written into the job's local staging dir, so everything after
`complete` is the local path's).
The `complete` payload gains the job's cost: the GPU seconds the container reports times the
configured price of `FASTBRAIN_MODAL_GPU`.

Cancel (the worker cancels the task or closes the iterator): the stream is closed and the
remote call is cancelled with `FunctionCall.cancel()`, which stops the container's input.
Modal's own exceptions become the error taxonomy (`modal_error_payload`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from structlog import get_logger

from shared.errors import CATALOGUE, ErrorCategory, classify, describe
from shared.schemas.events import check_trainer_payload
from shared.schemas.training import TrainingSpec
from shared.settings import Settings

log = get_logger(__name__)

CLASS_NAME = "SkillTrainer"  # services.gpu.modal_app.APP_CLASS_NAME (not imported: it builds the image)

# Returns an instance of the trainer class whose methods have `.remote_gen.aio` / `.remote.aio`.
TrainerLookup = Callable[[], Any]


def deployed_trainer(settings: Settings) -> TrainerLookup:
    """The deployed class, found by app and class name (lazy: nothing is contacted until the first call)."""

    def lookup() -> Any:
        import modal

        return modal.Cls.from_name(settings.modal_app_name, CLASS_NAME)()

    return lookup


def modal_error_category(exc: BaseException) -> ErrorCategory:
    """Modal's exceptions in our taxonomy; anything else (a re-raised remote error) by `classify`."""
    from modal import exception as modal_exc

    if isinstance(exc, modal_exc.ResourceExhaustedError):
        return ErrorCategory.GPU_UNAVAILABLE  # no GPU capacity / quota for the requested type
    if isinstance(exc, modal_exc.TimeoutError | TimeoutError):
        return ErrorCategory.TIMEOUT  # FunctionTimeoutError: the call ran past the class's timeout
    if isinstance(
        exc,
        modal_exc.ConnectionError
        | modal_exc.ServiceError
        | modal_exc.InternalFailure
        | modal_exc.InternalError
        | ConnectionError,
    ):
        return ErrorCategory.NETWORK_ERROR
    if isinstance(exc, modal_exc.InputCancellation):
        return ErrorCategory.CANCELLED
    return classify(exc)


def modal_error_payload(exc: BaseException) -> dict[str, Any]:
    """An `error` event for a failure of the Modal call itself (not of the trainer, which reports its own)."""
    from modal import exception as modal_exc

    payload: dict[str, Any] = {"type": "error", **describe(exc)}
    category = modal_error_category(exc)
    info = CATALOGUE[category]
    payload.update(
        category=category.value,
        severity=info.severity.value,
        user_message=info.user_message,
        suggestions=list(info.suggestions),
        message=f"Modal: {payload['message']}",
    )
    if isinstance(exc, modal_exc.NotFoundError):
        payload["message"] += " (is the app deployed? `modal deploy services/gpu/modal_app.py`)"
    elif isinstance(exc, modal_exc.AuthError):
        payload["message"] += " (set MODAL_TOKEN_ID / MODAL_TOKEN_SECRET for the worker)"
    return payload


class ModalBackend:
    name = "modal"
    bills_gpu_time = True  # every try's payload carries its cost: the container's GPU seconds x price

    def __init__(self, settings: Settings, lookup: TrainerLookup | None = None) -> None:
        self.settings = settings
        self.device = f"modal:{settings.modal_gpu}"
        self._lookup = lookup or deployed_trainer(settings)

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        staging = Path(spec.output_dir)
        call_id: str | None = None
        finished = False
        stream: Any = None
        try:
            trainer = self._lookup()
            stream = trainer.train.remote_gen.aio(spec.model_dump(mode="json"))
            async for data in stream:
                payload = check_trainer_payload(data, remote=True)
                if payload is not data:  # malformed: stop here; the finally cancels the call
                    log.warning("modal_event_malformed", message=payload["message"], job_id=spec.job_id)
                    yield payload
                    return
                kind = payload["type"]
                if kind == "remote_call":
                    call_id = payload.get("function_call_id")
                    log.info("modal_call_started", call_id=call_id, gpu=payload.get("gpu"), job_id=spec.job_id)
                    continue
                if kind == "adapter_file":
                    await asyncio.to_thread(_write_chunk, staging, payload)
                    continue
                if kind == "complete":
                    payload = {**payload, "adapter_path": str(staging), **self._charges(payload)}
                elif kind == "error":  # a failed run used the GPU too
                    payload = {**payload, **self._charges(payload)}
                if kind in ("complete", "error"):
                    finished = True
                yield payload
                if finished:
                    return
            finished = True
            yield {"type": "error", "category": "INTERNAL", "message": "Modal call ended without a result"}
        except Exception as exc:
            finished = True
            log.warning("modal_call_failed", error=repr(exc), job_id=spec.job_id)
            yield modal_error_payload(exc)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
            if not finished and call_id:
                await self._cancel(call_id)

    def _charges(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The GPU time a payload reports (`gpu_seconds`, from the container) at the configured price."""
        gpu_seconds = float(payload.get("gpu_seconds") or payload.get("training_time_seconds") or 0.0)
        price = self.settings.modal_price_per_hour
        return {
            "gpu": self.settings.modal_gpu,
            "gpu_seconds": round(gpu_seconds, 3),
            "price_per_hour": price,
            "cost_usd": round(gpu_seconds / 3600.0 * price, 4),
        }

    @staticmethod
    async def _cancel(call_id: str) -> None:
        import modal

        try:
            await modal.FunctionCall.from_id(call_id).cancel.aio()
            log.info("modal_call_cancelled", call_id=call_id)
        except Exception as exc:  # the container stops at its timeout anyway
            log.warning("modal_cancel_failed", call_id=call_id, error=repr(exc))

    async def delete_remote(self, ref: str) -> bool:
        """Remove an adapter's copy from the Volume (`SkillTrainer.delete_adapter`)."""
        removed: bool = await self._lookup().delete_adapter.remote.aio(ref)
        return removed


def _write_chunk(staging: Path, payload: dict[str, Any]) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / Path(str(payload["name"])).name  # never outside the staging dir
    mode = "r+b" if int(payload.get("offset", 0)) and target.exists() else "wb"
    with target.open(mode) as handle:
        handle.seek(int(payload.get("offset", 0)))
        handle.write(payload["data"])
