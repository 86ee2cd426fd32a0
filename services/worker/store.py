"""The adapter store on local disk: adapters/{skill_id}/v{version}/.

Trainers write into a per-attempt staging directory; only a completed job's
directory is moved to its version slot, so failed or cancelled runs leave no
partial adapter behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_dir(adapters_dir: Path, skill_id: str, job_id: str, attempt: int) -> Path:
    return adapters_dir / skill_id / ".staging" / f"{job_id}-a{attempt}"


def version_dir(adapters_dir: Path, skill_id: str, version: int) -> Path:
    return adapters_dir / skill_id / f"v{version}"


def promote(staging: Path, target: Path) -> None:
    """Move a finished adapter into place (atomic on one filesystem)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a leftover from a crashed finalisation of the same version
        shutil.rmtree(target)
    os.replace(staging, target)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
