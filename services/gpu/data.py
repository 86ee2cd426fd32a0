"""Turn a skill (system prompt + conversations) into tokenized, assistant-only-loss examples.

Rendering always goes through the base model's own chat template, the same way at
training and at inference (`render_prompt`). Labels are built here, not by TRL:
`assistant_only_loss=True` needs `{% generation %}` markers that SmolLM2's template
lacks. Each example carries `input_ids` and `labels` (-100 outside assistant answers);
TRL's collator pads both and uses the labels as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import DataFormatError
from shared.schemas.training import Exchange, Turn

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

Message = dict[str, str]


def _as_pair(turn: Exchange | dict[str, Any]) -> tuple[str, str]:
    if isinstance(turn, Exchange):
        return turn.user, turn.assistant
    try:
        return str(turn["user"]), str(turn["assistant"])
    except (KeyError, TypeError) as exc:
        raise DataFormatError(f"invalid format: each turn needs 'user' and 'assistant' fields, got {turn!r}") from exc


def exchanges(turn: Exchange | dict[str, Any]) -> list[tuple[str, str]]:
    """The (user, assistant) pairs of one example: its `history` (multi-turn), then its final exchange."""
    history: Sequence[Exchange | dict[str, Any]]
    if isinstance(turn, Exchange):
        history = turn.history if isinstance(turn, Turn) else []
    elif isinstance(turn, dict):
        history = turn.get("history") or []
        if not isinstance(history, list):
            raise DataFormatError(f"invalid format: 'history' must be a list of turns, got {history!r}")
    else:
        history = []
    return [*(_as_pair(h) for h in history), _as_pair(turn)]


def build_messages(system_prompt: str, turns: Sequence[Exchange | dict[str, Any]]) -> list[Message]:
    """Chat messages for a system prompt and user/assistant turns (empty system prompt: none).

    A turn with a `history` contributes its earlier exchanges first, so `[example]` renders a
    whole multi-turn example.
    """
    messages: list[Message] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    for turn in turns:
        for user, assistant in exchanges(turn):
            if not user.strip() or not assistant.strip():
                raise DataFormatError("invalid format: empty 'user' or 'assistant' message in a conversation")
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
    return messages


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):  # pragma: no cover - defensive
        raise DataFormatError("invalid format: the chat template did not render to text")
    return text


def _assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message], full: str) -> list[tuple[int, int]]:
    """Character spans of each assistant answer in `full`, each including its end-of-turn token.

    Rendered turn by turn: the text of turn i's answer is what the conversation up to that
    answer adds to the prefix rendered with `add_generation_prompt=True`, minus trailing
    template whitespace (for ChatML: "answer<|im_end|>" without the "\\n" after it).
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:index], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if upto.startswith(prefix) and full.startswith(upto):
            start, end = len(prefix), len(upto.rstrip())
        else:
            # Templates that are not prefix-stable (e.g. the system prompt moved into the last user
            # message): find the answer in the full text and extend it over the end-of-turn token.
            start = full.find(message["content"], cursor)
            if start < 0:
                raise DataFormatError("invalid format: could not locate an assistant answer in the rendered chat")
            end = start + len(message["content"])
            eos = tokenizer.eos_token or ""
            rest = full[end:]
            stripped = rest.lstrip(" ")
            if eos and stripped.startswith(eos):
                end += len(rest) - len(stripped) + len(eos)
        if end <= start:
            raise DataFormatError("invalid format: an assistant answer rendered to nothing")
        spans.append((start, end))
        cursor = end
    return spans


def _tokenize_full(
    tokenizer: PreTrainedTokenizerBase, system_prompt: str, turns: Sequence[Exchange | dict[str, Any]]
) -> dict[str, list[int]]:
    messages = build_messages(system_prompt, turns)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError("invalid format: a conversation needs at least one user/assistant turn")
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = _assistant_spans(tokenizer, messages, full)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (token_start, token_end) in enumerate(offsets):
        while span_index < len(spans) and spans[span_index][1] <= token_start:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if token_end > span_start and token_start < span_end and token_end > token_start:
            labels[position] = input_ids[position]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    turns: Sequence[Exchange | dict[str, Any]],
    max_seq_length: int,
) -> dict[str, list[int]]:
    """`input_ids` and `labels` for one conversation; labels are -100 except on assistant answers.

    Every assistant answer of the conversation (a multi-turn example's history included) is
    labelled: its content and its end-of-turn token. Sequences longer than `max_seq_length`
    are cut at the end (keep the start).
    """
    example = _tokenize_full(tokenizer, system_prompt, turns)
    return {"input_ids": example["input_ids"][:max_seq_length], "labels": example["labels"][:max_seq_length]}


@dataclass
class DataReport:
    """What tokenizing a skill's examples found; indices are 0-based positions in the skill's examples."""

    total: int
    max_seq_length: int
    too_long: list[int] = field(default_factory=list)  # longer than max_seq_length: cut at the end
    cut: list[int] = field(default_factory=list)  # cut before any answer token: dropped

    def warning(self, shown: int = 10) -> str | None:
        """A message naming the examples over max_seq_length (the first `shown` of them), or None."""
        if not self.too_long:
            return None
        listed = ", ".join(str(i + 1) for i in self.too_long[:shown])
        more = f" and {len(self.too_long) - shown} more" if len(self.too_long) > shown else ""
        message = (
            f"{len(self.too_long)} of {self.total} examples are longer than max_seq_length={self.max_seq_length} "
            f"tokens and are cut at the end (examples {listed}{more})"
        )
        if self.cut:
            message += f"; {len(self.cut)} lose their whole answer and are dropped"
        return message


def prepare_examples(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    conversations: Sequence[Exchange | dict[str, Any]],
    max_seq_length: int,
) -> tuple[list[dict[str, list[int]]], DataReport]:
    """One tokenized example per conversation (multi-turn ones whole), and a report on lengths.

    Examples left without any labelled token by truncation are dropped; when more than half of
    them would be, the data (or max_seq_length) is wrong: raise instead of training on scraps.
    """
    if not conversations:
        raise DataFormatError("invalid format: no training conversations (ensure no empty conversations)")
    report = DataReport(total=len(conversations), max_seq_length=max_seq_length)
    kept: list[dict[str, list[int]]] = []
    for index, turn in enumerate(conversations):
        full = _tokenize_full(tokenizer, system_prompt, [turn])
        if len(full["input_ids"]) > max_seq_length:
            report.too_long.append(index)
        example = {"input_ids": full["input_ids"][:max_seq_length], "labels": full["labels"][:max_seq_length]}
        if any(label != IGNORE_INDEX for label in example["labels"]):
            kept.append(example)
        else:
            report.cut.append(index)
    if not kept or 2 * len(report.cut) > report.total:
        listed = ", ".join(str(i + 1) for i in report.cut[:10])
        raise DataFormatError(
            f"invalid format: max_seq_length={max_seq_length} cuts {len(report.cut)} of {report.total} examples "
            f"before their answer (examples {listed}{'...' if len(report.cut) > 10 else ''}); "
            "raise max_seq_length or shorten the system prompt and messages"
        )
    return kept, report


def build_examples(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    conversations: Sequence[Exchange | dict[str, Any]],
    max_seq_length: int,
) -> list[dict[str, list[int]]]:
    """One tokenized example per conversation, dropping those left without any labelled token by truncation."""
    return prepare_examples(tokenizer, system_prompt, conversations, max_seq_length)[0]


def examples_to_dataset(examples: list[dict[str, list[int]]]) -> Dataset:
    """A `datasets.Dataset` with `input_ids` and `labels`, ready for SFTTrainer (skip_prepare_dataset)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}
    )


def build_dataset(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    conversations: Sequence[Exchange | dict[str, Any]],
    max_seq_length: int,
) -> Dataset:
    """A `datasets.Dataset` with `input_ids` and `labels`, ready for SFTTrainer (skip_prepare_dataset)."""
    return examples_to_dataset(build_examples(tokenizer, system_prompt, conversations, max_seq_length))


def render_prompt(tokenizer: PreTrainedTokenizerBase, system_prompt: str, user_prompt: str) -> str:
    """The inference prompt: system + user message + the assistant generation prompt."""
    messages: list[Message] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_prompt})
    return _render(tokenizer, messages, add_generation_prompt=True)


def dataset_sha256(system_prompt: str, conversations: Sequence[Exchange | dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the system prompt and conversations (history only when present)."""
    records: list[dict[str, Any]] = []
    for turn in conversations:
        pairs = exchanges(turn)
        record: dict[str, Any] = {"user": pairs[-1][0], "assistant": pairs[-1][1]}
        if len(pairs) > 1:
            record["history"] = [{"user": u, "assistant": a} for u, a in pairs[:-1]]
        records.append(record)
    canonical = json.dumps(
        {"system_prompt": system_prompt, "conversations": records},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def chat_template_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's chat template text ('' if it has none)."""
    template = tokenizer.chat_template or ""
    if isinstance(template, dict):  # named templates
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(str(template).encode("utf-8")).hexdigest()
