"""Keep the best adapter, not the last: the LoRA weights of the step with the lowest held-out loss.

The progress callback measures the held-out loss about every 10% of the steps and at the last one
(`callbacks.eval_schedule`) and offers each measurement here. Whenever it improves on the best seen, the
trainable tensors (the LoRA A/B matrices only: a few MB to a few hundred MB for an 8B model's r=16,
nothing of the frozen base) are copied to the CPU. At the end, when the last measured weights are worse
than the best, `restore` loads the copy back into the model before the adapter is saved, so the saved
adapter's held-out loss is never worse than the best seen during the run.

The copy lives in memory only: an attempt that resumes from a checkpoint starts its own record (the
weights before the resume are not compared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BestWeights:
    best_step: int | None = None
    best_loss: float | None = None
    last_step: int | None = None
    last_loss: float | None = None
    evaluations: int = 0
    since_best: int = 0  # evaluations after the best one that did not beat it
    _state: dict[str, Any] | None = field(default=None, repr=False)

    def offer(self, model: Any, step: int, loss: float | None) -> bool:
        """Record the held-out loss of the weights after optimizer step `step`; copy them if it is the best yet."""
        if loss is None:
            return False
        self.evaluations += 1
        self.last_step, self.last_loss = step, loss
        if self.best_loss is not None and loss >= self.best_loss:
            self.since_best += 1
            return False
        self._state = trainable_state(model)
        self.best_step, self.best_loss, self.since_best = step, loss, 0
        return True

    def stalled(self, patience: int) -> bool:
        """Whether the last `patience` evaluations all failed to beat the best (0: never)."""
        return patience > 0 and self.since_best >= patience

    @property
    def last_is_worse(self) -> bool:
        """Whether the last measured weights are worse than the best copy (then `restore` has work to do)."""
        return (
            self._state is not None
            and self.best_loss is not None
            and self.last_loss is not None
            and self.last_loss > self.best_loss
        )

    def restore(self, model: Any) -> bool:
        """Load the best copy back into `model` when the last weights are worse; whether it did."""
        if not self.last_is_worse:
            return False
        assert self._state is not None
        load_trainable_state(model, self._state)
        return True

    def message(self, restored: bool) -> str | None:
        """The log line that says which step's weights the adapter keeps (None before any measurement)."""
        if self.best_step is None or self.best_loss is None or self.last_loss is None:
            return None
        if restored:
            return (
                f"Kept the weights of step {self.best_step}: held-out loss {self.best_loss:.4f} "
                f"(the last step had {self.last_loss:.4f})"
            )
        return (
            f"Kept the weights of the last step ({self.last_step}): held-out loss {self.last_loss:.4f}, "
            "the best measured"
        )


def trainable_state(model: Any) -> dict[str, Any]:
    """A CPU copy of the model's trainable tensors, by parameter name."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    """Copy `state` (from `trainable_state` of the same model) back into its parameters, in place."""
    import torch

    parameters = dict(model.named_parameters())
    missing = [name for name in state if name not in parameters]
    if missing:
        raise RuntimeError(f"cannot restore the best weights: {len(missing)} tensors are gone ({missing[0]}, ...)")
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor.to(parameters[name].device))
