"""Adapter export: the adapter's files plus a manifest, as one .tar.gz download.

The archive loads with PEFT as it is (`PeftModel.from_pretrained(base, dir)`);
`fastbrain.json` says which base model, skill and settings produced it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "fastbrain.json"


def archive_name(skill_id: str, version: int) -> str:
    return f"{skill_id}-v{version}"


def write_archive(adapter_dir: Path, name: str, manifest: dict[str, Any]) -> Path:
    """A temporary .tar.gz of `adapter_dir` under the folder `name/`; the caller deletes it."""
    handle, path = tempfile.mkstemp(prefix="fastbrain-export-", suffix=".tar.gz")
    os.close(handle)
    try:
        with tarfile.open(path, "w:gz") as tar:
            for file in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
                tar.add(file, arcname=f"{name}/{file.relative_to(adapter_dir)}")
            data = json.dumps(manifest, indent=2, default=str).encode()
            info = tarfile.TarInfo(f"{name}/{MANIFEST}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return Path(path)
