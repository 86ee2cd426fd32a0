"""Chat-template rendering and the chat-template check: one implementation, torch-free.

The API (its check before a job is queued, the estimate's token counts) and the trainer
(assistant-only labels, the check it repeats before training, the inference prompt) all
render conversations here:

- jinja2 renders the model's chat template the way transformers' `apply_chat_template` does:
  the same sandbox and options, the same `tojson`, `raise_exception` and `strftime_now`, the
  tokenizer's named special tokens as variables, `{% generation %}` blocks rendered as text;
- the Rust `tokenizers` library turns the text into token ids with character offsets.

A `ChatTokenizer` comes from a model directory (`tokenizer.json`, `tokenizer_config.json`,
`chat_template.jinja`: `load_chat_tokenizer`) or from a loaded Hugging Face tokenizer (its
Rust backend, template and special tokens: `from_hf_tokenizer`, duck-typed: no transformers
import here).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import DataFormatError
from shared.schemas.training import Exchange, Turn

if TYPE_CHECKING:
    from jinja2 import Template
    from tokenizers import Encoding, Tokenizer

log = logging.getLogger(__name__)

Message = dict[str, str]
Conversation = Exchange | Mapping[str, Any]  # a Turn, or the JSON a skill stores

# The named special tokens a chat template sees as variables (transformers' SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PROBE_ANSWER = "FASTBRAIN_PROBE_ANSWER"


# --- Messages ----------------------------------------------------------------------------------------------------


def _as_pair(turn: Conversation) -> tuple[str, str]:
    if isinstance(turn, Exchange):
        return turn.user, turn.assistant
    try:
        return str(turn["user"]), str(turn["assistant"])
    except (KeyError, TypeError) as exc:
        raise DataFormatError(f"invalid format: each turn needs 'user' and 'assistant' fields, got {turn!r}") from exc


def exchanges(turn: Conversation) -> list[tuple[str, str]]:
    """The (user, assistant) pairs of one example: its `history` (multi-turn), then its final exchange."""
    history: Sequence[Conversation]
    if isinstance(turn, Exchange):
        history = turn.history if isinstance(turn, Turn) else []
    elif isinstance(turn, Mapping):
        history = turn.get("history") or []
        if not isinstance(history, list):
            raise DataFormatError(f"invalid format: 'history' must be a list of turns, got {history!r}")
    else:
        history = []
    return [*(_as_pair(h) for h in history), _as_pair(turn)]


def build_messages(system_prompt: str, turns: Sequence[Conversation]) -> list[Message]:
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


# --- Rendering and tokens ----------------------------------------------------------------------------------------


def template_sha256(template: Any) -> str:
    """sha256 of a chat template's text ('' if there is none; named templates as sorted JSON)."""
    text = template or ""
    if isinstance(text, dict | list):
        text = json.dumps(text, sort_keys=True)
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


def _default_template(template: Any) -> str | None:
    """The template transformers uses without tools: the text, or the `default` of named templates."""
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # tokenizer_config.json's [{"name", "template"}, ...]
        template = {str(t.get("name")): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        found = template.get("default")
        return found if isinstance(found, str) else None
    return None


@lru_cache(maxsize=32)
def _compile(source: str) -> Template:
    """A chat template compiled as transformers compiles it (`_compile_jinja_template`)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers): rendered as their text."""

        tags = {"generation"}  # noqa: RUF012  # jinja2's own class attribute

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def _token_text(value: Any) -> str | None:
    """A special token as text: a string, or a serialized AddedToken (`{"content": ...}`)."""
    if isinstance(value, dict):
        value = value.get("content")
    return str(value) if value else None


@dataclass(frozen=True)
class RenderedExample:
    """One conversation through the chat template: its text, tokens and where the answers are."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in `text`
    spans: list[tuple[int, int]]  # character span of each assistant answer, its end-of-turn token included

    def assistant_mask(self) -> list[bool]:
        """Per token: is it part of an assistant answer (what the loss is computed on)."""
        mask = [False] * len(self.ids)
        span_index = 0
        for position, (token_start, token_end) in enumerate(self.offsets):
            while span_index < len(self.spans) and self.spans[span_index][1] <= token_start:
                span_index += 1
            if span_index == len(self.spans):
                break
            span_start, span_end = self.spans[span_index]
            if token_end > span_start and token_start < span_end and token_end > token_start:
                mask[position] = True
        return mask

    def answer_ends(self) -> list[int]:
        """Per assistant answer: the tokens up to and including its end (what max_seq_length must hold)."""
        return [sum(1 for token_start, _ in self.offsets if token_start < end) for _, end in self.spans]


class ChatTokenizer:
    """A model's chat template and tokenizer, without torch or transformers."""

    def __init__(self, encoder: Tokenizer, template: Any, special_tokens_map: Mapping[str, Any]) -> None:
        self.encoder = encoder
        self.template = _default_template(template)
        self.template_sha256 = template_sha256(template)
        self.special_tokens_map: dict[str, str] = {
            name: text for name in SPECIAL_TOKEN_NAMES if (text := _token_text(special_tokens_map.get(name)))
        }
        self.eos_token = self.special_tokens_map.get("eos_token")
        special = {str(t.content) for t in encoder.get_added_tokens_decoder().values() if t.special and t.content}
        special |= set(self.special_tokens_map.values())
        self.special_tokens: tuple[str, ...] = tuple(sorted(special, key=len, reverse=True))

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The messages as the chat template renders them (`apply_chat_template(..., tokenize=False)`)."""
        from jinja2 import TemplateError

        if self.template is None:
            raise DataFormatError("invalid format: the base model's tokenizer has no chat template")
        try:
            return _compile(self.template).render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens_map,
            )
        except TemplateError as exc:
            raise DataFormatError(f"invalid format: the chat template cannot render the conversation: {exc}") from exc

    def render_prompt(self, system_prompt: str, user_prompt: str) -> str:
        """The inference prompt: system + user message + the assistant generation prompt."""
        messages: list[Message] = []
        if system_prompt.strip():
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": user_prompt})
        return self.render(messages, add_generation_prompt=True)

    def encode(self, text: str) -> Encoding:
        """Token ids and offsets of rendered text (no special tokens added: the template placed them)."""
        return self.encoder.encode(text, add_special_tokens=False)

    def assistant_spans(self, messages: list[Message], full: str) -> list[tuple[int, int]]:
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
            prefix = self.render(messages[:index], add_generation_prompt=True)
            upto = self.render(messages[: index + 1])
            if upto.startswith(prefix) and full.startswith(upto):
                start, end = len(prefix), len(upto.rstrip())
            else:
                # Templates that are not prefix-stable (e.g. the system prompt moved into the last user
                # message): find the answer in the full text and extend it over the end-of-turn token.
                start = full.find(message["content"], cursor)
                if start < 0:
                    raise DataFormatError("invalid format: could not locate an assistant answer in the rendered chat")
                end = start + len(message["content"])
                eos = self.eos_token or ""
                rest = full[end:]
                stripped = rest.lstrip(" ")
                if eos and stripped.startswith(eos):
                    end += len(rest) - len(stripped) + len(eos)
            if end <= start:
                raise DataFormatError("invalid format: an assistant answer rendered to nothing")
            spans.append((start, end))
            cursor = end
        return spans

    def render_example(self, system_prompt: str, turns: Sequence[Conversation]) -> RenderedExample:
        """One conversation rendered and tokenized, with its assistant answers located."""
        messages = build_messages(system_prompt, turns)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataFormatError("invalid format: a conversation needs at least one user/assistant turn")
        full = self.render(messages)
        spans = self.assistant_spans(messages, full)
        encoded = self.encode(full)
        return RenderedExample(full, list(encoded.ids), [(o[0], o[1]) for o in encoded.offsets], spans)

    @cached_property
    def end_of_turn(self) -> str | None:
        """The token that ends an assistant turn: what the template puts right after an answer, when that is a
        special token (ChatML: `<|im_end|>`); otherwise the eos token (a template that drops it is then caught
        by `check_chat_template`)."""
        try:
            text = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": PROBE_ANSWER}])
        except DataFormatError:
            text = ""
        position = text.find(PROBE_ANSWER)
        if position >= 0:
            rest = text[position + len(PROBE_ANSWER) :].lstrip(" ")
            for token in self.special_tokens:
                if rest.startswith(token):
                    return token
        return self.eos_token


def from_hf_tokenizer(tokenizer: Any) -> ChatTokenizer:
    """The `ChatTokenizer` of a loaded Hugging Face (fast) tokenizer: its Rust backend, current chat
    template and named special tokens."""
    encoder = getattr(tokenizer, "backend_tokenizer", None)
    if encoder is None:
        raise DataFormatError(
            f"invalid format: the tokenizer {type(tokenizer).__name__} has no fast (Rust) backend to render with"
        )
    return ChatTokenizer(encoder, tokenizer.chat_template, dict(getattr(tokenizer, "special_tokens_map", {})))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@lru_cache(maxsize=8)
def _load(model_dir: str, stamps: tuple[float, ...]) -> ChatTokenizer:
    from tokenizers import Tokenizer

    directory = Path(model_dir)
    encoder = Tokenizer.from_file(str(directory / "tokenizer.json"))
    config = _read_json(directory / "tokenizer_config.json")
    specials = {**_read_json(directory / "special_tokens_map.json"), **config}
    template: Any = config.get("chat_template")
    template_path = directory / "chat_template.jinja"
    if template_path.is_file():  # transformers saves it here and loads it in preference
        template = template_path.read_text(encoding="utf-8")
    return ChatTokenizer(encoder, template, specials)


def load_chat_tokenizer(model_dir: str | Path) -> ChatTokenizer | None:
    """The `ChatTokenizer` saved in a model directory; None when it holds no `tokenizer.json`.

    Cached per directory until one of its tokenizer files changes.
    """
    directory = Path(model_dir)
    if not (directory / "tokenizer.json").is_file():
        return None
    stamps = tuple((directory / name).stat().st_mtime if (directory / name).is_file() else 0.0 for name in MODEL_FILES)
    return _load(str(directory), stamps)


# --- The chat-template check -------------------------------------------------------------------------------------


@dataclass
class TemplateProblem:
    index: int  # 0-based position in the skill's examples
    problem: str  # "empty_mask", "no_end_of_turn", "answer_truncated", "render_failed"
    detail: str


_PROBLEM_TEXT = {
    "empty_mask": "no assistant token left to train on",
    "no_end_of_turn": "an assistant turn does not end with the end-of-turn token",
    "answer_truncated": "an assistant answer is cut by max_seq_length",
    "render_failed": "the chat template cannot render the conversation",
}
# What `max_seq_length` causes: the examples a shorter run can drop instead of refusing (see `TemplateReport`).
LENGTH_PROBLEMS = frozenset({"answer_truncated", "empty_mask"})


def listed(indices: Sequence[int], shown: int = 10) -> str:
    """1-based example numbers, the first `shown` of them."""
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(str(i + 1) for i in indices[:shown]) + more


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

    def indices(self, *kinds: str) -> list[int]:
        """Examples with a problem of one of `kinds` (all kinds when none is given), in order."""
        return sorted({p.index for p in self.problems if not kinds or p.problem in kinds})

    def without(self, indices: set[int]) -> TemplateReport:
        """This report with the problems of the examples in `indices` left out (those examples are dropped)."""
        kept = [p for p in self.problems if p.index not in indices]
        return TemplateReport(self.total, self.max_seq_length, self.end_of_turn, self.template_sha256, kept)

    def message(self, shown: int = 10) -> str | None:
        """One sentence per kind of problem, naming the examples (1-based, the first `shown`), or None."""
        if not self.problems:
            return None
        by_kind: dict[str, list[TemplateProblem]] = {}
        for problem in self.problems:
            by_kind.setdefault(problem.problem, []).append(problem)
        parts: list[str] = []
        for kind, found in by_kind.items():
            parts.append(
                f"{_PROBLEM_TEXT[kind]} in {len(found)} of {self.total} examples "
                f"({listed([p.index for p in found], shown)})"
            )
        return "chat template check failed: " + "; ".join(parts) + f". First: {self.problems[0].detail}"


def _check_one(
    chat: ChatTokenizer,
    system_prompt: str,
    turn: Conversation,
    max_seq_length: int,
    end_of_turn: str | None,
    index: int,
) -> list[TemplateProblem]:
    try:
        example = chat.render_example(system_prompt, [turn])
    except DataFormatError as exc:
        return [TemplateProblem(index, "render_failed", f"example {index + 1}: {exc}")]
    problems: list[TemplateProblem] = []
    for number, (start, end) in enumerate(example.spans, 1):
        answer = example.text[start:end]
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
    for number, needed in enumerate(example.answer_ends(), 1):
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
    if not any(example.assistant_mask()[:max_seq_length]):
        problems.append(
            TemplateProblem(index, "empty_mask", f"example {index + 1}: no assistant token is left to train on")
        )
    return problems


def check_chat_template(
    chat: ChatTokenizer,
    system_prompt: str,
    conversations: Sequence[Conversation],
    max_seq_length: int,
) -> TemplateReport:
    """Render every example through the base model's chat template and report what would train badly.

    For each example: the assistant-only loss mask is non-empty, every assistant turn ends with the
    model's end-of-turn token, and no assistant answer is cut by `max_seq_length`.
    """
    end_of_turn = chat.end_of_turn
    report = TemplateReport(
        total=len(conversations),
        max_seq_length=max_seq_length,
        end_of_turn=end_of_turn,
        template_sha256=chat.template_sha256,
    )
    for index, turn in enumerate(conversations):
        report.problems.extend(_check_one(chat, system_prompt, turn, max_seq_length, end_of_turn, index))
    return report


# --- The API's check, before a job is queued ---------------------------------------------------------------------

MAX_CHECKED = 10_000  # examples the pre-check renders; the trainer checks them all again


def template_problems(
    models_dir: Path, base_model: str, system_prompt: str, conversations: Sequence[Conversation], max_seq_length: int
) -> str | None:
    """`check_chat_template` with the model's cached tokenizer files, before a job is queued.

    A message naming the examples the trainer would refuse, or None. Says nothing when the
    tokenizer or its template is not cached (the slim API image): the trainer checks anyway.
    """
    try:
        chat = load_chat_tokenizer(models_dir / base_model)
    except Exception as exc:  # a pre-check must never block training on its own failure
        log.warning("template pre-check unavailable for %s: %s", base_model, exc)
        return None
    if chat is None or chat.template is None:
        return None
    checked = conversations[:MAX_CHECKED]
    report = check_chat_template(chat, system_prompt, checked, max_seq_length)
    total = len(conversations)
    parts: list[str] = []
    if failed := report.indices("render_failed"):
        first = next(p.detail for p in report.problems if p.problem == "render_failed")
        parts.append(
            f"{len(failed)} of {total} examples cannot be rendered by {base_model}'s chat template "
            f"(examples {listed(failed)}; {first})"
        )
    if no_end := report.indices("no_end_of_turn"):
        parts.append(
            f"{len(no_end)} of {total} examples render an assistant turn without the end-of-turn "
            f"token {report.end_of_turn!r} in {base_model}'s chat template (examples {listed(no_end)})"
        )
    if cut := report.indices(*LENGTH_PROBLEMS):
        parts.append(
            f"{len(cut)} of {total} examples have an assistant answer cut by "
            f"max_seq_length={max_seq_length} (examples {listed(cut)}); raise max_seq_length or shorten them"
        )
    return "; ".join(parts) or None
