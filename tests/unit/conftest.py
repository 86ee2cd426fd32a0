"""Unit-test fixtures: the cached model directory and the SmolLM2 tokenizer (built once, no download)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shared.schemas.training import Hyperparameters, TrainingSpec, Turn

REPO_ROOT = Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    path = Path(os.environ.get("FASTBRAIN_TEST_MODELS_DIR") or REPO_ROOT / ".cache" / "test-models")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from services.gpu.models import load_smollm2_tokenizer

    return load_smollm2_tokenizer(models_dir())


def tiny_spec(tmp_path: Path, job_id: str = "job-fake", skill_id: str = "fake-skill") -> TrainingSpec:
    """A one-step spec for tests that run a fake trainer command through a backend."""
    return TrainingSpec(
        job_id=job_id,
        skill_id=skill_id,
        base_model="tiny-random",
        system_prompt="You are terse.",
        conversations=[Turn(user="hi", assistant="hello")],
        hyperparameters=Hyperparameters(max_steps=1),
        output_dir=str(tmp_path / "staging"),
        models_dir=str(tmp_path / "models"),
    )
