"""Unit-test fixtures: the cached model directory and the SmolLM2 tokenizer (built once, no download)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    path = Path(os.environ.get("FASTBRAIN_TEST_MODELS_DIR") or REPO_ROOT / ".cache" / "test-models")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from services.gpu.models import load_smollm2_tokenizer

    return load_smollm2_tokenizer(models_dir())
