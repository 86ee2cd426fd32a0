"""Assistant-only labels with the real SmolLM2 tokenizer and its ChatML template."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from services.gpu import data
from shared.errors import DataFormatError
from shared.rules import templates
from shared.schemas.training import Exchange, Turn

REPO_ROOT = Path(__file__).resolve().parents[2]
END_OF_TURN = "<|im_end|>"


def labelled_runs(example: dict[str, list[int]]) -> list[list[int]]:
    """Consecutive runs of labelled token ids."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        labelled = label != data.IGNORE_INDEX
        if labelled:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = labelled
    return runs


def test_only_assistant_answers_carry_labels(tokenizer: Any) -> None:
    turns = [
        Turn(user="Hi there, who are you?", assistant="I am Bob, your plumber.\nHow can I help?"),
        Turn(user="What does a visit cost?", assistant="A visit costs 80 dollars, parts extra."),
    ]
    example = data.tokenize_conversation(tokenizer, "You are Bob, a friendly plumber.", turns, 512)
    assert len(example["input_ids"]) == len(example["labels"])
    runs = labelled_runs(example)
    assert [tokenizer.decode(run) for run in runs] == [t.assistant + END_OF_TURN for t in turns]

    # Everything else (system, user, the template's role headers) is masked.
    text = tokenizer.decode(example["input_ids"])
    assert text == tokenizer.apply_chat_template(
        templates.build_messages("You are Bob, a friendly plumber.", turns), tokenize=False
    )
    unlabelled = [t for t, lbl in zip(example["input_ids"], example["labels"], strict=True) if lbl == -100]
    masked_text = tokenizer.decode(unlabelled)
    assert "You are Bob, a friendly plumber." in masked_text
    assert "Hi there, who are you?" in masked_text
    assert "What does a visit cost?" in masked_text
    assert "plumber.\nHow can I help" not in masked_text
    assert "<|im_start|>assistant" in masked_text


def test_system_and_user_tokens_are_ignored(tokenizer: Any) -> None:
    example = data.tokenize_conversation(tokenizer, "Be brief.", [{"user": "2+2?", "assistant": "4"}], 512)
    prompt = tokenizer(data.render_prompt(tokenizer, "Be brief.", "2+2?"), add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(prompt)] == prompt
    assert all(label == -100 for label in example["labels"][: len(prompt)])
    assert tokenizer.decode([t for t in example["labels"] if t != -100]) == "4" + END_OF_TURN
    # The newline the template writes after <|im_end|> is not part of the answer.
    assert example["labels"][-1] == -100


def test_truncation_keeps_the_start(tokenizer: Any) -> None:
    long_answer = " ".join(["word"] * 200)
    full = data.tokenize_conversation(tokenizer, "System.", [Turn(user="Talk.", assistant=long_answer)], 4096)
    cut = data.tokenize_conversation(tokenizer, "System.", [Turn(user="Talk.", assistant=long_answer)], 40)
    assert len(full["input_ids"]) > 40
    assert len(cut["input_ids"]) == len(cut["labels"]) == 40
    assert cut["input_ids"] == full["input_ids"][:40]
    assert cut["labels"] == full["labels"][:40]
    assert any(label != -100 for label in cut["labels"])


def test_examples_cut_before_their_answer_are_dropped(tokenizer: Any) -> None:
    turns = [Turn(user="short", assistant="ok"), Turn(user="x " * 100, assistant="late answer")]
    examples = data.build_examples(tokenizer, "System.", turns, 32)
    assert len(examples) == 1
    with pytest.raises(DataFormatError):
        data.build_examples(tokenizer, "System.", [turns[1]], 32)


def test_bad_data_is_a_data_format_error(tokenizer: Any) -> None:
    with pytest.raises(DataFormatError):
        data.build_examples(tokenizer, "System.", [], 128)
    with pytest.raises(DataFormatError):
        data.tokenize_conversation(tokenizer, "System.", [Turn(user="hi", assistant="  ")], 128)
    with pytest.raises(DataFormatError):
        data.tokenize_conversation(tokenizer, "System.", [{"user": "hi"}], 128)


def test_build_dataset_columns(tokenizer: Any) -> None:
    dataset = data.build_dataset(tokenizer, "S.", [Turn(user="a", assistant="b"), Turn(user="c", assistant="d")], 64)
    assert dataset.column_names == ["input_ids", "labels"]
    assert len(dataset) == 2


def test_render_prompt_matches_training_prefix(tokenizer: Any) -> None:
    prompt = data.render_prompt(tokenizer, "You are Bob.", "Hello")
    assert (
        prompt
        == "<|im_start|>system\nYou are Bob.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_hashes_are_stable(tokenizer: Any) -> None:
    turns = [Turn(user="a", assistant="b")]
    assert data.dataset_sha256("S", turns) == data.dataset_sha256("S", [{"user": "a", "assistant": "b"}])
    assert data.dataset_sha256("S", turns) != data.dataset_sha256("T", turns)
    assert len(templates.template_sha256(tokenizer.chat_template)) == 64


def test_multi_turn_example_labels_every_assistant_turn(tokenizer: Any) -> None:
    example = Turn(
        user="And on Sundays?",
        assistant="Sundays cost double.",
        history=[
            Exchange(user="Hi, who are you?", assistant="I am Bob, your plumber."),
            Exchange(user="What does a visit cost?", assistant="80 dollars."),
        ],
    )
    (tokenized,) = data.build_examples(tokenizer, "You are Bob.", [example], 512)
    runs = labelled_runs(tokenized)
    assert [tokenizer.decode(run) for run in runs] == [
        "I am Bob, your plumber." + END_OF_TURN,
        "80 dollars." + END_OF_TURN,
        "Sundays cost double." + END_OF_TURN,
    ]
    # One conversation: the whole history is rendered before the final exchange, users masked.
    assert tokenizer.decode(tokenized["input_ids"]) == tokenizer.apply_chat_template(
        templates.build_messages("You are Bob.", [example]), tokenize=False
    )
    unlabelled = tokenizer.decode(
        [t for t, lbl in zip(tokenized["input_ids"], tokenized["labels"], strict=True) if lbl == -100]
    )
    for user in ("Hi, who are you?", "What does a visit cost?", "And on Sundays?"):
        assert user in unlabelled
    # The same from the JSON a skill stores.
    (from_dict,) = data.build_examples(tokenizer, "You are Bob.", [example.model_dump()], 512)
    assert from_dict == tokenized
    assert data.dataset_sha256("S", [example]) == data.dataset_sha256("S", [example.model_dump()])
    assert data.dataset_sha256("S", [example]) != data.dataset_sha256(
        "S", [Turn(user=example.user, assistant=example.assistant)]
    )


def test_too_long_examples_are_reported_and_mostly_cut_data_fails(tokenizer: Any) -> None:
    short = [Turn(user=f"q{i}", assistant=f"a{i}") for i in range(3)]
    long_answer = Turn(user="Talk.", assistant=" ".join(["word"] * 100))
    examples, report = data.prepare_examples(tokenizer, "System.", [*short, long_answer], 48)
    assert len(examples) == 4 and report.too_long == [3] and report.cut == []
    warning = report.warning()
    assert warning is not None and "1 of 4 examples" in warning and "max_seq_length=48" in warning
    assert "examples 4" in warning

    late = Turn(user="x " * 100, assistant="late answer")
    examples, report = data.prepare_examples(tokenizer, "System.", [*short, late], 32)
    assert report.cut == [3] and len(examples) == 3  # a few cut: dropped, training goes on
    with pytest.raises(DataFormatError, match="cuts 2 of 3 examples"):
        data.prepare_examples(tokenizer, "System.", [short[0], late, late], 32)


def test_drop_cut_answers_drops_every_example_with_a_cut_answer(tokenizer: Any) -> None:
    """After the OOM recovery halved max_seq_length: answers cut part-way are dropped too, not trained on."""
    short = [Turn(user=f"q{i}", assistant=f"a{i}") for i in range(3)]
    long_answer = Turn(user="Talk.", assistant=" ".join(["word"] * 100))
    late = Turn(user="x " * 100, assistant="late answer")
    conversations = [long_answer, *short, late, late]
    examples, report = data.prepare_examples(tokenizer, "System.", conversations, 32)
    assert len(examples) == 4 and report.cut == [4, 5] and report.dropped == []  # without: the long answer is cut
    examples, report = data.prepare_examples(tokenizer, "System.", conversations, 32, drop_cut_answers=True)
    assert len(examples) == 3 and report.dropped == [0, 4, 5] and report.cut == []
    assert examples == [data.tokenize_conversation(tokenizer, "System.", [turn], 32) for turn in short]
    warning = report.dropped_warning()
    assert warning is not None and warning.startswith("Dropped 3 of 6 examples whose answer would be cut")
    assert "max_seq_length=32" in warning and "(examples 1, 5, 6)" in warning and report.warning() is None
    with pytest.raises(DataFormatError, match="cuts an answer of all 2 examples"):
        data.prepare_examples(tokenizer, "System.", [late, long_answer], 32, drop_cut_answers=True)


# --- Chat-template check (shared/rules/templates.py) through the trainer's tokenizer ------------------------------

GOOD = [
    Turn(user="Hi there, who are you?", assistant="I am Bob, your plumber."),
    Turn(
        user="And the price?",
        assistant="A visit costs 80 dollars.",
        history=[Exchange(user="Do you fix sinks?", assistant="Yes, every kind of sink.")],
    ),
]


def check(tokenizer: Any, system_prompt: str, conversations: list[Turn], max_seq_length: int) -> Any:
    """The shared chat-template check (shared/rules/templates.py) on this HF tokenizer."""
    return templates.check_chat_template(data.chat_tokenizer(tokenizer), system_prompt, conversations, max_seq_length)


def test_template_check_passes_good_examples(tokenizer: Any) -> None:
    report = check(tokenizer, "You are Bob.", GOOD, 512)
    assert report.ok and report.message() is None
    assert report.end_of_turn == END_OF_TURN == data.chat_tokenizer(tokenizer).end_of_turn
    assert report.template_sha256 == templates.template_sha256(tokenizer.chat_template)


def test_template_check_catches_a_template_without_end_of_turn(tokenizer: Any) -> None:
    broken = copy.deepcopy(tokenizer)
    # Assistant messages lose their <|im_end|>; the other roles keep theirs.
    broken.chat_template = tokenizer.chat_template.replace(
        "message['content'] + '<|im_end|>' + '\n'",
        "message['content'] + ('' if message['role'] == 'assistant' else '<|im_end|>') + '\n'",
    )
    assert broken.chat_template != tokenizer.chat_template
    report = check(broken, "You are Bob.", GOOD, 512)
    assert {(p.index, p.problem) for p in report.problems} == {(0, "no_end_of_turn"), (1, "no_end_of_turn")}
    message = report.message()
    assert message is not None and "end-of-turn token" in message and "(1, 2)" in message
    assert "'<|im_end|>'" in message
    assert report.template_sha256 != templates.template_sha256(tokenizer.chat_template)


def test_template_check_catches_an_answer_cut_by_max_seq_length(tokenizer: Any) -> None:
    long_answer = " ".join(["The pipe under the sink needs a new washer."] * 6)
    examples = [*GOOD, Turn(user="What is wrong?", assistant=long_answer)]
    full_length = len(data.tokenize_conversation(tokenizer, "You are Bob.", examples[2:], 4096)["input_ids"])
    report = check(tokenizer, "You are Bob.", examples, full_length - 5)
    assert [(p.index, p.problem) for p in report.problems] == [(2, "answer_truncated")]
    message = report.message()
    assert message is not None and "cut by max_seq_length" in message and "1 of 3 examples (3)" in message
    # Cut before the answer starts: nothing left to learn from either.
    report = check(tokenizer, "You are Bob. " * 20, examples, 40)
    assert {p.problem for p in report.problems} == {"answer_truncated", "empty_mask"}
    assert check(tokenizer, "You are Bob.", examples, full_length).ok


def test_inference_prompt_is_the_training_prefix(tokenizer: Any) -> None:
    """Chat renders with the very template training used: its prompt is the text before the answer."""
    system, turn = "You are Bob.", GOOD[0]
    training_text = tokenizer.apply_chat_template(templates.build_messages(system, [turn]), tokenize=False)
    prompt = data.render_prompt(tokenizer, system, turn.user)
    assert training_text.startswith(prompt) and training_text[len(prompt) :].startswith(turn.assistant)
    example = data.tokenize_conversation(tokenizer, system, [turn], 512)
    first_label = next(i for i, label in enumerate(example["labels"]) if label != data.IGNORE_INDEX)
    assert tokenizer.decode(example["input_ids"][:first_label]) == prompt
