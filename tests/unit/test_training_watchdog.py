"""The training watchdog: what counts as a divergence, the callback that stops the run, the error it raises,
and the learning rate a resumed run follows."""

from __future__ import annotations

import json
import math
import queue
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from services.gpu import faults
from services.gpu.training.callbacks import (
    SPIKE_FACTOR,
    SPIKE_MIN_STEPS,
    divergence,
    make_watchdog_callback,
    rescale_learning_rate,
)
from shared.errors import CATALOGUE, ErrorCategory, Severity, TrainingDiverged, classify, describe
from shared.schemas.events import ErrorPayload

STEADY = [2.0, 1.9, 2.1, 1.8, 2.0]


def test_nan_and_inf_loss_or_grad_norm_diverge() -> None:
    assert divergence(math.nan, 1.0, [])[:2] == ("nan_loss", pytest.approx(math.nan, nan_ok=True))  # type: ignore[index]
    assert divergence(math.inf, 1.0, [])[0] == "inf_loss"  # type: ignore[index]
    assert divergence(-math.inf, 1.0, [])[0] == "inf_loss"  # type: ignore[index]
    assert divergence(1.0, math.nan, [])[0] == "nan_grad_norm"  # type: ignore[index]
    assert divergence(1.0, math.inf, [])[0] == "inf_grad_norm"  # type: ignore[index]
    # The loss is checked first: a NaN loss makes a NaN gradient too.
    assert divergence(math.nan, math.nan, [])[0] == "nan_loss"  # type: ignore[index]


def test_a_spike_is_over_three_times_the_running_median() -> None:
    median = 2.0
    assert SPIKE_FACTOR == 3.0 and SPIKE_MIN_STEPS == 5
    assert divergence(6.5, 1.0, STEADY) == ("loss_spike", 6.5, median)
    assert divergence(5.9, 1.0, STEADY) is None  # under 3x
    assert divergence(2.5, 1.0, STEADY) is None
    assert divergence(None, None, STEADY) is None


def test_no_spike_in_the_first_noisy_steps() -> None:
    assert divergence(100.0, 1.0, STEADY[:4]) is None  # 4 earlier losses: too few to judge
    assert divergence(100.0, 1.0, STEADY)[0] == "loss_spike"  # type: ignore[index]


def _log(callback: Any, step: int, loss: float, grad_norm: float | None = 0.5) -> None:
    state = SimpleNamespace(global_step=step)
    callback.on_log(
        SimpleNamespace(learning_rate=2e-4), state, SimpleNamespace(), logs={"loss": loss, "grad_norm": grad_norm}
    )


def test_callback_raises_training_diverged_with_details() -> None:
    callback = make_watchdog_callback(queue.Queue())
    for step, loss in enumerate(STEADY, start=1):
        _log(callback, step, loss)
    with pytest.raises(TrainingDiverged) as spike:
        _log(callback, 6, 7.0)
    assert spike.value.details == {
        "step": 6,
        "reason": "loss_spike",
        "value": 7.0,
        "median": 2.0,
        "last_good_step": None,
    }
    with pytest.raises(TrainingDiverged) as nan:
        _log(make_watchdog_callback(queue.Queue()), 3, math.nan)
    assert nan.value.details["reason"] == "nan_loss" and nan.value.details["value"] == "nan"
    json.dumps(nan.value.details, allow_nan=False)  # JSONB has no NaN: a non-finite value is text


def test_callback_ignores_logs_without_a_loss() -> None:
    callback = make_watchdog_callback(queue.Queue())
    callback.on_log(SimpleNamespace(), SimpleNamespace(global_step=1), SimpleNamespace(), logs={"train_runtime": 1.0})
    _log(callback, 1, 2.0, grad_norm=None)


def test_training_diverged_is_classified_and_described() -> None:
    error = TrainingDiverged(7, "nan_loss", math.nan, last_good_step=5)
    assert classify(error) == ErrorCategory.TRAINING_DIVERGED
    described = describe(error)
    info = CATALOGUE[ErrorCategory.TRAINING_DIVERGED]
    assert info.severity == Severity.RECOVERABLE
    assert described["category"] == "TRAINING_DIVERGED" and described["user_message"] == info.user_message
    assert described["details"] == {
        "step": 7,
        "reason": "nan_loss",
        "value": "nan",
        "median": None,
        "last_good_step": 5,
    }
    assert "Training diverged at step 7: nan_loss" in str(described["message"])
    ErrorPayload.model_validate({"type": "error", **described})
    # The cause chain of a wrapped one still says what it was.
    try:
        try:
            raise error
        except TrainingDiverged as inner:
            raise RuntimeError("trainer thread failed") from inner
    except RuntimeError as outer:
        assert classify(outer) == ErrorCategory.TRAINING_DIVERGED


def _optimizer_and_schedule(lr: float) -> tuple[torch.optim.Optimizer, Any]:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([{"params": [weight]}, {"params": [torch.nn.Parameter(torch.ones(1))]}], lr=lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, num_warmup_steps=1, num_training_steps=10)


def _step(optimizer: torch.optim.Optimizer, schedule: Any) -> None:
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    schedule.step()


def test_a_resumed_schedule_follows_the_new_learning_rate() -> None:
    """HF restores the checkpoint's optimizer and schedule, old rate and all: rescaled, they follow the new one."""
    trained, trained_schedule = _optimizer_and_schedule(2e-4)
    for _ in range(3):
        _step(trained, trained_schedule)
    at_step_3 = trained_schedule.get_last_lr()[0]

    resumed, resumed_schedule = _optimizer_and_schedule(1e-4)  # the retry's halved rate
    resumed.load_state_dict(trained.state_dict())
    resumed_schedule.load_state_dict(trained_schedule.state_dict())
    # What HF's resume alone gives: the checkpoint's rate.
    assert resumed_schedule.get_last_lr()[0] == pytest.approx(at_step_3)
    assert rescale_learning_rate(resumed, resumed_schedule, 1e-4) == pytest.approx(2e-4)
    assert resumed_schedule.get_last_lr()[0] == pytest.approx(at_step_3 / 2)
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([at_step_3 / 2] * 2)
    _step(resumed, resumed_schedule)
    _step(trained, trained_schedule)
    assert resumed_schedule.get_last_lr()[0] == pytest.approx(trained_schedule.get_last_lr()[0] / 2)
    assert resumed.param_groups[0]["lr"] == pytest.approx(trained.param_groups[0]["lr"] / 2)
    # Same rate: nothing to do.
    assert rescale_learning_rate(resumed, resumed_schedule, 1e-4) is None


def test_nan_loss_hook_poisons_one_step_on_the_first_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    loss = torch.tensor(2.0)
    assert faults.poison_loss(loss, 3, 0) is loss  # unset: nothing happens
    monkeypatch.setenv(faults.NAN_LOSS_AT_STEP_ENV, "3")
    assert torch.isnan(faults.poison_loss(loss, 3, 0))
    assert faults.poison_loss(loss, 2, 0) is loss and faults.poison_loss(loss, 4, 0) is loss
    assert faults.poison_loss(loss, 3, 1) is loss  # default: the first try only
    monkeypatch.setenv(faults.NAN_LOSS_TRIES_ENV, "3")
    assert torch.isnan(faults.poison_loss(loss, 3, 2)) and faults.poison_loss(loss, 3, 3) is loss
