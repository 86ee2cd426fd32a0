"""The PEFT adapter archive: the adapter's files plus a manifest, as one .tar.gz.

The archive loads with PEFT as it is (`PeftModel.from_pretrained(base, dir)`); `fastbrain.json`
says which base model, skill and settings produced it. Written by the API's direct download
(`GET /api/adapters/{id}/export`) and by the `peft` export job alike.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

MANIFEST = "fastbrain.json"


def archive_name(skill_id: str, version: int) -> str:
    return f"{skill_id}-v{version}"


def write_archive_to(path: Path, adapter_dir: Path, name: str, manifest: dict[str, Any]) -> Path:
    """A .tar.gz at `path` of `adapter_dir` under the folder `name/`, with `fastbrain.json`."""
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
            tar.add(file, arcname=f"{name}/{file.relative_to(adapter_dir)}")
        data = json.dumps(manifest, indent=2, default=str).encode()
        info = tarfile.TarInfo(f"{name}/{MANIFEST}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path
