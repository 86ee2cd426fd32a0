"""Event payloads of a training run, and the TrainerCallback that turns optimizer steps into them."""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from services.gpu import faults

if TYPE_CHECKING:
    from transformers import TrainerCallback

Payload = dict[str, Any]


def log(message: str, level: str = "info") -> Payload:
    return {"type": "log", "level": level, "message": message}


def gpu_memory_gb() -> float | None:
    """Peak CUDA memory allocated so far, in GiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3)


def make_progress_callback(
    events: queue.Queue[Payload],
    stop: threading.Event,
    history: list[Payload],
    eval_examples: list[dict[str, list[int]]] | None = None,
) -> TrainerCallback:
    """A TrainerCallback that turns each optimizer step's log into a `progress` payload.

    With held-out examples, the held-out loss is measured at about 25%, 50% and 75% of the steps and
    carried as `eval_loss` on that step's `progress` payload (before and after: by the pipeline).
    Setting `stop` ends training after the current step.
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

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            self.started = time.perf_counter()
            # After a resume the counters start where the checkpoint left off.
            self.first_step = self.last_step = state.global_step
            self.tokens_at_start = int(state.num_input_tokens_seen or 0)
            total = max(state.max_steps, 1)
            self.eval_steps = {-(-total * quarter // 4) for quarter in (1, 2, 3)} - {total}
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

        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            faults.step_delay()
            if stop.is_set():
                control.should_training_stop = True
            elif eval_examples and state.global_step in self.eval_steps and kwargs.get("model") is not None:
                self.pending_eval = held_out_loss(kwargs["model"], eval_examples)

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

    return ProgressCallback()
