"""Event payloads of a training run, and the TrainerCallback that turns optimizer steps into them."""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from typing import TYPE_CHECKING, Any

from services.gpu import faults
from services.gpu.training.best import BestWeights
from shared.errors import TrainingDiverged

if TYPE_CHECKING:
    from transformers import TrainerCallback

Payload = dict[str, Any]

# The watchdog's loss spike: a loss over SPIKE_FACTOR x the running median of the steps before it,
# once there are SPIKE_MIN_STEPS of them (the first, noisy steps never count as a spike).
SPIKE_FACTOR = 3.0
SPIKE_MIN_STEPS = 5

# The held-out loss is measured after about every 1/EVAL_POINTS of the steps (10%) and after the last:
# often enough to see a run start to overfit and to keep the best weights (`best.py`), at the cost of
# EVAL_POINTS forward passes over the held-out examples (at most 50), a few percent of a run's time.
EVAL_POINTS = 10


def log(message: str, level: str = "info") -> Payload:
    return {"type": "log", "level": level, "message": message}


def gpu_memory_gb() -> float | None:
    """Peak CUDA memory allocated so far, in GiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3)


def eval_schedule(total_steps: int, points: int = EVAL_POINTS) -> set[int]:
    """The optimizer steps after which the held-out loss is measured: about every 1/points of the run, and
    the last step (every step of a run of `points` steps or fewer)."""
    total = max(total_steps, 1)
    return {-(-total * k // points) for k in range(1, points + 1)}


def make_progress_callback(
    events: queue.Queue[Payload],
    stop: threading.Event,
    history: list[Payload],
    eval_examples: list[dict[str, list[int]]] | None = None,
    best: BestWeights | None = None,
    patience: int = 0,
) -> TrainerCallback:
    """A TrainerCallback that turns each optimizer step's log into a `progress` payload.

    With held-out examples, the held-out loss is measured after about every 10% of the steps and after
    the last (`eval_schedule`), carried as `eval_loss` on that step's `progress` payload and offered to
    `best`, which keeps a copy of the best weights (before training and the saved adapter's: by the
    pipeline). With `patience`, training ends early once that many evaluations in a row bring no new
    best: on a few examples the held-out loss turns up long before the last epoch, and the steps after
    that only cost time (the best weights are kept either way). Setting `stop` ends training after the
    current step.
    """
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    from services.gpu.data import held_out_loss

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.last_step = 0
            self.first_step = 0
            self.tokens_at_start = 0
            self.eval_steps: set[int] = set()
            self.pending_eval: float | None = None
            self.stopping_early = False

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            self.started = time.perf_counter()
            # After a resume the counters start where the checkpoint left off.
            self.first_step = self.last_step = state.global_step
            self.tokens_at_start = int(state.num_input_tokens_seen or 0)
            total = max(state.max_steps, 1)
            self.eval_steps = eval_schedule(total)
            if state.global_step:
                events.put(
                    log(f"Resumed at step {state.global_step}/{state.max_steps}: optimizer and schedule restored")
                )
            effective = args.per_device_train_batch_size * args.gradient_accumulation_steps
            events.put(
                log(
                    f"Training started: {state.max_steps} steps, {int(state.num_train_epochs)} epoch(s), "
                    f"effective batch {effective}"
                )
            )

        def on_step_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            faults.scale_learning_rate(kwargs.get("optimizer"), state.global_step + 1, state.max_steps)

        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            faults.step_delay()
            model = kwargs.get("model")
            if stop.is_set():
                control.should_training_stop = True
            elif eval_examples and state.global_step in self.eval_steps and model is not None:
                self.pending_eval = held_out_loss(model, eval_examples)
                if best is not None:
                    best.offer(model, state.global_step, self.pending_eval)
                    if best.stalled(patience) and state.global_step < state.max_steps:
                        control.should_training_stop = self.stopping_early = True

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or "loss" not in logs or state.global_step <= self.last_step:
                return
            self.last_step = step = state.global_step
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            total = max(state.max_steps, 1)
            tokens = int(state.num_input_tokens_seen or 0) - self.tokens_at_start
            done_here = max(step - self.first_step, 1)
            payload: Payload = {
                "type": "progress",
                "step": step,
                "total_steps": total,
                "epoch": round(float(state.epoch or 0.0), 4),
                "total_epochs": int(state.num_train_epochs),
                "loss": float(logs["loss"]),
                "learning_rate": float(logs["learning_rate"]) if "learning_rate" in logs else None,
                "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                "tokens_per_second": round(tokens / elapsed, 2),
                "eta_seconds": round(elapsed / done_here * max(total - step, 0), 1),
                "progress": round(min(100.0, 100.0 * step / total), 2),
                "gpu_memory_used_gb": gpu_memory_gb(),
                "tokens_seen": tokens,
                "elapsed_seconds": round(elapsed, 2),
            }
            if self.pending_eval is not None:
                payload["eval_loss"], self.pending_eval = self.pending_eval, None
            history.append(payload)
            events.put(payload)
            if self.stopping_early and best is not None:
                events.put(
                    log(
                        f"Stopped early at step {step}/{total}: the held-out loss has not improved for "
                        f"{best.since_best} evaluations (best {best.best_loss:.4f} at step {best.best_step})"
                    )
                )

    return ProgressCallback()


def divergence(
    loss: float | None, grad_norm: float | None, previous: list[float]
) -> tuple[str, float, float | None] | None:
    """Why a step's loss / gradient norm is a divergence, given the earlier losses of the run, or None.

    Returns (reason, value, running median): reason is nan_loss, inf_loss, nan_grad_norm,
    inf_grad_norm or loss_spike (loss > SPIKE_FACTOR x the median of the earlier losses, once there
    are at least SPIKE_MIN_STEPS of them).
    """
    if loss is not None and not math.isfinite(loss):
        return ("nan_loss" if math.isnan(loss) else "inf_loss"), loss, None
    if grad_norm is not None and not math.isfinite(grad_norm):
        return ("nan_grad_norm" if math.isnan(grad_norm) else "inf_grad_norm"), grad_norm, None
    if loss is not None and len(previous) >= SPIKE_MIN_STEPS:
        median = statistics.median(previous)
        if median > 0 and loss > SPIKE_FACTOR * median:
            return "loss_spike", loss, median
    return None


def rescale_learning_rate(optimizer: Any, lr_scheduler: Any, learning_rate: float) -> float | None:
    """Make a resumed run follow `learning_rate` instead of the one its checkpoint was trained with.

    HF's resume loads the optimizer's and the schedule's state from the checkpoint: their `lr`,
    `initial_lr` and `base_lrs` carry the old rate, and the new `learning_rate` of the arguments
    would be ignored. Scales all of them by new / old (the schedules HF builds are a multiple of
    the base rate); returns the old base rate, or None when nothing needed changing.
    """
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper, if any
    base_lrs = list(getattr(scheduler, "base_lrs", None) or [])
    if optimizer is None or not base_lrs or not base_lrs[0] or math.isclose(base_lrs[0], learning_rate):
        return None
    old = float(base_lrs[0])
    ratio = learning_rate / old
    scheduler.base_lrs = [lr * ratio for lr in base_lrs]
    if getattr(scheduler, "_last_lr", None):
        scheduler._last_lr = [lr * ratio for lr in scheduler._last_lr]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * ratio
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * ratio
    return old


def make_watchdog_callback(events: queue.Queue[Payload]) -> TrainerCallback:
    """A TrainerCallback that stops a diverging run: a NaN/inf loss or gradient norm, or a loss spike.

    On such a step it raises `TrainingDiverged` from `on_log`, which HF's Trainer calls before it saves
    that step's checkpoint, so no checkpoint is written from the diverged state. On a resume whose
    learning rate differs from the checkpoint's (the divergence retry halves it), it makes the restored
    optimizer and schedule follow the new rate.
    """
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    class WatchdogCallback(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            # HF loads the checkpoint's optimizer and schedule before on_train_begin.
            if not state.global_step:
                return
            old = rescale_learning_rate(kwargs.get("optimizer"), kwargs.get("lr_scheduler"), args.learning_rate)
            if old is not None:
                events.put(
                    log(
                        f"Learning rate {old:g} → {args.learning_rate:g} from step {state.global_step} "
                        "(the checkpoint's optimizer and schedule follow the new rate)"
                    )
                )

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            grad_norm = float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None
            found = divergence(loss, grad_norm, self.losses)
            if found is not None:
                reason, value, median = found
                raise TrainingDiverged(state.global_step, reason, value, median=median)
            self.losses.append(loss)

    return WatchdogCallback()
