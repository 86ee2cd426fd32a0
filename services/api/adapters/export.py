"""Adapter export as one .tar.gz download (the archive itself: `shared.rules.archive`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from shared.rules.archive import MANIFEST, archive_name, write_archive_to

__all__ = ["MANIFEST", "archive_name", "write_archive"]


def write_archive(adapter_dir: Path, name: str, manifest: dict[str, Any]) -> Path:
    """A temporary .tar.gz of `adapter_dir` under the folder `name/`; the caller deletes it."""
    handle, path = tempfile.mkstemp(prefix="fastbrain-export-", suffix=".tar.gz")
    os.close(handle)
    try:
        return write_archive_to(Path(path), adapter_dir, name, manifest)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
