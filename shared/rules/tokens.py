"""Token counting: how many tokens each example is, as the trainer renders and tokenizes it.

One counter for the estimate, the API's length warning, the data report and the trainer's
length report: the example rendered through the model's chat template
(`shared.rules.templates`) and tokenized by the Rust `tokenizers` library. Without a cached
tokenizer (the slim API image) the estimate falls back to characters / 3.6 plus role markers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from shared.errors import DataFormatError
from shared.rules.templates import (
    MAX_CHECKED,
    ChatTokenizer,
    Conversation,
    build_messages,
    exchanges,
    load_chat_tokenizer,
)

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.6
HEURISTIC_OVERHEAD_PER_EXCHANGE = 12  # role markers and end-of-turn tokens, when no tokenizer is cached
PER_MESSAGE_OVERHEAD = 5  # role markers per message when the chat template cannot render (ChatML-sized)

TokenCount = Literal["tokenizer", "heuristic"]


def _pairs(conversation: Conversation) -> list[tuple[str, str]]:
    """The (user, assistant) texts of an example, leniently: a count never refuses an example."""
    try:
        return exchanges(conversation)
    except DataFormatError:  # malformed: count what is there
        if not isinstance(conversation, Mapping):
            return []
        return [(str(conversation.get("user", "")), str(conversation.get("assistant", "")))]


def heuristic_tokens(system_prompt: str, conversation: Conversation) -> int:
    """characters / 3.6 plus role markers: the count without a cached tokenizer."""
    pairs = _pairs(conversation)
    chars = len(system_prompt) + sum(len(user) + len(assistant) for user, assistant in pairs)
    return int(chars / CHARS_PER_TOKEN + HEURISTIC_OVERHEAD_PER_EXCHANGE * len(pairs))


def example_tokens(chat: ChatTokenizer, system_prompt: str, conversations: Sequence[Conversation]) -> list[int]:
    """Tokens of each example rendered through the chat template (whole: before any max_seq_length cut).

    An example the template cannot render (or a model without a template) counts its messages'
    contents plus `PER_MESSAGE_OVERHEAD` each: the template check reports it, a count does not.
    """
    texts: list[str] = []
    overheads: list[int] = []
    for conversation in conversations:
        try:
            texts.append(chat.render(build_messages(system_prompt, [conversation])))
            overheads.append(0)
        except DataFormatError:
            pairs = _pairs(conversation)
            contents = [system_prompt] if system_prompt.strip() else []
            contents += [text for pair in pairs for text in pair]
            texts.append("\n".join(contents))
            overheads.append(PER_MESSAGE_OVERHEAD * len(contents))
    encoded = chat.encoder.encode_batch(texts, add_special_tokens=False) if texts else []
    return [len(e.ids) + overhead for e, overhead in zip(encoded, overheads, strict=True)]


def count_example_tokens(
    models_dir: Path | None, base_model: str, system_prompt: str, conversations: Sequence[Conversation]
) -> tuple[list[int], TokenCount]:
    """Tokens of each example and how they were counted: with the model's cached tokenizer
    (`<models_dir>/<base_model>/tokenizer.json`) or, without one, the heuristic."""
    chat: ChatTokenizer | None = None
    if models_dir is not None:
        try:
            chat = load_chat_tokenizer(models_dir / base_model)
        except Exception as exc:  # an unreadable tokenizer: fall back to the heuristic
            log.warning("tokenizer of %s unreadable, counting heuristically: %s", base_model, exc)
    if chat is None:
        return [heuristic_tokens(system_prompt, c) for c in conversations], "heuristic"
    return example_tokens(chat, system_prompt, conversations), "tokenizer"


def over_length(counts: Sequence[int], max_seq_length: int) -> list[int]:
    """0-based indices of the examples longer than `max_seq_length` tokens."""
    return [index for index, count in enumerate(counts) if count > max_seq_length]


def length_warning(
    models_dir: Path, base_model: str, system_prompt: str, conversations: Sequence[Conversation], max_seq_length: int
) -> str | None:
    """The API's warning, before a job is queued, naming the examples longer than max_seq_length
    (the first ten), or None; None too when the model's tokenizer is not cached."""
    checked = conversations[:MAX_CHECKED]
    counts, how = count_example_tokens(models_dir, base_model, system_prompt, checked)
    found = over_length(counts, max_seq_length) if how == "tokenizer" else []
    if not found:
        return None
    listed = ", ".join(str(i + 1) for i in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    return (
        f"{len(found)} of {len(conversations)} examples are longer than max_seq_length={max_seq_length} "
        f"{base_model} tokens and will be cut at the end (examples {listed}); raise max_seq_length or shorten them"
    )
