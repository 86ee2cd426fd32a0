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
