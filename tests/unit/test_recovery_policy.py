"""The auto-recovery policy, branch by branch."""

from __future__ import annotations

from services.worker.recovery import RecoveryLimits, decide
from shared.errors import ErrorCategory
from shared.schemas.training import Hyperparameters

LIMITS = RecoveryLimits(network_max_retries=3, network_backoff_seconds=2.0, gpu_unavailable_max_requeues=2)


def _oom_chain(hp: Hyperparameters) -> list[str]:
    steps: list[str] = []
    history: list[dict[str, object]] = []
    while True:
        decision = decide(ErrorCategory.CUDA_OOM, hp, history, LIMITS)
        steps.append(str(decision.details["action"]))
        if decision.action == "fail":
            return steps
        assert decision.hyperparameters is not None
        hp = decision.hyperparameters
        history.append({"category": "CUDA_OOM"})


def test_oom_halves_batch_keeping_effective_batch_then_checkpointing_then_seq_length() -> None:
    hp = Hyperparameters(batch_size=4, gradient_accumulation_steps=2, max_seq_length=256)
    first = decide(ErrorCategory.CUDA_OOM, hp, [], LIMITS)
    assert first.action == "retry" and first.hyperparameters is not None
    assert (first.hyperparameters.batch_size, first.hyperparameters.gradient_accumulation_steps) == (2, 4)
    assert "4 → 2" in first.message and "effective batch stays 8" in first.message
    assert not first.keep_checkpoints
    assert _oom_chain(hp) == [
        "reduce_batch_size",
        "reduce_batch_size",
        "enable_gradient_checkpointing",
        "halve_max_seq_length",
        "halve_max_seq_length",
        "give_up",
    ]


def test_oom_seq_length_step_warns() -> None:
    hp = Hyperparameters(batch_size=1, gradient_checkpointing=True, max_seq_length=512)
    decision = decide(ErrorCategory.CUDA_OOM, hp, [], LIMITS)
    assert decision.hyperparameters is not None and decision.hyperparameters.max_seq_length == 256
    assert decision.warning and "256" in decision.warning
    # The trainer then drops the examples whose answer the shorter length cuts, instead of refusing them all.
    assert decision.hyperparameters.drop_overlong and not hp.drop_overlong


def test_network_backs_off_exponentially_three_times() -> None:
    hp = Hyperparameters()
    history: list[dict[str, object]] = []
    delays = []
    for _ in range(3):
        decision = decide(ErrorCategory.NETWORK_ERROR, hp, history, LIMITS)
        assert decision.action == "retry" and decision.keep_checkpoints
        delays.append(decision.delay_seconds)
        history.append({"category": "NETWORK_ERROR"})
    assert delays == [2.0, 4.0, 8.0]
    assert decide(ErrorCategory.NETWORK_ERROR, hp, history, LIMITS).action == "fail"


def test_gpu_unavailable_requeues_bounded() -> None:
    hp = Hyperparameters()
    first = decide(ErrorCategory.GPU_UNAVAILABLE, hp, [], LIMITS)
    assert first.action == "requeue" and first.delay_seconds == LIMITS.gpu_unavailable_delay_seconds
    history = [{"category": "GPU_UNAVAILABLE"}] * 2
    assert decide(ErrorCategory.GPU_UNAVAILABLE, hp, history, LIMITS).action == "fail"


def test_user_errors_fail_fast() -> None:
    for category in (ErrorCategory.DATA_FORMAT_ERROR, ErrorCategory.MODEL_LOAD_FAIL, ErrorCategory.INTERNAL):
        assert decide(category, Hyperparameters(), [], LIMITS).action == "fail"


def _diverged_at(step: int, last_good: int | None, reason: str = "nan_loss") -> dict[str, object]:
    return {"step": step, "reason": reason, "value": "nan", "median": None, "last_good_step": last_good}


def test_divergence_rolls_back_halving_the_learning_rate_then_gives_up() -> None:
    hp = Hyperparameters(learning_rate=2e-4)
    limits = RecoveryLimits(divergence_max_retries=2)
    first = decide(ErrorCategory.TRAINING_DIVERGED, hp, [], limits, _diverged_at(7, 5))
    assert first.action == "retry" and first.keep_checkpoints and first.delay_seconds == 0
    assert first.hyperparameters is not None and first.hyperparameters.learning_rate == 1e-4
    assert first.message == (
        "Loss became NaN at step 7: rolled back to step 5 and halved the learning rate 0.0002 → 0.0001 (retry 1 of 2)"
    )
    assert first.details == {"action": "rollback_halve_learning_rate", "retry": 1, "rolled_back_to_step": 5}
    history: list[dict[str, object]] = [{"category": "TRAINING_DIVERGED"}]
    second = decide(ErrorCategory.TRAINING_DIVERGED, first.hyperparameters, history, limits, _diverged_at(6, None))
    assert second.hyperparameters is not None and second.hyperparameters.learning_rate == 5e-5
    assert "rolled back to the start" in second.message and "(retry 2 of 2)" in second.message
    history.append({"category": "TRAINING_DIVERGED"})
    last = decide(ErrorCategory.TRAINING_DIVERGED, second.hyperparameters, history, limits, _diverged_at(6, 3))
    assert last.action == "fail" and last.details == {"action": "give_up"}
    assert last.message == "Loss became NaN at step 6: gave up after 2 rollbacks with a lower learning rate"
    # Other categories' retries do not count against the divergence ones.
    assert decide(ErrorCategory.TRAINING_DIVERGED, hp, [{"category": "NETWORK_ERROR"}] * 5, limits).action == "retry"
    assert decide(ErrorCategory.TRAINING_DIVERGED, hp, [], RecoveryLimits(divergence_max_retries=0)).action == "fail"


def test_divergence_says_what_happened() -> None:
    hp = Hyperparameters(learning_rate=1e-3)
    spike = {"step": 9, "reason": "loss_spike", "value": 7.5, "median": 2.0, "last_good_step": 6}
    message = decide(ErrorCategory.TRAINING_DIVERGED, hp, [], LIMITS, spike).message
    assert message.startswith("Loss spiked to 7.5 at step 9 (over 3× the running median 2): rolled back to step 6")
    for reason, said in [
        ("inf_loss", "Loss became infinite"),
        ("nan_grad_norm", "Gradient norm became NaN"),
        ("inf_grad_norm", "Gradient norm became infinite"),
    ]:
        assert decide(ErrorCategory.TRAINING_DIVERGED, hp, [], LIMITS, _diverged_at(4, 2, reason)).message.startswith(
            f"{said} at step 4: rolled back to step 2 and halved the learning rate 0.001 → 0.0005"
        )
    # Without details (an older trainer): still a retry, from the start.
    assert (
        "Training diverged: rolled back to the start" in decide(ErrorCategory.TRAINING_DIVERGED, hp, [], LIMITS).message
    )
