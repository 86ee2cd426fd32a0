"""The torch-free rules both the API and the trainer follow: eval split, chat-template rendering and check,
token counting (shared/rules/split.py, templates.py, tokens.py)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.gpu import data
from shared.rules import split, templates, tokens
from shared.schemas.training import Exchange, Turn

REPO_ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = [
    Turn(user="Hi there, who are you?", assistant="I am Bob, your plumber.\nHow can I help?"),
    Turn(
        user="And the price?",
        assistant="A visit costs 80 dollars.",
        history=[Exchange(user="Do you fix sinks?", assistant="Yes, every kind of sink.")],
    ),
    Turn(user="Ünïcødé «quotes» and emoji 🚰?", assistant='Sure: {"json": true} <b>tags</b> too.'),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """The tokenizer files as a model directory holds them (what the API reads)."""
    directory = tmp_path_factory.mktemp("model")
    tokenizer.save_pretrained(directory)
    return directory


def test_eval_split_is_deterministic_and_sized() -> None:
    assert split.eval_split(9, 42) == (list(range(9)), [])
    train, held = split.eval_split(12, 42)
    assert len(held) == 3 and sorted(train + held) == list(range(12))
    assert split.eval_split(12, 42) == (train, held) and split.eval_split(12, 7) != (train, held)
    assert len(split.eval_split(10, 0)[1]) == 2 and len(split.eval_split(1000, 0)[1]) == split.MAX_EVAL_EXAMPLES
    for count in (0, 1, 9, 10, 11, 12, 37, 99, 100, 249, 250, 251, 1000):
        assert split.train_count(count) == len(split.eval_split(count, seed=42)[0]), count
    assert split.train_count(100) == 80 and split.train_count(1000) == 950 and split.train_count(9) == 9


@pytest.mark.parametrize("generation", [False, True])
def test_rendering_is_transformers_apply_chat_template(tokenizer: Any, model_dir: Path, generation: bool) -> None:
    """Same text as transformers renders, same tokens and offsets as its fast tokenizer: from the HF
    tokenizer and from the files in a model directory alike."""
    for chat in (templates.from_hf_tokenizer(tokenizer), templates.load_chat_tokenizer(model_dir)):
        assert chat is not None
        for example in EXAMPLES:
            messages = templates.build_messages("You are Bob.", [example])
            if generation:
                messages = messages[:-1]
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            text = chat.render(messages, add_generation_prompt=generation)
            assert text == expected
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            assert chat.encode(text).ids == list(encoded["input_ids"])
            assert chat.encode(text).offsets == [tuple(o) for o in encoded["offset_mapping"]]


def test_template_features_transformers_offers(tokenizer: Any) -> None:
    """`{% generation %}` markers, `tojson` with its options, `raise_exception`, the special tokens."""
    custom = copy.deepcopy(tokenizer)
    custom.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] | tojson(indent=1) }}{{ eos_token }}{% endgeneration %}{% else %}{{ m | tojson }}{% endif %}"
        "{% endfor %}{% if messages | length > 9 %}{{ raise_exception('too long') }}{% endif %}"
    )
    chat = templates.from_hf_tokenizer(custom)
    messages = templates.build_messages("Sys «é».", [EXAMPLES[0]])
    assert chat.render(messages) == custom.apply_chat_template(messages, tokenize=False)
    assert chat.end_of_turn == "<|im_end|>"
    with pytest.raises(templates.DataFormatError, match="too long"):
        chat.render(messages * 5)


def test_the_check_is_the_same_from_the_api_and_the_trainer(tokenizer: Any, model_dir: Path) -> None:
    long_answer = " ".join(["The pipe under the sink needs a new washer."] * 6)
    examples = [*EXAMPLES, Turn(user="What is wrong?", assistant=long_answer)]
    from_hf = templates.check_chat_template(templates.from_hf_tokenizer(tokenizer), "You are Bob.", examples, 60)
    chat = templates.load_chat_tokenizer(model_dir)
    assert chat is not None
    from_dir = templates.check_chat_template(chat, "You are Bob.", examples, 60)
    assert from_hf == from_dir and [(p.index, p.problem) for p in from_dir.problems] == [(3, "answer_truncated")]
    assert from_dir.template_sha256 == templates.template_sha256(tokenizer.chat_template)
    assert from_dir.without({3}).ok and from_dir.indices(*templates.LENGTH_PROBLEMS) == [3]


def test_api_precheck_names_the_examples_the_trainer_refuses(tokenizer: Any, model_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir, models / "some-model")
    examples = [ex.model_dump() for ex in EXAMPLES]
    assert templates.template_problems(models, "some-model", "You are Bob.", examples, 512) is None
    message = templates.template_problems(models, "some-model", "You are Bob.", examples, 40)
    assert message is not None and "have an assistant answer cut by max_seq_length=40" in message
    assert message.startswith("2 of 3 examples") and "(examples 2, 3)" in message
    assert templates.template_problems(models, "absent-model", "You are Bob.", examples, 40) is None


def test_one_token_count_for_the_estimate_the_warning_the_report_and_the_trainer(
    tokenizer: Any, model_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir, models / "some-model")
    conversations = [ex.model_dump() for ex in EXAMPLES]
    counts, how = tokens.count_example_tokens(models, "some-model", "You are Bob.", conversations)
    assert how == "tokenizer"
    trainer = [len(data.tokenize_conversation(tokenizer, "You are Bob.", [c], 4096)["input_ids"]) for c in EXAMPLES]
    hf = [
        len(
            tokenizer.apply_chat_template(
                templates.build_messages("You are Bob.", [c]), tokenize=True, return_dict=False
            )
        )
        for c in EXAMPLES
    ]
    assert counts == trainer == hf
    assert tokens.over_length(counts, min(counts)) == [i for i, c in enumerate(counts) if c > min(counts)]
    warning = tokens.length_warning(models, "some-model", "You are Bob.", conversations, min(counts))
    assert warning is not None and warning.startswith(f"{len(counts) - counts.count(min(counts))} of 3 examples")
    # Without the model's tokenizer: characters / 3.6, no warning (the trainer warns instead).
    counts, how = tokens.count_example_tokens(tmp_path / "empty", "some-model", "You are Bob.", conversations)
    assert how == "heuristic" and counts == [tokens.heuristic_tokens("You are Bob.", c) for c in conversations]
    assert tokens.length_warning(tmp_path / "empty", "some-model", "You are Bob.", conversations, 1) is None
    assert tokens.heuristic_tokens("", {"user": "x"}) == tokens.HEURISTIC_OVERHEAD_PER_EXCHANGE


def test_rules_stay_torch_free() -> None:
    code = (
        "import sys; import shared.rules.templates, shared.rules.tokens, shared.rules.split; "
        "print(sorted(m for m in ('torch', 'transformers', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
