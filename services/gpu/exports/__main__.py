"""The exporter process: `python -m services.gpu.exports <spec.json>`.

Run by the worker as a child process (as the trainer is), so a crash cannot take the worker down
and cancel is a signal. It writes only into the spec's `output_dir` (a staging folder the worker
renames into place once this process has succeeded, or removes) and prints JSON lines on stdout:
`progress` (stage, progress 0-100), `log`, and last either `result` (files with size and sha256,
the verification record) or `error` (the error payload; exit status 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from shared.errors import describe
from shared.schemas.exports import ExportSpec


def _finite(value: Any) -> Any:
    """JSON that PostgreSQL's JSONB takes: a NaN or infinity (a broken adapter's logits) as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _print(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_finite(payload), default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def emit(*, stage: str, progress: float, message: str | None = None) -> None:
    _print({"type": "progress", "stage": stage, "progress": round(float(progress), 1)})
    if message:
        _print({"type": "log", "level": "info", "message": message})


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_of(out: Path) -> list[dict[str, Any]]:
    return [
        {"name": str(p.relative_to(out)), "size": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    ]


def run(spec: ExportSpec) -> dict[str, Any]:
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    verification: dict[str, Any]
    if spec.format == "peft":
        from shared.rules.archive import write_archive_to

        emit(stage="archive", progress=10, message="Packing the adapter files and fastbrain.json")
        write_archive_to(out / f"{spec.name}.tar.gz", Path(spec.adapter_dir), spec.name, spec.manifest)
        verification = {"peft": {"note": "the adapter's own files, as trained", "passed": True}}
    elif spec.format == "merged":
        from services.gpu.exports import merged

        verification = merged.build(spec, out, emit).verification
    elif spec.format == "gguf":
        from services.gpu.exports import gguf

        verification = gguf.build(spec, out, emit)
    elif spec.format == "gguf-lora":
        from services.gpu.exports import gguf

        verification = gguf.build_lora(spec, out, emit)
    elif spec.format == "hub":
        from services.gpu.exports import hub

        verification = hub.build(spec, out, emit)
    else:  # pragma: no cover - the schema allows no other
        raise ValueError(f"unknown export format {spec.format!r}")
    emit(stage="checksum", progress=97, message="Computing sha256 checksums")
    return {"files": files_of(out), "verification": verification, "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str]) -> int:
    spec = ExportSpec.model_validate_json(Path(argv[1]).read_text())
    try:
        result = run(spec)
    except Exception as exc:
        from services.gpu.exports.merged import VerificationFailed

        payload: dict[str, Any] = {"type": "error", **describe(exc)}
        payload["user_message"] = f"The export failed: {payload['message']}"[:2000]
        if isinstance(exc, VerificationFailed):
            payload.update(
                code="EXPORT_VERIFICATION_FAILED",
                user_message=f"Verification failed, so the export is not offered: {exc}",
                details=exc.measured,
            )
        _print(payload)
        return 1
    _print({"type": "result", **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
