"""Checkpoints per attempt (services/gpu/training/checkpoints.py): which one a resume takes."""

from __future__ import annotations

from pathlib import Path

from services.gpu.training.checkpoints import TRAINER_STATE, Checkpoint, attempt_dir, latest_checkpoint


def _checkpoint(root: Path, attempt: int, step: int, complete: bool = True) -> Path:
    path = attempt_dir(root, attempt) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (path / TRAINER_STATE).write_text("{}")
    return path


def test_no_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "a1").mkdir()
    (tmp_path / "checkpoint-9").mkdir()  # not in an attempt's directory: not this layout's
    assert latest_checkpoint(tmp_path) is None


def test_highest_step_across_attempts(tmp_path: Path) -> None:
    assert attempt_dir(tmp_path, 3) == tmp_path / "a3"
    _checkpoint(tmp_path, 1, 4)
    _checkpoint(tmp_path, 1, 8)
    best = _checkpoint(tmp_path, 2, 12)
    _checkpoint(tmp_path, 3, 10)  # a later attempt that resumed from an older step
    (tmp_path / "a4").mkdir()  # started, nothing saved yet
    assert latest_checkpoint(tmp_path) == Checkpoint(12, 2, best)


def test_a_tie_goes_to_the_newest_attempt(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2, 6)
    newest = _checkpoint(tmp_path, 10, 6)  # numerically, not by name: a10 is newer than a2
    assert latest_checkpoint(tmp_path) == Checkpoint(6, 10, newest)


def test_an_incomplete_checkpoint_is_skipped(tmp_path: Path) -> None:
    """A process killed while saving leaves `checkpoint-N` without its trainer state: the one before it is used."""
    complete = _checkpoint(tmp_path, 1, 4)
    _checkpoint(tmp_path, 1, 8, complete=False)
    _checkpoint(tmp_path, 2, 9, complete=False)
    assert latest_checkpoint(tmp_path) == Checkpoint(4, 1, complete)
