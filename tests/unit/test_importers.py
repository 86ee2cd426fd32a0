"""Training-data import: every format, valid and broken, found from the content; and the validation rules."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from services.api.skills.importers import (
    MAX_IMPORT_BYTES,
    FileTooLarge,
    InvalidTrainingFile,
    ParsedImport,
    parse_training_file,
)
from services.api.skills.validation import (
    MIN_EXAMPLES,
    near_duplicates,
    normalise,
    normalised_text,
    validate_examples,
)
from tests.conftest import demo_conversations


def jsonl(*records: Any) -> bytes:
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


def problems(raw: bytes, filename: str = "data") -> list[dict[str, Any]]:
    with pytest.raises(InvalidTrainingFile) as caught:
        parse_training_file(filename, raw)
    error = caught.value
    assert error.status_code == 422 and error.code == "invalid_training_file"
    found: list[dict[str, Any]] = error.details["problems"]
    assert found and all(p["message"] for p in found)
    assert found[0]["message"] in error.message
    return found


def dumped(parsed: ParsedImport) -> list[dict[str, Any]]:
    return [c.model_dump() for c in parsed.conversations]


# --- valid files, one per format ---------------------------------------------------------


def test_hive215_skill_json() -> None:
    skill = {
        "skill_id": "greeter",
        "name": "Greeter",
        "system_prompt": "You greet people.",
        "conversations": [
            {"user": "Hi!", "assistant": "Hello there!"},
            {
                "user": "And you?",
                "assistant": "Fine, thanks.",
                "history": [{"user": "Hey", "assistant": "Hey yourself."}],
            },
        ],
    }
    parsed = parse_training_file("skill.json", json.dumps(skill, indent=2).encode())
    assert parsed.format == "hive215"
    assert parsed.system_prompt == "You greet people." and parsed.skill_id == "greeter"
    assert dumped(parsed) == skill["conversations"]
    assert parsed.sources == ["line 6", "line 10"]  # where each example starts


def test_hive215_pairs_as_jsonl_and_json_array() -> None:
    pairs = [{"user": "a?", "assistant": "b."}, {"user": "c?", "assistant": "d."}]
    assert dumped(parse_training_file("p.jsonl", jsonl(*pairs))) == pairs
    parsed = parse_training_file("p.json", json.dumps(pairs).encode())
    assert parsed.format == "hive215" and dumped(parsed) == pairs


def test_openai_jsonl_with_system_prompt_and_multi_turn() -> None:
    raw = jsonl(
        {
            "messages": [
                {"role": "system", "content": "Be Bob."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, I'm Bob."},
                {"role": "user", "content": "Price?"},
                {"role": "assistant", "content": [{"type": "text", "text": "80 dollars."}]},
            ]
        },
        {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]},
    )
    parsed = parse_training_file("chat.jsonl", raw)
    assert parsed.format == "openai"
    assert parsed.system_prompt == "Be Bob."
    assert dumped(parsed) == [
        {"user": "Price?", "assistant": "80 dollars.", "history": [{"user": "Hi", "assistant": "Hello, I'm Bob."}]},
        {"user": "Bye", "assistant": "See you."},
    ]
    assert parsed.sources == ["line 1", "line 2"]


def test_openai_different_system_prompts_warn() -> None:
    raw = jsonl(
        *(
            {
                "messages": [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": f"a{i}"},
                ]
            }
            for i, prompt in enumerate(["A", "A", "B"])
        )
    )
    parsed = parse_training_file("chat.jsonl", raw)
    assert parsed.system_prompt == "A"
    assert any("2 different system prompts" in w for w in parsed.warnings)


def test_sharegpt_multi_turn() -> None:
    records = [
        {
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "Hello"},
                {"from": "gpt", "value": "Hi!"},
                {"from": "human", "value": "How are you?"},
                {"from": "gpt", "value": "Great."},
            ]
        },
        {"conversations": [{"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]},
    ]
    parsed = parse_training_file("sharegpt.json", json.dumps(records, indent=2).encode())
    assert parsed.format == "sharegpt" and parsed.system_prompt == "Be kind."
    assert dumped(parsed) == [
        {"user": "How are you?", "assistant": "Great.", "history": [{"user": "Hello", "assistant": "Hi!"}]},
        {"user": "Bye", "assistant": "Ciao"},
    ]
    assert parse_training_file("s.jsonl", jsonl(*records)).format == "sharegpt"


def test_alpaca_joins_instruction_and_input() -> None:
    raw = jsonl(
        {"instruction": "Translate to French", "input": "cheese", "output": "fromage"},
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
        {"instruction": "Count to two", "output": "1, 2"},
    )
    parsed = parse_training_file("alpaca.jsonl", raw)
    assert parsed.format == "alpaca" and parsed.system_prompt is None
    assert dumped(parsed) == [
        {"user": "Translate to French\n\ncheese", "assistant": "fromage"},
        {"user": "Say hi", "assistant": "Hi!"},
        {"user": "Count to two", "assistant": "1, 2"},
    ]


def test_csv_with_quotes_blank_rows_and_other_columns() -> None:
    raw = b'User,Assistant,notes\r\n"Hi, you",Hello,x\r\n\r\n"Two\nlines",ok,\r\n'
    parsed = parse_training_file("data.csv", raw)
    assert parsed.format == "csv"
    assert dumped(parsed) == [{"user": "Hi, you", "assistant": "Hello"}, {"user": "Two\nlines", "assistant": "ok"}]
    assert parsed.sources == ["row 2", "row 4"]
    assert any("notes" in w for w in parsed.warnings)
    tabbed = parse_training_file("data.tsv", b"user\tassistant\nhi\tthere\n")
    assert dumped(tabbed) == [{"user": "hi", "assistant": "there"}]


def test_format_is_found_from_content_not_the_file_name() -> None:
    openai = jsonl({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert parse_training_file("misnamed.csv", openai).format == "openai"
    assert parse_training_file("misnamed.json", b"user,assistant\nq,a\n").format == "csv"
    alpaca = json.dumps({"instruction": "q", "output": "a"}).encode()
    assert parse_training_file("one.json", alpaca).format == "alpaca"
    assert parse_training_file("bom.csv", b"\xef\xbb\xbfuser,assistant\nq,a\n").format == "csv"


# --- broken files: every problem names its line or row -------------------------------------


def test_bad_json_line_3_in_jsonl() -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    raw = f'{good}\n{good}\n{{"messages": [oops]}}\n{good}\n'.encode()
    found = problems(raw)
    assert [p["line"] for p in found] == [3]
    assert "line 3" in found[0]["message"] and "invalid JSON" in found[0]["message"]


def test_bad_json_line_3_in_a_json_document() -> None:
    raw = b'{\n  "conversations": [\n    {"user": "a" "assistant": "b"}\n  ]\n}\n'
    found = problems(raw)
    assert found[0]["line"] == 3 and "line 3" in found[0]["message"]


def test_wrong_role_order_names_line_and_message() -> None:
    raw = jsonl(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "again"}]},
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "q"}]},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
            ]
        },
    )
    found = problems(raw)
    assert [p["line"] for p in found] == [2, 3, 4]
    assert "wrong role order" in found[0]["message"] and "message 2" in found[0]["message"]
    assert "message 1 is 'assistant'" in found[1]["message"]
    assert "last message" in found[2]["message"]


def test_sharegpt_unknown_sender_and_empty_value() -> None:
    records = [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "   "}]},
    ]
    found = problems(jsonl(*records))
    assert [p["line"] for p in found] == [1, 2]
    assert "'robot'" in found[0]["message"] and "empty" in found[1]["message"]


def test_alpaca_missing_output() -> None:
    found = problems(jsonl({"instruction": "a", "output": "b"}, {"instruction": "c"}))
    assert found == [{"line": 2, "message": "line 2: 'output' is missing"}]


def test_csv_missing_field_in_row_4() -> None:
    raw = b"user,assistant\nq1,a1\nq2,a2\nq3\nq4,a4\n"
    found = problems(raw)
    assert found == [{"row": 4, "message": "row 4: missing field 'assistant'"}]


def test_csv_empty_value_and_bad_header() -> None:
    found = problems(b"user,assistant\nq1,\n")
    assert found[0]["row"] == 2 and "'assistant' is empty" in found[0]["message"]
    found = problems(b"question,answer\nq,a\n")
    assert found[0]["row"] == 1 and "'user' and 'assistant'" in found[0]["message"]


def test_invalid_utf8_names_line_and_byte() -> None:
    raw = b"user,assistant\nhello,world\nbad \xff byte,x\n"
    found = problems(raw)
    assert found[0]["line"] == 3 and found[0]["byte"] == raw.index(b"\xff")
    assert "invalid UTF-8" in found[0]["message"] and "line 3" in found[0]["message"]


def test_empty_and_unrecognised_files() -> None:
    assert "empty" in problems(b"  \n\n")[0]["message"]
    assert "unrecognised" in problems(b'{"foo": 1}')[0]["message"]
    assert "no examples" in problems(b'{"conversations": []}')[0]["message"]


def test_mixed_formats_are_refused() -> None:
    raw = jsonl({"instruction": "a", "output": "b"}, {"messages": [{"role": "user", "content": "x"}]})
    found = problems(raw)
    assert found[0]["line"] == 2 and "format of the first record (Alpaca)" in found[0]["message"]


def test_every_problem_is_listed_all_or_nothing() -> None:
    raw = b"user,assistant\n" + b"".join(b"q%d,\n" % i for i in range(5))
    assert [p["row"] for p in problems(raw)] == [2, 3, 4, 5, 6]


def test_too_large_is_413() -> None:
    with pytest.raises(FileTooLarge) as caught:
        parse_training_file("big.csv", b"x" * (MAX_IMPORT_BYTES + 1))
    assert caught.value.status_code == 413


# --- validation ----------------------------------------------------------------------------


def test_normalise() -> None:
    assert normalise("  What IS   molasses?!  ") == "what is molasses"
    assert normalised_text({"user": "Hi!", "assistant": "Hello."}) == normalised_text(
        {"user": "hi", "assistant": "HELLO"}
    )


def test_near_duplicates_and_exact_duplicates() -> None:
    examples = [
        {"user": "What is blackstrap molasses?", "assistant": "The dark syrup from the third boiling of cane."},
        {"user": "what is blackstrap molasses", "assistant": "The dark syrup from the third boiling of cane!"},
        {"user": "What is blackstrap molasses?", "assistant": "The dark syrup from the third boiling of sugar cane."},
        {"user": "How do I store honey?", "assistant": "Keep it sealed at room temperature."},
        {"user": "How do I store honey?", "assistant": "Keep it sealed at room temperature."},
    ]
    report = validate_examples(examples, for_training=False)
    assert report.exact_duplicates == [(3, 4)]
    assert {(d.first, d.second) for d in report.near_duplicates} == {(0, 1), (0, 2), (1, 2)}
    assert any("near-duplicate" in w for w in report.warnings)


def test_demo_conversations_are_clearly_distinct() -> None:
    report = validate_examples(demo_conversations(60))
    assert report.errors == [] and report.warnings == []


def test_too_few_examples() -> None:
    report = validate_examples(demo_conversations(4))
    assert report.codes == ["too_few_examples"]
    assert f"add {MIN_EXAMPLES - 4} more" in report.errors[0]
    assert validate_examples(demo_conversations(4), for_training=False).errors == []
    fine = validate_examples(demo_conversations(12))
    assert fine.errors == [] and any("only 12 examples" in w for w in fine.warnings)


def test_blank_turns_are_errors() -> None:
    report = validate_examples([*demo_conversations(10), {"user": "q", "assistant": "  "}])
    assert report.codes == ["empty_turns"] and "11" in report.errors[0]


def test_near_duplicate_search_is_fast() -> None:
    texts = [normalised_text(c) for c in demo_conversations(60)] * 1
    texts += [f"question number {i} about topic {i * 7} > answer {i * 13} with words {i * 17}" for i in range(1000)]
    started = time.perf_counter()
    near_duplicates(texts)
    assert time.perf_counter() - started < 2.0
