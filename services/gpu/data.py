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


# --- Chat-template check ---------------------------------------------------------------------------------------

_PROBE_ANSWER = "FASTBRAIN_PROBE_ANSWER"


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The token that ends an assistant turn: what the template puts right after an answer, when that is a
    special token (ChatML: `<|im_end|>`); otherwise the tokenizer's eos token (a template that drops it is
    then caught by `check_chat_template`)."""
    special = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    special |= {str(t.content) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    try:
        text = _render(
            tokenizer,
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE_ANSWER}],
            add_generation_prompt=False,
        )
    except Exception:
        text = ""
    position = text.find(_PROBE_ANSWER)
    if position >= 0:
        rest = text[position + len(_PROBE_ANSWER) :].lstrip(" ")
        for token in sorted(special, key=len, reverse=True):
            if token and rest.startswith(token):
                return token
    eos = tokenizer.eos_token
    return str(eos) if eos else None


@dataclass
class TemplateProblem:
    index: int  # 0-based position in the skill's examples
    problem: str  # "empty_mask", "no_end_of_turn", "answer_truncated", "render_failed"
    detail: str


@dataclass
class TemplateReport:
    """What rendering every example through the base model's chat template found."""

    total: int
    max_seq_length: int
    end_of_turn: str | None
    template_sha256: str
    problems: list[TemplateProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, shown: int = 10) -> str | None:
        """One sentence per kind of problem, naming the examples (1-based, the first `shown`), or None."""
        if not self.problems:
            return None
        by_kind: dict[str, list[TemplateProblem]] = {}
        for problem in self.problems:
            by_kind.setdefault(problem.problem, []).append(problem)
        parts: list[str] = []
        for kind, found in by_kind.items():
            listed = ", ".join(str(p.index + 1) for p in found[:shown])
            more = f" and {len(found) - shown} more" if len(found) > shown else ""
            parts.append(f"{_PROBLEM_TEXT[kind]} in {len(found)} of {self.total} examples ({listed}{more})")
        return "chat template check failed: " + "; ".join(parts) + f". First: {self.problems[0].detail}"


_PROBLEM_TEXT = {
    "empty_mask": "no assistant token left to train on",
    "no_end_of_turn": "an assistant turn does not end with the end-of-turn token",
    "answer_truncated": "an assistant answer is cut by max_seq_length",
    "render_failed": "the chat template cannot render the conversation",
}


def _check_one(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    turn: Exchange | dict[str, Any],
    max_seq_length: int,
    end_of_turn: str | None,
    index: int,
) -> list[TemplateProblem]:
    try:
        messages = build_messages(system_prompt, [turn])
        full = _render(tokenizer, messages, add_generation_prompt=False)
        spans = _assistant_spans(tokenizer, messages, full)
    except DataFormatError as exc:
        return [TemplateProblem(index, "render_failed", f"example {index + 1}: {exc}")]
    problems: list[TemplateProblem] = []
    for number, (start, end) in enumerate(spans, 1):
        answer = full[start:end]
        if end_of_turn is None or not answer.endswith(end_of_turn):
            problems.append(
                TemplateProblem(
                    index,
                    "no_end_of_turn",
                    f"example {index + 1}, assistant turn {number} renders as {answer[-40:]!r} without the "
                    f"end-of-turn token {end_of_turn!r}: the model would never learn to stop",
                )
            )
            break
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
    for number, (_start, end) in enumerate(spans, 1):
        needed = sum(1 for token_start, _ in offsets if token_start < end)  # tokens up to the answer's end
        if needed > max_seq_length:
            problems.append(
                TemplateProblem(
                    index,
                    "answer_truncated",
                    f"example {index + 1}, assistant turn {number} ends at token {needed} but "
                    f"max_seq_length={max_seq_length}: raise max_seq_length or shorten the example",
                )
            )
            break
    labelled = tokenize_conversation(tokenizer, system_prompt, [turn], max_seq_length)["labels"]
    if not any(label != IGNORE_INDEX for label in labelled):
        problems.append(
            TemplateProblem(index, "empty_mask", f"example {index + 1}: no assistant token is left to train on")
        )
    return problems


def check_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str,
    conversations: Sequence[Exchange | dict[str, Any]],
    max_seq_length: int,
) -> TemplateReport:
    """Render every example through the base model's chat template and report what would train badly.

    For each example: the assistant-only loss mask is non-empty, every assistant turn ends with the
    model's end-of-turn token, and no assistant answer is cut by `max_seq_length`.
    """
    end_of_turn = end_of_turn_token(tokenizer)
    report = TemplateReport(
        total=len(conversations),
        max_seq_length=max_seq_length,
        end_of_turn=end_of_turn,
        template_sha256=chat_template_sha256(tokenizer),
    )
    for index, turn in enumerate(conversations):
        report.problems.extend(_check_one(tokenizer, system_prompt, turn, max_seq_length, end_of_turn, index))
    return report


# --- Evaluation split ------------------------------------------------------------------------------------------

MIN_EXAMPLES_FOR_EVAL = 10
EVAL_SHARE = 0.2
MAX_EVAL_EXAMPLES = 50


def eval_split(count: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: 20% held out (at least 2, at most 50) from 10 examples up, else none.

    Deterministic for a seed and count.
    """
    if count < MIN_EXAMPLES_FOR_EVAL:
        return list(range(count)), []
    import math
    import random

    held = min(max(2, math.ceil(EVAL_SHARE * count)), MAX_EVAL_EXAMPLES)
    chosen = set(random.Random(seed).sample(range(count), held))
    return [i for i in range(count) if i not in chosen], sorted(chosen)


def held_out_loss(model: Any, examples: Sequence[dict[str, list[int]]]) -> float | None:
    """Mean cross-entropy over the assistant tokens of `examples` (token-weighted), one example at a time."""
    if not examples:
        return None
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for example in examples:
                n = sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)  # shifted by one
                if not n:
                    continue
                out = model(
                    input_ids=torch.tensor([example["input_ids"]], device=device),
                    labels=torch.tensor([example["labels"]], device=device),
                    use_cache=False,
                )
                total += float(out.loss) * n
                count += n
    finally:
        if was_training:
            model.train()
    return round(total / count, 6) if count else None
