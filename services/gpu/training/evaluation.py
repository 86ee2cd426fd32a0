"""Side-by-side answers at the end of a run: held-out prompts answered by the base model and by the adapter.

For up to `MAX_SAMPLES` held-out examples (answers the adapter never trained on) the trainer renders the
prompt with the training chat template (the system prompt, any earlier turns of the example, its last
user message and the assistant generation prompt: `ChatTokenizer.render_prompt` / `render`), then
generates greedily, at most `MAX_NEW_TOKENS` tokens, stopping at the end-of-turn token: with the adapter
disabled (the base model) and with it. On the PEFT path both go in one left-padded batch, each row naming
its adapter (PEFT's mixed-adapter batch, `adapter_names`, with `__base__` for the adapter disabled): one
`generate` call, about a third faster on a CPU than two (decoding is memory-bound: each step reads all
the weights once, whatever the batch). Elsewhere (Unsloth), or if that call fails, two batches: the
adapter's, then the base model's under `disable_adapter()`. On a CPU it decodes on half the torch threads
(`cpu_threads`): measured on a shared 2-core machine, one thread took 7-9 s where two took 7 s when the
machine was quiet and 68-96 s while another process ran (each of the many small decoding ops waits for
every thread). Measured in docs/presets.md.
The result is stored with the job (`evaluation`) and shown in the dashboard's Complete view.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from shared.rules.templates import ChatTokenizer, Conversation, build_messages, exchanges

MAX_SAMPLES = 5
MAX_NEW_TOKENS = 48


def sample_prompt(chat: ChatTokenizer, system_prompt: str, turn: Conversation) -> tuple[str, str, str]:
    """(rendered prompt, last user message, reference answer) of one held-out example."""
    pairs = exchanges(turn)
    user, reference = pairs[-1]
    if len(pairs) == 1:
        return chat.render_prompt(system_prompt, user), user, reference
    history = [{"user": u, "assistant": a} for u, a in pairs[:-1]]
    messages = [*build_messages(system_prompt, history), {"role": "user", "content": user}]
    return chat.render(messages, add_generation_prompt=True), user, reference


def stop_token_ids(tokenizer: Any, chat: ChatTokenizer) -> list[int]:
    """The end-of-turn token (ChatML: `<|im_end|>`) and the eos token, as ids."""
    ids = {tokenizer.eos_token_id}
    if chat.end_of_turn:
        ids.add(tokenizer.convert_tokens_to_ids(chat.end_of_turn))
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def cpu_threads(available: int) -> int:
    """Torch threads for decoding on a CPU: half of them (at least one). Decoding is bound by reading the
    weights, which half the cores already do at full speed, and the rest is headroom for whatever else runs."""
    return max(1, available // 2)


# PEFT's name for "no adapter" in a mixed-adapter batch.
BASE_ADAPTER = "__base__"


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    adapter_names: Sequence[str] | None = None,
) -> list[str]:
    """Greedy answers to token-id prompts, left-padded into one batch; each cut at its first stop token.
    `adapter_names`: the adapter of each row (PEFT's mixed batch; `BASE_ADAPTER` for none)."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        use_cache=True,
    )
    mixed = {"adapter_names": list(adapter_names)} if adapter_names is not None else {}
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            **mixed,
        )
    answers = []
    for row in output[:, width:].tolist():
        end = next((k for k, token in enumerate(row) if token in stop_ids), len(row))
        answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return answers


def _answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    stop_ids: list[int],
    max_new_tokens: int,
    one_batch: bool,
) -> tuple[list[str], list[str]]:
    """(the adapter's answers, the base model's), in one mixed batch when `one_batch`, else two."""
    if one_batch:
        names = [model.active_adapter] * len(prompts) + [BASE_ADAPTER] * len(prompts)
        try:
            both = generate_batch(model, tokenizer, prompts + prompts, stop_ids, max_new_tokens, names)
        except (TypeError, ValueError, NotImplementedError):  # a PEFT or model without mixed batches
            pass
        else:
            return both[: len(prompts)], both[len(prompts) :]
    adapter = generate_batch(model, tokenizer, prompts, stop_ids, max_new_tokens)
    with model.disable_adapter():
        base = generate_batch(model, tokenizer, prompts, stop_ids, max_new_tokens)
    return adapter, base


def side_by_side(
    model: Any,
    tokenizer: Any,
    chat: ChatTokenizer,
    system_prompt: str,
    conversations: Sequence[Conversation],
    *,
    step: int | None,
    training_path: str = "peft",
    max_samples: int = MAX_SAMPLES,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """The `evaluation` document: for up to `max_samples` held-out conversations, the prompt, the reference
    answer, the base model's and the adapter's; with the settings and the seconds it took."""
    chosen = list(conversations)[:max_samples]
    document: dict[str, Any] = {
        "samples": [],
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "step": step,
        "seconds": 0.0,
    }
    if not chosen:
        return document
    import torch

    started = time.perf_counter()
    rendered = [sample_prompt(chat, system_prompt, turn) for turn in chosen]
    prompts = [list(chat.encode(prompt).ids) for prompt, _, _ in rendered]
    stop_ids = stop_token_ids(tokenizer, chat)
    was_training, threads = model.training, torch.get_num_threads()
    on_cpu = next(model.parameters()).device.type == "cpu"
    try:
        if on_cpu:
            torch.set_num_threads(cpu_threads(threads))
        model.eval()
        if training_path == "unsloth":  # Unsloth generates only after switching its kernels to inference
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(model)
        one_batch = training_path != "unsloth"
        adapter, base = _answers(model, tokenizer, prompts, stop_ids, max_new_tokens, one_batch=one_batch)
    finally:
        torch.set_num_threads(threads)
        if was_training:
            model.train()
    document["samples"] = [
        {"prompt": user, "reference": reference, "base": base_answer, "adapter": adapter_answer}
        for (_, user, reference), base_answer, adapter_answer in zip(rendered, base, adapter, strict=True)
    ]
    document["seconds"] = round(time.perf_counter() - started, 2)
    return document
