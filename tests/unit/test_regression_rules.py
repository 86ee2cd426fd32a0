"""The regression gate's pure rules (shared/rules/regression.py)."""

from __future__ import annotations

from typing import Any

from shared.rules import regression, split
from tests.conftest import demo_conversations


def _fingerprint(conversations: list[dict[str, str]], **changes: Any) -> str | None:
    inputs: dict[str, Any] = {
        "base_model": "tiny-random",
        "system_prompt": "p",
        "conversations": conversations,
        "seed": 42,
        "max_seq_length": 512,
    }
    return regression.held_out_fingerprint(**(inputs | changes))


def test_held_out_examples_follow_the_trainers_split() -> None:
    conversations = demo_conversations(12)
    _, held = split.eval_split(12, 42)
    assert regression.held_out_examples(conversations, 42) == [conversations[i] for i in held]
    assert regression.held_out_examples(demo_conversations(9), 42) == []


def test_fingerprint_is_equal_only_for_the_same_held_out_examples_scored_the_same_way() -> None:
    data = demo_conversations(12)
    base = _fingerprint(data)
    assert base is not None and base == _fingerprint([dict(c) for c in data]), "deterministic, by value"
    assert _fingerprint(demo_conversations(9)) is None, "under 10 examples nothing is held out"

    _, held = split.eval_split(12, 42)
    trained_only = next(i for i in range(12) if i not in held)
    edited = [dict(c) for c in data]
    edited[trained_only]["assistant"] = "A different training answer."
    assert _fingerprint(edited) == base, "a training example changed: same held-out set"
    edited[held[0]]["assistant"] = "A different held-out answer."
    assert _fingerprint(edited) != base, "a held-out example changed"

    assert _fingerprint(demo_conversations(16)) != base, "more examples, more held out: another set"
    grown = demo_conversations(13)  # an added example may leave the held-out set as it was: then it compares
    same = regression.held_out_examples(grown, 42) == regression.held_out_examples(data, 42)
    assert (_fingerprint(grown) == base) is same
    for change in ({"seed": 7}, {"base_model": "other"}, {"system_prompt": "q"}, {"max_seq_length": 256}):
        assert _fingerprint(data, **change) != base, change


def test_is_regression_only_when_worse_beyond_noise_and_both_measured() -> None:
    assert regression.is_regression(3.41, 3.28)
    assert not regression.is_regression(3.10, 3.28)
    assert not regression.is_regression(3.28, 3.28), "a tie keeps the newer version"
    assert not regression.is_regression(3.2830, 3.28), "within 0.1%: the noise of a retraining"
    assert regression.is_regression(3.2840, 3.28)
    assert not regression.is_regression(None, 3.28) and not regression.is_regression(3.41, None)


def test_message_names_both_versions_and_losses_with_enough_digits() -> None:
    message = regression.not_activated_message(
        new_version=3, new_loss=3.4111, active_version=2, active_loss=3.2799, examples=5
    )
    assert message == (
        "v3 was kept but not activated: its held-out loss 3.41 is worse than the active v2's 3.28 on the same "
        "5 held-out examples. Activate it from the Adapters page if you want it anyway."
    )
    assert regression.is_regression(3.2849, 3.2801)
    close = regression.not_activated_message(
        new_version=2, new_loss=3.2849, active_version=1, active_loss=3.2801, examples=1
    )
    assert "loss 3.285 is worse than the active v1's 3.280 on the same 1 held-out example." in close
