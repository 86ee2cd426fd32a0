"""Keeping the best weights (services/gpu/training/best.py), the held-out evaluation schedule, and the
threads the side-by-side answers decode on."""

from __future__ import annotations

import torch

from services.gpu.training.best import BestWeights
from services.gpu.training.callbacks import eval_schedule
from services.gpu.training.evaluation import cpu_threads


def test_eval_schedule_every_tenth_and_the_last() -> None:
    assert eval_schedule(4) == {1, 2, 3, 4}  # 10 steps or fewer: every step
    assert eval_schedule(10) == set(range(1, 11))
    assert eval_schedule(100) == {10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
    assert eval_schedule(24) == {3, 5, 8, 10, 12, 15, 17, 20, 22, 24}
    assert max(eval_schedule(7)) == 7 and eval_schedule(0) == {1}


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
        self.lora = torch.nn.Parameter(torch.zeros(2))


def test_best_copy_is_restored_when_the_last_is_worse() -> None:
    model, best = Tiny(), BestWeights()
    for step, (value, loss) in enumerate([(1.0, 3.0), (2.0, 2.5), (3.0, 2.7)], start=1):
        with torch.no_grad():
            model.lora.fill_(value)
            model.frozen.fill_(value)
        best.offer(model, step, loss)
    assert (best.best_step, best.best_loss, best.last_step, best.last_loss) == (2, 2.5, 3, 2.7)
    assert best.last_is_worse
    assert best.restore(model)
    assert model.lora.tolist() == [2.0, 2.0]  # the trainable tensors of step 2 ...
    assert model.frozen.tolist() == [3.0, 3.0, 3.0]  # ... and nothing else (the base is never copied)
    assert best.message(True) == "Kept the weights of step 2: held-out loss 2.5000 (the last step had 2.7000)"


def test_the_last_weights_stay_when_they_are_the_best() -> None:
    model, best = Tiny(), BestWeights()
    best.offer(model, 1, 3.0)
    with torch.no_grad():
        model.lora.fill_(5.0)
    best.offer(model, 2, 2.0)
    best.offer(model, 3, 2.0)  # a tie: the last weights are as good, nothing to restore
    assert best.best_step == 2 and not best.last_is_worse and not best.restore(model)
    assert model.lora.tolist() == [5.0, 5.0]
    assert best.message(False) == "Kept the weights of the last step (3): held-out loss 2.0000, the best measured"
    assert BestWeights().message(False) is None and not BestWeights().restore(model)
    assert not best.offer(model, 4, None) and best.evaluations == 3


def test_decoding_on_a_cpu_takes_half_the_threads() -> None:
    assert [cpu_threads(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 8]


def test_stalled_after_patience_evaluations_without_a_new_best() -> None:
    model, best = Tiny(), BestWeights()
    for step, loss in enumerate([3.0, 2.0, 2.1, 2.0], start=1):  # a tie is no improvement
        best.offer(model, step, loss)
    assert best.since_best == 2 and best.stalled(2) and not best.stalled(3)
    assert not best.stalled(0)  # patience 0: early stopping is off
    best.offer(model, 5, 1.5)
    assert best.since_best == 0 and not best.stalled(1)
