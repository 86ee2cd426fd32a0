"""Checks on a skill's examples: blank turns, duplicates, near duplicates, too few.

- exact duplicate: the same messages apart from whitespace (history included);
- near duplicate: the same text once lowercased with punctuation and repeated
  whitespace removed, or word sets with Jaccard similarity >= 0.8 whose normalised
  texts also match by difflib ratio >= 0.9. Candidates come from a prefix-filter
  index (rarest words first), so 1,000 examples take milliseconds, not a million
  comparisons;
- too few: under MIN_EXAMPLES training is refused; under RECOMMENDED_EXAMPLES it
  is allowed with a warning. A skill may hold fewer while it is being built.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.schemas.skills import Conversation

MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 50
NEAR_JACCARD = 0.8
NEAR_RATIO = 0.9
MAX_LISTED = 10
# Bounds on the difflib check, whose cost grows with the square of the texts' length: the characters
# of each normalised text it compares, and the seconds one search spends on it; past those seconds
# the remaining candidates are judged by their word sets alone (a request answers in seconds).
RATIO_CHARS = 1_000
RATIO_SECONDS = 2.0

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def _pairs(conversation: Conversation | dict[str, Any]) -> list[tuple[str, str]]:
    if isinstance(conversation, Conversation):
        return [*((h.user, h.assistant) for h in conversation.history), (conversation.user, conversation.assistant)]
    history = conversation.get("history") or []
    pairs = [(str(h.get("user", "")), str(h.get("assistant", ""))) for h in history]
    return [*pairs, (str(conversation.get("user", "")), str(conversation.get("assistant", "")))]


def exact_key(conversation: Conversation | dict[str, Any]) -> str:
    """Identity of an example apart from whitespace."""
    return "\x1e".join(f"{_SPACE.sub(' ', u).strip()}\x1f{_SPACE.sub(' ', a).strip()}" for u, a in _pairs(conversation))


def normalise(text: str) -> str:
    """Lowercase words separated by single spaces: no punctuation, no repeated whitespace."""
    return " ".join(_WORD.findall(text.lower()))


def normalised_text(conversation: Conversation | dict[str, Any]) -> str:
    return " | ".join(f"{normalise(u)} > {normalise(a)}" for u, a in _pairs(conversation))


def _ratio(a: str, b: str) -> float:
    """difflib's similarity of two texts, in bounded time: the first RATIO_CHARS characters of each.

    SequenceMatcher is quadratic in the worst case (a long run of one character takes minutes
    for 20,000-character turns); the cheap upper bounds come first.
    """
    a, b = a[:RATIO_CHARS], b[:RATIO_CHARS]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() < NEAR_RATIO or matcher.quick_ratio() < NEAR_RATIO:
        return 0.0
    return matcher.ratio()


@dataclass
class NearDuplicate:
    first: int
    second: int
    similarity: float


def near_duplicates(texts: Sequence[str], *, only_involving: Iterable[int] | None = None) -> list[NearDuplicate]:
    """Pairs (i < j) of normalised texts that are the same or nearly so.

    With `only_involving`, only pairs with at least one of those indices are reported
    (new examples against each other and against the existing ones).
    """
    words = [set(text.replace("|", " ").replace(">", " ").split()) for text in texts]
    frequency: Counter[str] = Counter(w for ws in words for w in ws)
    wanted = set(range(len(texts))) if only_involving is None else set(only_involving)
    index: dict[str, list[int]] = defaultdict(list)
    found: list[NearDuplicate] = []
    deadline = time.monotonic() + RATIO_SECONDS
    for j, ws in enumerate(words):
        ordered = sorted(ws, key=lambda w: (frequency[w], w))
        # Prefix filtering: two sets with Jaccard >= t share a word among the first
        # |s| - ceil(t * |s|) + 1 rarest words of each.
        # No words at all (only punctuation): compare such texts with each other by text only.
        prefix = ordered[: len(ordered) - math.ceil(NEAR_JACCARD * len(ordered)) + 1] if ordered else [""]
        candidates = {i for w in prefix for i in index[w]}
        for i in sorted(candidates):
            if i not in wanted and j not in wanted:
                continue
            if texts[i] == texts[j]:
                found.append(NearDuplicate(i, j, 1.0))
                continue
            union = len(words[i] | words[j])
            jaccard = len(words[i] & words[j]) / union if union else 0.0
            if jaccard >= NEAR_JACCARD:
                ratio = _ratio(texts[i], texts[j]) if time.monotonic() < deadline else jaccard
                if ratio >= NEAR_RATIO:
                    found.append(NearDuplicate(i, j, round(ratio, 3)))
        for w in prefix:
            index[w].append(j)
    return found


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)  # machine-readable error codes, in `errors` order
    example_count: int = 0
    exact_duplicates: list[tuple[int, int]] = field(default_factory=list)  # (earlier, later), 0-based
    near_duplicates: list[NearDuplicate] = field(default_factory=list)


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def validate_examples(
    conversations: Sequence[Conversation | dict[str, Any]], *, for_training: bool = True
) -> ValidationReport:
    """Structural checks on a skill's examples (1-based example numbers in messages)."""
    report = ValidationReport(example_count=len(conversations))
    blank = [
        str(n)
        for n, conversation in enumerate(conversations, start=1)
        if any(not u.strip() or not a.strip() for u, a in _pairs(conversation))
    ]
    if blank:
        report.errors.append(f"examples with an empty user or assistant message: {_listed(blank)}")
        report.codes.append("empty_turns")

    seen: dict[str, int] = {}
    for n, conversation in enumerate(conversations):
        key = exact_key(conversation)
        if key in seen:
            report.exact_duplicates.append((seen[key], n))
        else:
            seen[key] = n
    if report.exact_duplicates:
        pairs = [f"{b + 1} = {a + 1}" for a, b in report.exact_duplicates]
        report.warnings.append(f"{len(pairs)} exact duplicate examples (they weigh double): {_listed(pairs)}")

    duplicates = {b for _, b in report.exact_duplicates}
    texts = [normalised_text(c) for c in conversations]
    # Among first occurrences only: an exact copy is reported once, above.
    report.near_duplicates = [
        d for d in near_duplicates(texts) if d.first not in duplicates and d.second not in duplicates
    ]
    if report.near_duplicates:
        pairs = [f"{d.second + 1} ~ {d.first + 1}" for d in report.near_duplicates]
        report.warnings.append(f"{len(pairs)} near-duplicate pairs of examples: {_listed(pairs)}")

    count = len(conversations)
    if for_training and count < MIN_EXAMPLES:
        report.errors.append(
            f"{count} example{'s' if count != 1 else ''}: training needs at least {MIN_EXAMPLES}; "
            f"add {MIN_EXAMPLES - count} more"
        )
        report.codes.append("too_few_examples")
    elif count < RECOMMENDED_EXAMPLES:
        report.warnings.append(
            f"only {count} examples: {RECOMMENDED_EXAMPLES} or more usually train a noticeably better adapter"
        )
    return report
