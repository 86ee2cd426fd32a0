"""Training-data files to skill examples, the format found from the content.

Formats (multi-turn where the format has it):

- `hive215`: the skill's own JSON, `{skill_id?, system_prompt?, conversations: [{user, assistant}]}`,
  or JSON/JSONL records of `{user, assistant}` (an optional `history` of earlier pairs).
- `openai`: chat JSONL (or a JSON array), one `{"messages": [{role, content}, ...]}` per line.
- `sharegpt`: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}` records.
- `alpaca`: `{"instruction", "input"?, "output"}` records; user = instruction, plus
  a blank line and the input when there is one.
- `csv`: a header naming the columns `user` and `assistant` (comma, tab or semicolon separated).

All or nothing: any problem raises `InvalidTrainingFile`, whose `details.problems` lists
each one with the line (JSON, JSONL) or row (CSV; the header is row 1) it is on. Pure
Python: runs in the API, which never imports torch.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from services.api.errors import ApiError, Unprocessable
from shared.schemas.skills import MAX_HISTORY, MAX_TURN_CHARS, Conversation, Exchange
from shared.schemas.text import NUL, NUL_MESSAGE

MAX_IMPORT_BYTES = 20 * 1024 * 1024
MAX_PROBLEMS = 50

FORMAT_NAMES = {
    "hive215": "HIVE215 JSON",
    "openai": "OpenAI chat",
    "sharegpt": "ShareGPT",
    "alpaca": "Alpaca",
    "csv": "CSV",
}
SUPPORTED = (
    "HIVE215 JSON ({conversations: [{user, assistant}]}), OpenAI chat JSONL ({messages: [...]}), "
    "ShareGPT ({conversations: [{from, value}]}), Alpaca ({instruction, input, output}) "
    "or CSV with a 'user,assistant' header"
)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}

Problem = dict[str, Any]


class InvalidTrainingFile(Unprocessable):
    """A file that cannot be imported; nothing of it is added."""

    code = "invalid_training_file"

    def __init__(self, problems: list[Problem], *, filename: str = "", format: str | None = None) -> None:
        shown = "; ".join(str(p["message"]) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        kind = f" as {FORMAT_NAMES[format]}" if format in FORMAT_NAMES else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(
            f"Could not import '{filename or 'the file'}'{kind}: {count}, nothing was added. {shown}{more}",
            details={"filename": filename, "format": format, "problems": problems},
            suggestions=[
                "Fix the lines or rows listed in details.problems and upload the file again.",
                f"Supported formats: {SUPPORTED}.",
            ],
        )


class FileTooLarge(ApiError):
    status_code = 413
    code = "file_too_large"


@dataclass
class ParsedImport:
    format: str
    conversations: list[Conversation]
    sources: list[str]  # where each conversation is in the file: "line 3", "row 4"
    system_prompt: str | None = None
    skill_id: str | None = None
    warnings: list[str] = field(default_factory=list)


class _Bad(Exception):
    """One record's problem (its location is added by the caller)."""


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.truncated = False

    def add(self, where: dict[str, int], message: str) -> None:
        if len(self.items) >= MAX_PROBLEMS:
            self.truncated = True
            return
        self.items.append({**where, "message": f"{_where_text(where)}: {message}"})

    def __bool__(self) -> bool:
        return bool(self.items)


def _where_text(where: dict[str, int]) -> str:
    if "row" in where:
        return f"row {where['row']}"
    return f"line {where.get('line', 1)}"


# --- decoding -------------------------------------------------------------------------------


def decode(raw: bytes) -> str:
    """UTF-8 text (a BOM is dropped); invalid UTF-8 is a problem naming its byte offset and line."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidTrainingFile([{"line": 1, "message": "line 1: the file is UTF-16; save it as UTF-8"}])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise InvalidTrainingFile(
            [
                {
                    "line": line,
                    "byte": exc.start,
                    "message": f"line {line}: invalid UTF-8 at byte {exc.start} (0x{bad}); save the file as UTF-8",
                }
            ]
        ) from exc
    return text.removeprefix("\ufeff")


# --- records --------------------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if value is None:
        raise _Bad(f"{what} is missing")
    if not isinstance(value, str):
        raise _Bad(f"{what} must be text, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"{what} is empty")
    if NUL in value:  # PostgreSQL text cannot hold it; system prompts too are stored (POST /v1/files)
        raise _Bad(f"{what} {NUL_MESSAGE}")
    if len(value) > MAX_TURN_CHARS:
        raise _Bad(f"{what} is longer than {MAX_TURN_CHARS} characters ({len(value)})")
    return value


def _content(value: Any, what: str) -> str:
    """OpenAI content: a string, or a list of text parts."""
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Bad(f"{what} has a '{kind}' part: only text can be trained on")
        value = "\n".join(parts)
    return _text(value, what)


def _conversation(messages: list[tuple[str, str]]) -> tuple[Conversation, str | None]:
    """(role, content) messages: optional system messages first, then user/assistant alternating,
    ending with the assistant."""
    systems: list[str] = []
    index = 0
    while index < len(messages) and messages[index][0] == "system":
        systems.append(messages[index][1])
        index += 1
    rest = messages[index:]
    if not rest:
        raise _Bad("no user or assistant messages")
    expected = "user"
    for number, (role, _) in enumerate(rest, start=index + 1):
        if role == "system":
            raise _Bad(f"message {number} is a system message: system messages may only come first")
        if role != expected:
            raise _Bad(
                f"wrong role order: message {number} is '{role}' but '{expected}' was expected "
                "(messages must alternate user, assistant, user, ...)"
            )
        expected = "assistant" if role == "user" else "user"
    if rest[-1][0] != "assistant":
        raise _Bad(f"wrong role order: the last message (message {len(messages)}) must be the assistant's answer")
    pairs = [(rest[i][1], rest[i + 1][1]) for i in range(0, len(rest), 2)]
    if len(pairs) - 1 > MAX_HISTORY:
        raise _Bad(f"{len(pairs)} exchanges in one conversation; at most {MAX_HISTORY + 1} are allowed")
    try:
        conversation = Conversation(
            user=pairs[-1][0],
            assistant=pairs[-1][1],
            history=[Exchange(user=u, assistant=a) for u, a in pairs[:-1]],
        )
    except ValidationError as exc:  # pragma: no cover - the checks above come first
        raise _Bad(exc.errors()[0]["msg"]) from exc
    return conversation, "\n\n".join(systems) if systems else None


def _messages_list(record: dict[str, Any], key: str) -> list[Any]:
    value = record.get(key)
    if not isinstance(value, list):
        raise _Bad(f"'{key}' must be a list of messages")
    if not value:
        raise _Bad(f"'{key}' is empty")
    return value


def _openai(record: dict[str, Any]) -> tuple[Conversation, str | None]:
    messages: list[tuple[str, str]] = []
    for number, message in enumerate(_messages_list(record, "messages"), start=1):
        if not isinstance(message, dict):
            raise _Bad(f"message {number} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in OPENAI_ROLES:
            raise _Bad(f"message {number} has role {role!r}; expected 'system', 'user' or 'assistant'")
        messages.append((OPENAI_ROLES[role], _content(message.get("content"), f"message {number} ({role})")))
    return _conversation(messages)


def _sharegpt(record: dict[str, Any]) -> tuple[Conversation, str | None]:
    messages: list[tuple[str, str]] = []
    if record.get("system") is not None:
        messages.append(("system", _text(record["system"], "'system'")))
    for number, message in enumerate(_messages_list(record, "conversations"), start=1):
        if not isinstance(message, dict):
            raise _Bad(f"message {number} must be an object with 'from' and 'value'")
        sender = message.get("from")
        if sender not in SHAREGPT_ROLES:
            raise _Bad(f"message {number} is from {sender!r}; expected 'human', 'gpt' or 'system'")
        messages.append((SHAREGPT_ROLES[sender], _text(message.get("value"), f"message {number} ({sender})")))
    return _conversation(messages)


def _alpaca(record: dict[str, Any]) -> tuple[Conversation, str | None]:
    instruction = _text(record.get("instruction"), "'instruction'")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _Bad(f"'input' must be text, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    output = _text(record.get("output"), "'output'")
    system = _text(record["system"], "'system'") if record.get("system") else None
    return _conversation([*([("system", system)] if system else []), ("user", user), ("assistant", output)])


def _pair(record: dict[str, Any]) -> tuple[Conversation, str | None]:
    messages: list[tuple[str, str]] = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise _Bad("'history' must be a list of {user, assistant}")
    for number, earlier in enumerate(history, start=1):
        if not isinstance(earlier, dict):
            raise _Bad(f"history[{number}] must be an object with 'user' and 'assistant'")
        messages.append(("user", _text(earlier.get("user"), f"history[{number}] 'user'")))
        messages.append(("assistant", _text(earlier.get("assistant"), f"history[{number}] 'assistant'")))
    messages.append(("user", _text(record.get("user"), "'user'")))
    messages.append(("assistant", _text(record.get("assistant"), "'assistant'")))
    return _conversation(messages)


Reader = Callable[[dict[str, Any]], tuple[Conversation, str | None]]
READERS: dict[str, Reader] = {"openai": _openai, "sharegpt": _sharegpt, "alpaca": _alpaca, "hive215": _pair}


def record_format(record: Any) -> str | None:
    """Which format one JSON record is in, from its keys."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "openai"
    conversations = record.get("conversations")
    if isinstance(conversations, list):
        first = next((m for m in conversations if isinstance(m, dict)), {})
        if "from" in first or "value" in first:
            return "sharegpt"
        return "hive215-skill"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "user" in record or "assistant" in record:
        return "hive215"
    return None


# --- JSON positions -------------------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return match.end() if match else index


def _array_items(text: str, index: int) -> list[int]:
    """Start offsets of the items of the JSON array starting at `index` (the '[')."""
    starts: list[int] = []
    index = _skip(text, index + 1)
    if text[index] == "]":
        return starts
    while True:
        starts.append(index)
        _, index = _DECODER.raw_decode(text, index)
        index = _skip(text, index)
        if text[index] != ",":
            return starts
        index = _skip(text, index + 1)


def _object_members(text: str, index: int) -> dict[str, int]:
    """Start offsets of the values of the JSON object starting at `index` (the '{')."""
    members: dict[str, int] = {}
    index = _skip(text, index + 1)
    if text[index] == "}":
        return members
    while True:
        key, index = _DECODER.raw_decode(text, index)
        index = _skip(text, _skip(text, index) + 1)  # past ':'
        members[key] = index
        _, index = _DECODER.raw_decode(text, index)
        index = _skip(text, index)
        if text[index] != ",":
            return members
        index = _skip(text, index + 1)


class _Lines:
    def __init__(self, text: str) -> None:
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def of(self, offset: int) -> int:
        return bisect.bisect_left(self.newlines, offset) + 1


def _item_lines(text: str, path: str | None, count: int) -> list[int]:
    """1-based line of each item of the top-level array (`path` None) or of the object's `path` array."""
    try:
        start = _skip(text, 0)
        if path is not None:
            start = _object_members(text, start)[path]
        lines = _Lines(text)
        found = [lines.of(offset) for offset in _array_items(text, start)]
    except (ValueError, IndexError, KeyError):  # pragma: no cover - the text already parsed as JSON
        found = []
    return found if len(found) == count else [1] * count


# --- parsing --------------------------------------------------------------------------------


@dataclass
class _Collected:
    format: str
    conversations: list[Conversation] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    systems: list[str | None] = field(default_factory=list)


def _read_records(
    fmt: str, records: list[tuple[dict[str, int], Any]], problems: _Problems, collected: _Collected
) -> None:
    name = FORMAT_NAMES[fmt]
    for where, record in records:
        if record_format(record) != fmt:
            found = record_format(record)
            kind = FORMAT_NAMES.get(found or "", "an unrecognised record")
            problems.add(where, f"not in the format of the first record ({name}): found {kind}")
            continue
        try:
            conversation, system = READERS[fmt](record)
        except _Bad as exc:
            problems.add(where, str(exc))
            continue
        collected.conversations.append(conversation)
        collected.sources.append(_where_text(where))
        collected.systems.append(system)


def _parse_json_document(text: str, document: Any, problems: _Problems) -> tuple[_Collected, str | None]:
    skill_id: str | None = None
    if isinstance(document, dict) and record_format(document) == "hive215-skill":
        collected = _Collected("hive215")
        items = document["conversations"]
        lines = _item_lines(text, "conversations", len(items))
        if document.get("system_prompt") is not None:
            try:
                collected.systems.append(_text(document["system_prompt"], "'system_prompt'"))
            except _Bad as exc:
                problems.add({"line": 1}, str(exc))
        if isinstance(document.get("skill_id"), str):
            skill_id = document["skill_id"]
        records = [({"line": line}, item) for line, item in zip(lines, items, strict=True)]
        _read_records("hive215", records, problems, collected)
        return collected, skill_id
    if isinstance(document, dict):
        records = [({"line": _Lines(text).of(_skip(text, 0))}, document)]
    elif isinstance(document, list):
        lines = _item_lines(text, None, len(document))
        records = [({"line": line}, item) for line, item in zip(lines, document, strict=True)]
    else:
        records = []
    fmt = next((record_format(r) for _, r in records if record_format(r)), None)
    if fmt is None or fmt == "hive215-skill":
        problems.add(records[0][0] if records else {"line": 1}, f"unrecognised JSON; expected {SUPPORTED}")
        return _Collected("unknown"), None
    collected = _Collected(fmt)
    _read_records(fmt, records, problems, collected)
    return collected, None


def _parse_jsonl(text: str, problems: _Problems) -> _Collected:
    records: list[tuple[dict[str, int], Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(({"line": number}, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.add({"line": number}, f"invalid JSON: {exc.msg} (column {exc.colno})")
    fmt = next((record_format(r) for _, r in records if record_format(r)), None)
    if fmt is None:
        if not problems:
            problems.add(records[0][0] if records else {"line": 1}, f"unrecognised records; expected {SUPPORTED}")
        return _Collected("unknown")
    if fmt == "hive215-skill":
        fmt = "hive215"  # whole skills one per line are not a thing: each line must be a pair
    collected = _Collected(fmt)
    _read_records(fmt, records, problems, collected)
    return collected


def _parse_json(text: str, problems: _Problems) -> tuple[_Collected, str | None]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            first_is_record = isinstance(json.loads(first), dict)
        except json.JSONDecodeError:
            first_is_record = False
        if first_is_record:
            return _parse_jsonl(text, problems), None
        problems.add({"line": exc.lineno}, f"invalid JSON: {exc.msg} (column {exc.colno})")
        return _Collected("unknown"), None
    return _parse_json_document(text, document, problems)


def _parse_csv(text: str, problems: _Problems, warnings: list[str]) -> _Collected:
    collected = _Collected("csv")
    header_line = text.splitlines()[0]
    delimiter = max((",", "\t", ";"), key=header_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except csv.Error as exc:
        problems.add({"row": 1}, f"invalid CSV: {exc}")
        return collected
    if "user" not in header or "assistant" not in header:
        found = ", ".join(repr(h) for h in header[:5])
        problems.add(
            {"row": 1},
            f"not JSON, and not a CSV whose header names the columns 'user' and 'assistant' (found {found}); "
            f"expected {SUPPORTED}",
        )
        return collected
    user_col, assistant_col = header.index("user"), header.index("assistant")
    ignored = [h for h in header if h not in ("user", "assistant")]
    if ignored:
        warnings.append(f"CSV columns ignored: {', '.join(ignored)}")
    row = 1
    while True:
        row += 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add({"row": row}, f"invalid CSV: {exc}")
            break
        if not any(f.strip() for f in fields):
            continue  # blank row
        where = {"row": row}
        try:
            if len(fields) > len(header):
                raise _Bad(f"{len(fields)} fields, but the header has {len(header)} (quote values with commas)")
            missing = [name for name, col in (("user", user_col), ("assistant", assistant_col)) if col >= len(fields)]
            if missing:
                raise _Bad(f"missing field {', '.join(repr(m) for m in missing)}")
            conversation, _ = _pair({"user": fields[user_col], "assistant": fields[assistant_col]})
        except _Bad as exc:
            problems.add(where, str(exc))
            continue
        collected.conversations.append(conversation)
        collected.sources.append(_where_text(where))
        collected.systems.append(None)
    return collected


def detect_format(text: str) -> str:
    """'json' (a JSON document or JSONL) or 'csv', from the first non-blank character."""
    return "json" if text.lstrip()[:1] in ("{", "[") else "csv"


def parse_training_file(filename: str, raw: bytes) -> ParsedImport:
    """Parse an uploaded training-data file; raise `InvalidTrainingFile` listing every problem."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise FileTooLarge(
            f"The file is {len(raw) / 1e6:.1f} MB; at most {MAX_IMPORT_BYTES // (1024 * 1024)} MB can be imported.",
            details={"bytes": len(raw), "limit_bytes": MAX_IMPORT_BYTES},
            suggestions=["Split the file and import the parts one after the other."],
        )
    try:
        text = decode(raw)
    except InvalidTrainingFile as exc:
        raise InvalidTrainingFile(exc.details["problems"], filename=filename) from None
    if not text.strip():
        raise InvalidTrainingFile([{"line": 1, "message": "line 1: the file is empty"}], filename=filename)

    problems = _Problems()
    warnings: list[str] = []
    skill_id: str | None = None
    if detect_format(text) == "json":
        collected, skill_id = _parse_json(text, problems)
    else:
        collected = _parse_csv(text, problems, warnings)
    fmt = collected.format if collected.format in FORMAT_NAMES else None
    if not problems and not collected.conversations:
        problems.add({"line": 1}, "the file holds no examples")
    if problems:
        items = sorted(problems.items, key=lambda p: (p.get("row", 0), p.get("line", 0)))
        if problems.truncated:
            items = [
                *items,
                {"message": f"more than {MAX_PROBLEMS} problems; only the first {MAX_PROBLEMS} are listed"},
            ]
        raise InvalidTrainingFile(items, filename=filename, format=fmt)

    assert fmt is not None
    system_prompt = None
    prompts = Counter(s for s in collected.systems if s)
    if prompts:
        system_prompt = prompts.most_common(1)[0][0]
        if len(prompts) > 1:
            warnings.append(
                f"the file has {len(prompts)} different system prompts; a skill has one, the most common was kept"
            )
    return ParsedImport(
        format=fmt,
        conversations=collected.conversations,
        sources=collected.sources,
        system_prompt=system_prompt,
        skill_id=skill_id,
        warnings=warnings,
    )
