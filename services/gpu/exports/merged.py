"""`merged`: base + LoRA merged (PEFT `merge_and_unload`) into a full Hugging Face folder, verified.

Verification, in fp32 on the held-out prompts rendered with the training chat template: the folder
as saved, loaded back from disk, gives logits within `logits_atol` of base + adapter at every
position; and the adapter must change the base's logits by more than that tolerance, so a merge
that silently dropped the LoRA cannot pass as one that kept it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.gpu.models import load_model, load_tokenizer
from shared.rules.templates import ChatTokenizer, from_hf_tokenizer
from shared.schemas.exports import ExportSpec

Emit = Callable[..., None]
# Test hook (services/gpu/faults.py style): scale one merged weight before saving, a genuinely broken merge.
CORRUPT_MERGE_ENV = "FASTBRAIN_TEST_EXPORT_CORRUPT_MERGE"


class VerificationFailed(Exception):
    """The export does not behave like the adapter it came from: it is not offered."""

    def __init__(self, message: str, measured: dict[str, Any]) -> None:
        super().__init__(message)
        self.measured = measured


@dataclass
class Merged:
    """A merged model folder on disk, its model in memory (fp32, eval) and what verification measured."""

    folder: Path
    model: Any
    tokenizer: Any
    chat: ChatTokenizer
    prompts: list[str]  # the rendered prompts, training's rendering
    end_of_turn: str
    end_of_turn_id: int
    verification: dict[str, Any]


def rendered_prompts(chat: ChatTokenizer, spec: ExportSpec) -> list[str]:
    return [chat.render_prompt(spec.system_prompt, prompt) for prompt in spec.prompts]


def _logits(model: Any, ids_list: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(input_ids=ids).logits[0].float() for ids in ids_list]


def build(spec: ExportSpec, folder: Path, emit: Emit) -> Merged:
    """Merge, save into `folder`, load it back and verify; raises VerificationFailed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    emit(stage="load", progress=5, message=f"Loading {spec.base_model} and the adapter in fp32")
    base: Any = load_model(spec.base_model, spec.models_dir, "cpu", dtype=torch.float32)
    base.eval()
    tokenizer = load_tokenizer(spec.base_model, spec.models_dir)
    chat = from_hf_tokenizer(tokenizer)
    training_hash = _training_template_hash(Path(spec.adapter_dir))
    if training_hash and training_hash != chat.template_sha256:
        raise VerificationFailed(
            "The base model's chat template is not the one the adapter was trained with "
            f"(sha256 {chat.template_sha256[:12]} here, {training_hash[:12]} at training).",
            {"template_sha256": chat.template_sha256, "training_template_sha256": training_hash},
        )
    texts = rendered_prompts(chat, spec)
    ids_list = [tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids for text in texts]
    base_logits = _logits(base, ids_list)
    peft_model: Any = PeftModel.from_pretrained(base, spec.adapter_dir)
    peft_model.eval()
    adapter_logits = _logits(peft_model, ids_list)
    emit(stage="merge", progress=20, message="Merging the LoRA into the base weights")
    merged: Any = peft_model.merge_and_unload()
    _maybe_corrupt(merged)

    end_of_turn = chat.end_of_turn or tokenizer.eos_token
    eot_id = int(str(tokenizer.convert_tokens_to_ids(end_of_turn)))
    eos_ids = [eot_id] + [i for i in _as_list(merged.generation_config.eos_token_id) if i != eot_id]
    merged.generation_config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if merged.generation_config.pad_token_id is None:
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.eos_token_id = eot_id
    emit(stage="save", progress=30, message="Saving the merged model (safetensors)")
    folder.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "fastbrain.json").write_text(json.dumps(spec.manifest, indent=2, default=str) + "\n")

    emit(stage="verify", progress=40, message="Verifying: the saved folder's logits against base + adapter")
    reloaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reloaded.eval()
    merged_logits = _logits(reloaded, ids_list)
    max_diff = max(float((m - a).abs().max()) for m, a in zip(merged_logits, adapter_logits, strict=True))
    effect = max(float((a - b).abs().max()) for a, b in zip(adapter_logits, base_logits, strict=True))
    measured = {
        "prompts": len(texts),
        "positions": sum(int(ids.shape[1]) for ids in ids_list),
        "max_abs_logit_diff": max_diff,
        "adapter_effect_max_abs_logit": effect,
        "atol": spec.logits_atol,
        "template_sha256": chat.template_sha256,
        "end_of_turn": end_of_turn,
    }
    if not max_diff <= spec.logits_atol:
        raise VerificationFailed(
            f"The merged model's logits differ from base + adapter by up to {max_diff:.3g} "
            f"(tolerance {spec.logits_atol:g}): the merge is not faithful.",
            measured,
        )
    if not effect > spec.logits_atol:
        raise VerificationFailed(
            f"The adapter changes the base's logits by at most {effect:.3g}: nothing to tell the merge from the base.",
            measured,
        )
    return Merged(
        folder, reloaded, tokenizer, chat, texts, end_of_turn, eot_id, {"merged": {**measured, "passed": True}}
    )


def greedy(model: Any, tokenizer: Any, text: str, n: int, stop_id: int) -> list[int]:
    """The first `n` greedy tokens after `text` (fewer when the end-of-turn token comes first)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=stop_id,
            pad_token_id=tokenizer.pad_token_id,
            repetition_penalty=1.0,
        )
    tokens = [int(t) for t in out[0, ids.shape[1] :]]
    return tokens[: tokens.index(stop_id)] if stop_id in tokens else tokens


def _training_template_hash(adapter_dir: Path) -> str | None:
    path = adapter_dir / "training_metadata.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("chat_template_sha256")
    return str(value) if value else None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def _maybe_corrupt(model: Any) -> None:
    if not os.environ.get(CORRUPT_MERGE_ENV):
        return
    import torch

    with torch.no_grad():
        weight = next(p for name, p in model.named_parameters() if name.endswith("o_proj.weight"))
        weight.mul_(1.5)


def iter_files(folder: Path) -> Iterator[Path]:
    return iter(sorted(p for p in folder.rglob("*") if p.is_file()))
