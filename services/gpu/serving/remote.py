"""The engine on Modal: `fastbrain serve` forwarding each request to the deployed class's `chat`.

With `FASTBRAIN_SERVE_BACKEND=modal` the local engine process loads no model: it sends the
`GenerateRequest` to `SkillTrainer.chat` (services/gpu/modal_app.py), where the same
residency and scheduler run on the GPU, and relays the events. An adapter is named by its
copy on the Volume; one that is not there (trained locally, or removed there) is sent
along once and kept there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from shared.schemas.serving import EngineEvent, ErrorEvent, GenerateRequest

EVENT = TypeAdapter[EngineEvent](EngineEvent)
MISSING = "adapter_files_missing"
ClassLookup = Callable[[], Any]  # returns an instance of the deployed class (or a stand-in in tests)


def volume_ref(adapter_dir: Path) -> str:
    """Where a job's adapter lives on the Volume (`{skill_id}/jobs/{job_id}-a{attempt}`), from its metadata."""
    from services.gpu.modal_app import adapter_ref

    meta_path = adapter_dir / "training_metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    skill_id = meta.get("skill_id") or adapter_dir.parent.name
    return adapter_ref(skill_id, meta.get("job_id", adapter_dir.name), int(meta.get("attempt", 1)))


def deployed(app_name: str) -> ClassLookup:
    def lookup() -> Any:
        import modal

        from services.gpu.modal_app import APP_CLASS_NAME

        return modal.Cls.from_name(app_name, APP_CLASS_NAME)()

    return lookup


class ModalEngine:
    def __init__(self, lookup: ClassLookup) -> None:
        self._lookup = lookup

    async def events(self, request: GenerateRequest) -> AsyncGenerator[EngineEvent]:
        payload: dict[str, Any] = request.model_dump()
        files: dict[str, bytes] = {}
        if request.adapter is not None:
            folder = Path(request.adapter.path)
            payload["adapter"]["remote_ref"] = request.adapter.remote_ref or volume_ref(folder)
            if folder.is_dir():
                files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        try:
            chat = self._lookup().chat
            first = True
            async for item in chat.remote_gen.aio(payload):
                event = EVENT.validate_python(item)
                if first and isinstance(event, ErrorEvent) and event.code == MISSING and files:
                    break  # not on the Volume: send it along, once
                first = False
                yield event
            else:
                return
            async for item in chat.remote_gen.aio({**payload, "adapter_files": files}):
                yield EVENT.validate_python(item)
        except Exception as exc:  # not deployed, no credentials, the container failed...
            message = f"The Modal inference engine failed: {type(exc).__name__}: {exc}"
            yield ErrorEvent(status=503, code="engine_unavailable", message=message)
