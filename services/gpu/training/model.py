"""The model a run trains: the base model with LoRA applied, on the PEFT or the Unsloth path.

On CUDA with `unsloth` importable (unless FASTBRAIN_UNSLOTH=0) the base model loads through
Unsloth's `FastLanguageModel` (4-bit for the bnb-4bit checkpoints) and gets LoRA with its
offloaded gradient checkpointing; elsewhere plain transformers + PEFT. Same modules and ranks
either way, and both save the same PEFT adapter. A base model can be loaded ahead of a job
(`warm_up`, the Modal class's enter hook); the first run that matches takes it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.gpu.catalog import ModelInfo, is_prequantized_4bit, require_loadable
from shared.errors import ModelLoadError
from shared.schemas.training import Hyperparameters, TrainingSpec

if TYPE_CHECKING:
    from services.gpu.models import Precision

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEVICE_ENV = "FASTBRAIN_TRAIN_DEVICE"  # "cpu", "cuda" or "auto" (default)
UNSLOTH_ENV = "FASTBRAIN_UNSLOTH"  # "0" turns the Unsloth path off (default: on where CUDA and unsloth are)


def resolve_device(device: str | None) -> str:
    """The device to train on: the argument, else FASTBRAIN_TRAIN_DEVICE, else CUDA when available."""
    from services.gpu.models import resolve_device as resolve

    return resolve(device or os.environ.get(DEVICE_ENV) or "auto")


def unsloth_wanted(device: str) -> bool:
    """The Unsloth path: on CUDA, with `unsloth` importable, unless FASTBRAIN_UNSLOTH=0."""
    if not device.startswith("cuda") or os.environ.get(UNSLOTH_ENV, "1") == "0":
        return False
    return importlib.util.find_spec("unsloth") is not None


def _load_unsloth(spec: TrainingSpec, info: ModelInfo, models_dir: Path, device: str) -> tuple[Any, Any]:
    """Base model through Unsloth's `FastLanguageModel` (4-bit for bnb-4bit checkpoints), LoRA not applied yet."""
    import unsloth  # noqa: F401  # patches transformers/TRL; must come before the model is built
    from unsloth import FastLanguageModel

    from services.gpu.models import model_source

    hp = spec.hyperparameters
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_source(spec.base_model, models_dir),
            max_seq_length=hp.max_seq_length,
            dtype=None,  # bf16 where supported, else fp16
            load_in_4bit=is_prequantized_4bit(spec.base_model),
            device_map={"": device},
        )
    except Exception as exc:
        raise ModelLoadError(f"Failed to load model {info.id!r} with Unsloth: {exc}") from exc
    return model, tokenizer


def _apply_unsloth_lora(model: Any, spec: TrainingSpec) -> Any:
    """LoRA through Unsloth, with its offloaded gradient checkpointing. Same modules and ranks as the PEFT path."""
    from unsloth import FastLanguageModel

    hp = spec.hyperparameters
    return FastLanguageModel.get_peft_model(
        model,
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        bias="none",
        use_gradient_checkpointing="unsloth" if hp.gradient_checkpointing is not False else False,
        random_state=hp.seed,
        max_seq_length=hp.max_seq_length,
    )


def _apply_peft_lora(model: Any, hp: Hyperparameters) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


# A base model loaded ahead of a job (the Modal class's enter hook), taken by the first `train` that matches.
_WARM: dict[tuple[str, str, bool], tuple[Any, int]] = {}


def warm_up(model_id: str, models_dir: str | Path, device: str | None = None, max_seq_length: int = 2048) -> str:
    """Load `model_id` now (weights downloaded/cached, on the GPU) so the next `train` of it starts at once.

    Returns the path taken ("unsloth" or "peft"). Used by the Modal class's `@modal.enter` hook.
    """
    from services.gpu.models import keep_tokenizer, load_for_training

    resolved = resolve_device(device)
    info = require_loadable(model_id, resolved)
    use_unsloth = unsloth_wanted(resolved)
    if use_unsloth:
        probe = TrainingSpec(
            job_id="warm-up",
            skill_id="warm-up",
            base_model=model_id,
            system_prompt="",
            conversations=[],
            hyperparameters=Hyperparameters(max_seq_length=max_seq_length),
            output_dir="",
            models_dir=str(models_dir),
        )
        model, _ = _load_unsloth(probe, info, Path(models_dir), resolved)
    else:
        model, tokenizer, _ = load_for_training(model_id, models_dir, resolved, None)
        _exercise(model)
        keep_tokenizer(model_id, tokenizer)
    _WARM[(model_id, resolved, use_unsloth)] = (model, max_seq_length)
    return "unsloth" if use_unsloth else "peft"


def _exercise(model: Any) -> None:
    """One forward and backward pass over a few tokens, so that the kernels' one-time set-up (oneDNN's,
    cuBLAS's; about a second on a CPU) happens now rather than in the job's first steps.

    The weights are frozen meanwhile, so no weight gradient is ever allocated; only the input's is.
    Nothing the job sees changes: no gradients, no optimizer, the same parameters and modes."""
    import torch

    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], device=model.device)
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        model(inputs_embeds=embeds, labels=ids).loss.backward()
    finally:
        for param, wanted in flags:
            param.requires_grad_(wanted)


def _take_warm(model_id: str, device: str, use_unsloth: bool, max_seq_length: int) -> Any | None:
    """The warm model if it fits this job (once: LoRA layers are injected into it).

    Any other warm model is dropped: this job loads its own, and two base models in memory could
    exhaust it."""
    entry = _WARM.pop((model_id, device, use_unsloth), None)
    _WARM.clear()
    if entry is None or entry[1] < max_seq_length:
        return None
    return entry[0]


@dataclass
class TrainableModel:
    model: Any  # a PeftModel (LoRA applied)
    precision: Precision
    training_path: str  # "unsloth" or "peft"
    warm: bool  # taken from the warm cache


def load_trainable_model(spec: TrainingSpec, info: ModelInfo, device: str, use_unsloth: bool) -> TrainableModel:
    """The base model (warm when it fits, else loaded now) with LoRA applied, ready to train."""
    from services.gpu.models import load_for_training, precision_for

    hp = spec.hyperparameters
    models_dir = Path(spec.models_dir)
    warm = _take_warm(spec.base_model, device, use_unsloth, hp.max_seq_length)
    if use_unsloth:
        model = warm if warm is not None else _load_unsloth(spec, info, models_dir, device)[0]
        # Unsloth's own (offloaded) gradient checkpointing replaces the Trainer's.
        precision = precision_for(device, hp.gradient_checkpointing)
        model = _apply_unsloth_lora(model, spec)
    else:
        if warm is not None and hp.gradient_checkpointing is not None:
            warm = None  # loaded for the device's default checkpointing: load it again as asked
        if warm is not None:
            model, precision = warm, precision_for(device, None)
        else:
            model, _, precision = load_for_training(spec.base_model, models_dir, device, hp.gradient_checkpointing)
        model = _apply_peft_lora(model, hp)
    return TrainableModel(model, precision, "unsloth" if use_unsloth else "peft", warm is not None)
