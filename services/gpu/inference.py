"""Chat with a base model plus (optionally) a trained LoRA adapter.

The prompt is rendered with the same chat template as training (`data.render_prompt`).
Decoding is greedy with a mild repetition penalty and stops at the end-of-turn token,
so the same question gives the same answer. The last base model and adapter stay in
memory (the adapter keyed by its directory and file mtime), so repeated chats are fast;
one lock serialises loading and generation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.gpu.catalog import require_loadable
from services.gpu.imports import ensure_ml_stack
from shared.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REPETITION_PENALTY = 1.1
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_lock = threading.RLock()


@dataclass
class _Loaded:
    base_key: tuple[str, str, str]
    adapter_key: tuple[str, float] | None
    model: Any  # PreTrainedModel or PeftModel
    tokenizer: Any


_cache: _Loaded | None = None


def _adapter_key(adapter_dir: str | Path | None) -> tuple[str, float] | None:
    if adapter_dir is None:
        return None
    path = Path(adapter_dir).resolve()
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file() or not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"Failed to load model: no adapter ({ADAPTER_WEIGHTS}, adapter_config.json) in {path}")
    return str(path), weights.stat().st_mtime


def _check_adapter_base(adapter_dir: str, base_model: str) -> None:
    meta = Path(adapter_dir) / "training_metadata.json"
    if not meta.is_file():
        return
    trained_on = json.loads(meta.read_text()).get("base_model")
    if trained_on and trained_on != base_model:
        raise ModelLoadError(
            f"Failed to load model: adapter {adapter_dir} was trained on {trained_on!r}, not {base_model!r}"
        )


def clear_cache() -> None:
    """Drop the cached model (e.g. to free memory)."""
    global _cache
    with _lock:
        _cache = None


def _get(
    models_dir: str | Path, base_model: str, adapter_dir: str | Path | None, device: str | None
) -> tuple[Any, Any]:
    """The (cached) model with the adapter applied, and its tokenizer. Call with `_lock` held."""
    global _cache
    from peft import PeftModel

    from services.gpu.models import load_model, load_tokenizer, precision_for, resolve_device

    resolved = resolve_device(device)
    require_loadable(base_model, resolved)
    base_key = (str(Path(models_dir).resolve()), base_model, resolved)
    adapter_key = _adapter_key(adapter_dir)
    if _cache is not None and _cache.base_key == base_key and _cache.adapter_key == adapter_key:
        return _cache.model, _cache.tokenizer

    if _cache is not None and _cache.base_key == base_key:
        model, tokenizer = _cache.model, _cache.tokenizer
        if isinstance(model, PeftModel):
            model = model.unload()  # back to the plain base model, LoRA layers removed (not merged)
    else:
        _cache = None
        dtype = precision_for(resolved).torch_dtype
        model = load_model(base_model, models_dir, resolved, dtype)
        tokenizer = load_tokenizer(base_model, models_dir)
    if adapter_key is not None:
        _check_adapter_base(adapter_key[0], base_model)
        try:
            model = PeftModel.from_pretrained(model, adapter_key[0], is_trainable=False)
        except Exception as exc:
            raise ModelLoadError(f"Failed to load model: adapter {adapter_key[0]}: {exc}") from exc
    model.eval()
    _cache = _Loaded(base_key=base_key, adapter_key=adapter_key, model=model, tokenizer=tokenizer)
    return model, tokenizer


def _generation_kwargs(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> dict[str, Any]:
    eos_ids = {tokenizer.eos_token_id}
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "repetition_penalty": REPETITION_PENALTY,
        "eos_token_id": sorted(i for i in eos_ids if i is not None),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }


def _encode(model: Any, tokenizer: PreTrainedTokenizerBase, system_prompt: str, prompt: str) -> dict[str, Any]:
    from services.gpu.data import render_prompt

    text = render_prompt(tokenizer, system_prompt, prompt)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return {k: v.to(model.device) for k, v in encoded.items()}


def generate(
    models_dir: str | Path,
    base_model: str,
    adapter_dir: str | Path | None,
    system_prompt: str,
    prompt: str,
    max_new_tokens: int = 128,
    device: str | None = None,
) -> str:
    """The model's answer to `prompt` (deterministic; stops at end of turn)."""
    import torch

    ensure_ml_stack()
    with _lock:
        model, tokenizer = _get(models_dir, base_model, adapter_dir, device)
        inputs = _encode(model, tokenizer, system_prompt, prompt)
        with torch.inference_mode():
            output = model.generate(**inputs, **_generation_kwargs(tokenizer, max_new_tokens))
    new_tokens = output[0][inputs["input_ids"].shape[1] :]
    answer: str = tokenizer.decode(new_tokens, skip_special_tokens=True)
    return answer.strip()


def iter_generate(
    models_dir: str | Path,
    base_model: str,
    adapter_dir: str | Path | None,
    system_prompt: str,
    prompt: str,
    max_new_tokens: int = 128,
    device: str | None = None,
) -> Iterator[str]:
    """Like `generate`, streaming text pieces as they are produced. Closing it stops generation."""
    import torch

    ensure_ml_stack()
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancelled = threading.Event()

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> bool:
            return cancelled.is_set()

    with _lock:
        model, tokenizer = _get(models_dir, base_model, adapter_dir, device)
        inputs = _encode(model, tokenizer, system_prompt, prompt)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300.0)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        **_generation_kwargs(tokenizer, max_new_tokens),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancel()]),
                    )
            except BaseException as exc:
                failure.append(exc)
                streamer.end()  # type: ignore[no-untyped-call]

        thread = threading.Thread(target=run, name="fastbrain-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            cancelled.set()
            thread.join()
    if failure:
        raise failure[0]
