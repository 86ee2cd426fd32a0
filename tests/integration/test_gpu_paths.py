"""Unsloth and PEFT paths on CUDA (run when a GPU is lent: `pytest -m gpu`; deselected in CI).

A 1B-class random-weight Llama is built locally (no download) and trained on both paths by the
same trainer; throughput and peak memory are recorded (printed, and as user properties in the
JUnit report). The adapter trained on the Unsloth path must load with plain PEFT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu_unsloth_vs_peft.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    models_dir = tmp_path_factory.mktemp("gpu-models")
    _bench().build_random_llama(models_dir, settings.models_dir)
    return models_dir


def _train(models_dir: Path, path: str, out: Path, record: Any) -> dict[str, Any]:
    row: dict[str, Any] = _bench().train_once(models_dir, path, steps=10, seq=256, batch=2, out=out)
    print(row)
    for key in ("tokens_per_second", "peak_memory_gb", "seconds_per_step"):
        record(f"{path}_{key}", row[key])
    assert row["tokens_per_second"] > 0 and row["peak_memory_gb"] > 0
    return row


def _loads_with_plain_peft(models_dir: Path, adapter_dir: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-random", dtype=torch.bfloat16).to("cuda")
    model = PeftModel.from_pretrained(base, adapter_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    ids = torch.tensor([[1, 2, 3]], device="cuda")
    with torch.inference_mode():
        assert model(input_ids=ids).logits.shape[-1] == base.config.vocab_size


def test_peft_path_on_cuda(random_llama: Path, tmp_path: Path, record_property: Any) -> None:
    row = _train(random_llama, "peft", tmp_path, record_property)
    _loads_with_plain_peft(random_llama, row["adapter_dir"])


def test_unsloth_path_on_cuda_writes_a_plain_peft_adapter(
    random_llama: Path, tmp_path: Path, record_property: Any
) -> None:
    pytest.importorskip("unsloth")
    row = _train(random_llama, "unsloth", tmp_path, record_property)
    _loads_with_plain_peft(random_llama, row["adapter_dir"])
