"""The estimate's maths: medians, seeds, prices, confidence, token counting."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.api.training import estimate as est
from shared.rules import tokens
from shared.rules.devices import device_for, device_key
from shared.schemas.training import Hyperparameters
from shared.settings import MODAL_GPU_PRICES_PER_HOUR

LLAMA_8B = "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"


def test_median_and_measured_throughput_win_over_seeds() -> None:
    assert est.median([]) is None
    assert est.median([3.0, 1.0, 100.0]) == 3.0
    assert est.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    measured = est.Calibration(throughputs=(300.0, 200.0, 9000.0), startups=(20.0, 22.0, 60.0))
    assert est.throughput_for("tiny-random", "cpu", measured) == (300.0, "measured (3 jobs)")
    assert est.startup_for("tiny-random", "cpu", measured) == 22.0
    one = est.Calibration(throughputs=(123.0,))
    assert est.throughput_for("tiny-random", "cpu", one) == (123.0, "measured (1 job)")
    assert est.startup_for("tiny-random", "cpu", one) == est.SEEDED_STARTUP[("tiny-random", "cpu")]


def test_seeds_and_defaults() -> None:
    empty = est.Calibration()
    assert est.throughput_for("tiny-random", "cpu", empty) == (est.SEEDED_THROUGHPUT[("tiny-random", "cpu")], "seeded")
    for gpu in ("t4", "a10g", "a100", "h100"):
        assert (LLAMA_8B, gpu) in est.SEEDED_THROUGHPUT
    seeds = [est.SEEDED_THROUGHPUT[(LLAMA_8B, gpu)] for gpu in ("t4", "a10g", "a100", "h100")]
    assert seeds == sorted(seeds)  # faster GPUs, more tokens/s
    assert est.throughput_for("tiny-random", "h100", empty) == (est.DEFAULT_THROUGHPUT, "default")
    assert est.startup_for("tiny-random", "h100", empty) == est.DEFAULT_GPU_STARTUP_SECONDS


def test_prices_and_devices() -> None:
    prices = dict(MODAL_GPU_PRICES_PER_HOUR)
    assert est.price_for("modal", "a10g", prices, 0.0) == 1.10
    assert est.price_for("modal", "T4", prices, 0.0) == 0.40
    assert "A100" in prices and "H100" in prices
    assert est.price_for("local", None, prices, 0.25) == 0.25
    with pytest.raises(KeyError):
        est.price_for("modal", "tpu", prices, 0.0)
    assert device_for("modal", "A10G") == "a10g"
    assert device_for("local", None) == "cpu"
    assert device_for("local", None, "cuda") == "cuda"
    assert device_key("modal:A100-80GB") == "a100-80gb"
    assert device_key("cuda:0") == "cuda"


@pytest.mark.parametrize(
    ("jobs", "examples", "seeded", "expected"),
    [
        (3, 100, False, "high"),
        (3, 101, True, "medium"),
        (2, 10, True, "medium"),
        (0, 10, True, "medium"),
        (1, 10, False, "medium"),
        (0, 10, False, "low"),
    ],
)
def test_confidence(jobs: int, examples: int, seeded: bool, expected: str) -> None:
    assert est.confidence_for(jobs, examples, seeded) == expected


def test_trained_tokens_follow_the_trainer() -> None:
    hp = Hyperparameters(epochs=3, batch_size=2, gradient_accumulation_steps=4, max_seq_length=64)
    # under 10 examples: no held-out split; each example cut at max_seq_length
    assert est.trained_tokens([100, 10, 10, 10], hp) == (((64 + 30) * 3), 3.0)
    # 12 examples: 3 held out, 9 trained; 5 micro-batches / 4, rounded up = 2 steps per epoch
    steps = hp.model_copy(update={"max_steps": 4})
    tokens, epochs = est.trained_tokens([40] * 12, steps)
    assert (tokens, epochs) == (40 * 9 * 2, 2.0)
    assert est.trained_tokens([], hp) == (0, 3.0)


def test_compute_and_error() -> None:
    hp = Hyperparameters(epochs=1)
    result = est.compute(
        base_model=LLAMA_8B,
        example_tokens=[100] * 50,
        hyperparameters=hp,
        backend="modal",
        device="a10g",
        gpu_type="A10G",
        price_per_hour=1.10,
        calibration=est.Calibration(),
    )
    seconds = 100 * 40 / est.SEEDED_THROUGHPUT[(LLAMA_8B, "a10g")] + est.SEEDED_STARTUP[(LLAMA_8B, "a10g")]
    assert result.seconds == round(seconds, 1) and result.minutes == round(seconds / 60, 2)
    assert result.cost_usd == round(seconds / 3600 * 1.10, 4)
    assert result.throughput_source == "seeded" and result.confidence == "medium" and result.examples == 50
    assert est.error_pct(120.0, 100.0) == 20.0
    assert est.error_pct(80.0, 100.0) == -20.0
    assert est.error_pct(None, 100.0) is None


def test_token_counting_prefers_the_tokenizer(tmp_path: Path) -> None:
    conversations = [{"user": "How do I store honey?", "assistant": "Keep the jar sealed somewhere cool."}]
    counts, how = tokens.count_example_tokens(tmp_path, "tiny-random", "You are terse.", conversations)
    assert how == "heuristic" and counts == [tokens.heuristic_tokens("You are terse.", conversations[0])]
    models = Path(__file__).resolve().parents[2] / ".cache" / "test-models"
    if not (models / "tiny-random" / "tokenizer.json").is_file():
        pytest.skip("no cached tiny-random tokenizer")
    counts, how = tokens.count_example_tokens(models, "tiny-random", "You are terse.", conversations)
    assert how == "tokenizer" and 20 < counts[0] < 40  # ChatML render: 29 tokens
