"""Checkpoints of a job, per attempt: where this attempt saves, and where a resume starts.

`spec.checkpoint_dir` is the job's checkpoint root (`<adapters>/<skill>/.checkpoints/<job_id>`;
the Modal app maps it to its Volume). Each attempt saves under its own `a<attempt>/` there, so
an attempt never writes into, or rotates away, the checkpoints another one may be reading. A
resume takes the newest complete checkpoint of the job across every attempt's directory:
the highest global step, the newest attempt on a tie.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

TRAINER_STATE = "trainer_state.json"  # written last: a checkpoint without it is incomplete
_ATTEMPT_DIR = re.compile(r"^a(\d+)$")


@dataclass(frozen=True, order=True)
class Checkpoint:
    step: int
    attempt: int
    path: Path


def attempt_dir(checkpoint_root: str | Path, attempt: int) -> Path:
    """Where attempt `attempt` of a job saves its checkpoints."""
    return Path(checkpoint_root) / f"a{attempt}"


def _step(path: str | Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[-1])


def _newest_complete(directory: Path) -> Path | None:
    """The newest `checkpoint-<step>` of one attempt that was saved completely."""
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    last = get_last_checkpoint(str(directory))  # type: ignore[no-untyped-call]
    if last is None or (Path(last) / TRAINER_STATE).is_file():
        return Path(last) if last else None
    # get_last_checkpoint goes by the name only: the newest was cut short (the process died
    # while saving it), so take the newest one before it that has its trainer state.
    complete = [Path(p) for p in sort_checkpoints(str(directory)) if (Path(p) / TRAINER_STATE).is_file()]
    return complete[-1] if complete else None


def latest_checkpoint(checkpoint_root: str | Path) -> Checkpoint | None:
    """The job's newest complete checkpoint across its attempts' directories, or None."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return None
    found: list[Checkpoint] = []
    for directory in root.iterdir():
        match = _ATTEMPT_DIR.match(directory.name)
        if match is None or not directory.is_dir():
            continue
        newest = _newest_complete(directory)
        if newest is not None:
            found.append(Checkpoint(_step(newest), int(match.group(1)), newest))
    return max(found) if found else None


def discard_from(checkpoint_root: str | Path, step: int) -> list[int]:
    """Remove the job's checkpoints at `step` or later, across its attempts' directories; their steps.

    The training watchdog calls it on a divergence: those checkpoints hold weights that led to it.
    Only the attempt that holds the job's lease trains, so no other one is reading them.
    """
    root = Path(checkpoint_root)
    removed: set[int] = set()
    if not root.is_dir():
        return []
    for directory in root.iterdir():
        if _ATTEMPT_DIR.match(directory.name) is None or not directory.is_dir():
            continue
        for checkpoint in directory.glob("checkpoint-*"):
            try:
                at = _step(checkpoint)
            except ValueError:
                continue
            if at >= step:
                shutil.rmtree(checkpoint, ignore_errors=True)
                removed.add(at)
    return sorted(removed)
