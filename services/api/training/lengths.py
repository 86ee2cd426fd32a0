"""A cheap pre-check, before a job is queued, of examples longer than max_seq_length.

It counts the base model's real tokens with the Rust `tokenizers` library (no torch)
when the model is in the cache (`<models_dir>/<base_model>/tokenizer.json`), rendering
each example with the model's own chat template through jinja2 as transformers does.
Without a cached tokenizer it says nothing: the trainer checks again with the real
tokenizer, warns, and fails fast when most answers would be cut away.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structlog import get_logger

if TYPE_CHECKING:
    from jinja2 import Template
    from tokenizers import Tokenizer

log = get_logger(__name__)

MAX_CHECKED = 10_000
PER_MESSAGE_OVERHEAD = 5  # role markers when no chat template can be rendered


def _special(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


@lru_cache(maxsize=8)
def _load(model_dir: str, mtime: float) -> tuple[Tokenizer, Template | None, dict[str, str]]:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    directory = Path(model_dir)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {}
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
    source = config.get("chat_template")
    template_path = directory / "chat_template.jinja"
    if template_path.is_file():
        source = template_path.read_text()
    template = None
    if isinstance(source, str):

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda value, **kwargs: json.dumps(value, ensure_ascii=False)
        try:
            template = env.from_string(source)
        except TemplateError:
            template = None
    specials = {"bos_token": _special(config.get("bos_token")), "eos_token": _special(config.get("eos_token"))}
    return tokenizer, template, specials


@lru_cache(maxsize=8)
def _special_tokens(model_dir: str, mtime: float) -> tuple[str, ...]:
    """The tokenizer's special added tokens, longest first."""
    document = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    found = {str(t["content"]) for t in document.get("added_tokens", []) if t.get("special") and t.get("content")}
    return tuple(sorted(found, key=len, reverse=True))


def _messages(system_prompt: str, conversation: dict[str, Any]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for turn in [*(conversation.get("history") or []), conversation]:
        messages.append({"role": "user", "content": str(turn.get("user", ""))})
        messages.append({"role": "assistant", "content": str(turn.get("assistant", ""))})
    return messages


def _renderer(template: Template | None, specials: dict[str, str]) -> Callable[[list[dict[str, str]]], str]:
    def render(messages: list[dict[str, str]]) -> str:
        if template is not None:
            try:
                return template.render(messages=messages, add_generation_prompt=False, **specials)
            except Exception:  # an unusual template: fall back to plain text
                pass
        return "\n".join(m["content"] for m in messages)

    return render


def too_long_examples(
    models_dir: Path, base_model: str, system_prompt: str, conversations: Sequence[dict[str, Any]], max_seq_length: int
) -> list[int] | None:
    """0-based indices of examples longer than `max_seq_length` tokens; None when no tokenizer is cached."""
    directory = models_dir / base_model
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    try:
        tokenizer, template, specials = _load(str(directory), tokenizer_file.stat().st_mtime)
    except Exception as exc:  # a pre-check must never block training
        log.warning("length_precheck_unavailable", base_model=base_model, error=str(exc))
        return None
    render = _renderer(template, specials)
    checked = conversations[:MAX_CHECKED]
    texts = [render(_messages(system_prompt, c)) for c in checked]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    overhead = 0 if template is not None else PER_MESSAGE_OVERHEAD
    return [
        index
        for index, (conversation, tokens) in enumerate(zip(checked, encoded, strict=True))
        if len(tokens.ids) + overhead * len(_messages(system_prompt, conversation)) > max_seq_length
    ]


def length_warning(
    models_dir: Path, base_model: str, system_prompt: str, conversations: Sequence[dict[str, Any]], max_seq_length: int
) -> str | None:
    """A warning naming the examples over max_seq_length (first ten), or None."""
    found = too_long_examples(models_dir, base_model, system_prompt, conversations, max_seq_length)
    if not found:
        return None
    listed = ", ".join(str(i + 1) for i in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return (
        f"{len(found)} of {len(conversations)} examples are longer than max_seq_length={max_seq_length} "
        f"{base_model} tokens and will be cut at the end (examples {listed}); raise max_seq_length or shorten them"
    )


PROBE_ANSWER = "FASTBRAIN_PROBE_ANSWER"


def template_problems(
    models_dir: Path, base_model: str, system_prompt: str, conversations: Sequence[dict[str, Any]], max_seq_length: int
) -> str | None:
    """The trainer's chat-template check, before a job is queued; a message naming the examples, or None.

    Renders every example with the model's cached chat template (jinja2) and counts real tokens:
    each assistant turn must end with the end-of-turn token (the special token the template puts
    after an answer, else eos) and end within `max_seq_length` (an answer cut there teaches the
    model not to stop; a cut before it leaves nothing to learn). Says nothing (None) when the
    tokenizer or template is not cached or cannot be rendered: the trainer checks again.
    """
    directory = models_dir / base_model
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    try:
        mtime = tokenizer_file.stat().st_mtime
        tokenizer, template, specials = _load(str(directory), mtime)
        special_tokens = _special_tokens(str(directory), mtime)
    except Exception as exc:  # a pre-check must never block training on its own failure
        log.warning("template_precheck_unavailable", base_model=base_model, error=str(exc))
        return None
    if template is None:
        return None

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        assert template is not None
        return template.render(messages=messages, add_generation_prompt=generation, **specials)

    try:
        probe = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": PROBE_ANSWER}], False)
        after = probe[probe.index(PROBE_ANSWER) + len(PROBE_ANSWER) :].lstrip(" ")
        end_of_turn = next((t for t in special_tokens if after.startswith(t)), None) or specials["eos_token"] or None
        no_end: list[int] = []
        cut: list[int] = []
        for index, conversation in enumerate(conversations[:MAX_CHECKED]):
            messages = _messages(system_prompt, conversation)
            full = render(messages, False)
            spans: list[tuple[int, int]] = []
            for position, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                prefix = render(messages[:position], True)
                upto = render(messages[: position + 1], False)
                if not (upto.startswith(prefix) and full.startswith(upto)):
                    spans = []  # not prefix-stable: leave this example to the trainer's check
                    break
                spans.append((len(prefix), len(upto.rstrip())))
            if not spans:
                continue
            if end_of_turn is None or any(not full[start:end].endswith(end_of_turn) for start, end in spans):
                no_end.append(index)
            offsets = tokenizer.encode(full, add_special_tokens=False).offsets
            if any(sum(1 for start, _ in offsets if start < end) > max_seq_length for _, end in spans):
                cut.append(index)
    except Exception as exc:
        log.warning("template_precheck_failed", base_model=base_model, error=str(exc))
        return None

    def listed(found: list[int]) -> str:
        return ", ".join(str(i + 1) for i in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")

    parts: list[str] = []
    if no_end:
        parts.append(
            f"{len(no_end)} of {len(conversations)} examples render an assistant turn without the end-of-turn "
            f"token {end_of_turn!r} in {base_model}'s chat template (examples {listed(no_end)})"
        )
    if cut:
        parts.append(
            f"{len(cut)} of {len(conversations)} examples have an assistant answer cut by "
            f"max_seq_length={max_seq_length} (examples {listed(cut)}); raise max_seq_length or shorten them"
        )
    return "; ".join(parts) or None
