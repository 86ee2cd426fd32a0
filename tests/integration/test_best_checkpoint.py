"""Keep the best adapter, not the last: a real tiny-random run whose last step makes the held-out loss worse.

The trainer's learning-rate hook (FASTBRAIN_TEST_LR_SCALE_LAST_STEPS, services/gpu/faults.py) multiplies the
rate of the last optimizer step by -30: that step climbs the training loss instead of descending it (a
constant 2e-4 becomes -6e-3), so its weights score worse on the held-out examples than step 5's,
deterministically (same seed, same data), as a run that goes wrong at its end would. A hugely *raised* rate
does not do it here: tiny-random's held-out examples are near copies of its training ones (TWELVE), so any big
step towards the training data lowers their loss too. The watchdog cannot see the bad step: a step's loss is
measured before its own update.

Checkpoints are written every step (the last two kept), so the last step's weights and the best step's
(step 5) are on disk to compare with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from services.gpu import data
from services.gpu.models import load_tokenizer
from shared.rules.split import eval_split
from shared.schemas.events import CompletePayload, LogPayload, Payload, ProgressPayload, parse_payload
from shared.schemas.training import TrainingSpec
from tests.integration.test_trainer import REPO_ROOT, TWELVE, make_spec, models_dir

STEPS = 6
SYSTEM = "You are Bob, a friendly plumber. Answer briefly."


def _held_out_examples() -> list[dict[str, list[int]]]:
    """The trainer's held-out examples of TWELVE (its own split and tokenization)."""
    chat = data.chat_tokenizer(load_tokenizer("tiny-random", models_dir()))
    examples, _ = data.prepare_examples(chat, SYSTEM, TWELVE, 128)
    return [examples[i] for i in eval_split(len(examples), 42)[1]]


def _held_out_loss_of(adapter_dir: Path) -> float | None:
    """The held-out loss of the adapter in `adapter_dir`, loaded afresh on the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models_dir() / "tiny-random")
    return data.held_out_loss(PeftModel.from_pretrained(base, adapter_dir), _held_out_examples())


def _train(tmp_path: Path, steps: int, climbing_steps: int, **hyperparameters: Any) -> list[Payload]:
    """A tiny-random run of `steps` steps on TWELVE whose last `climbing_steps` climb the loss; its payloads."""
    spec_path = make_spec(
        tmp_path,
        conversations=TWELVE,
        max_steps=steps,
        batch_size=2,
        gradient_accumulation_steps=1,
        max_seq_length=128,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        **hyperparameters,
    )
    spec = TrainingSpec.model_validate_json(spec_path.read_text())
    spec_path.write_text(
        spec.model_copy(
            update={"checkpoint_dir": str(tmp_path / "checkpoints"), "checkpoint_every_steps": 1}
        ).model_dump_json()
    )
    proc = subprocess.run(
        [sys.executable, "-m", "services.gpu.trainer", str(spec_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "FASTBRAIN_TRAIN_DEVICE": "cpu",
            "FASTBRAIN_TEST_LR_SCALE_LAST_STEPS": str(climbing_steps),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [parse_payload(line) for line in proc.stdout.splitlines()]


def test_the_saved_adapter_is_the_best_step_not_the_last(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    payloads = _train(tmp_path, STEPS, climbing_steps=1)
    measured = {p.step: p.eval_loss for p in payloads if isinstance(p, ProgressPayload) and p.eval_loss is not None}
    assert list(measured) == list(range(1, STEPS + 1)), "a run of 10 steps or fewer is measured after every step"
    best_step = min(measured, key=lambda step: measured[step] or 0.0)
    assert best_step < STEPS and measured[STEPS] > measured[best_step], measured  # the hook made the last worse

    complete = payloads[-1]
    assert isinstance(complete, CompletePayload)
    assert complete.best_step == best_step and complete.restored_best is True
    assert complete.best_eval_loss == complete.eval_loss_after == measured[best_step]
    assert complete.last_eval_loss == measured[STEPS]
    assert complete.evaluation is not None and complete.evaluation.step == best_step
    messages = [p.message for p in payloads if isinstance(p, LogPayload)]
    assert (
        f"Kept the weights of step {best_step}: held-out loss {measured[best_step]:.4f} "
        f"(the last step had {measured[STEPS]:.4f})"
    ) in messages

    # The saved adapter is not the last step's weights (checkpoint-6 holds those) ...
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    last_dir = root / "a1" / f"checkpoint-{STEPS}"
    last = load_file(last_dir / "adapter_model.safetensors")
    assert saved.keys() == last.keys()
    assert any(not saved[name].equal(last[name]) for name in saved), "the last step's weights were saved"
    # ... but the best step's (step 5: its checkpoint is one of the newest two, still kept) ...
    assert best_step == STEPS - 1
    kept = load_file(root / "a1" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    assert all(saved[name].equal(kept[name]) for name in saved)
    # ... and loaded afresh, it scores the best held-out loss seen, below the last step's.
    saved_loss = _held_out_loss_of(tmp_path / "adapter")
    assert saved_loss is not None and abs(saved_loss - measured[best_step]) < 1e-5
    last_loss = _held_out_loss_of(last_dir)
    assert last_loss is not None and abs(last_loss - measured[STEPS]) < 1e-5 and saved_loss < last_loss


def test_training_stops_early_once_the_held_out_loss_stops_improving(tmp_path: Path) -> None:
    """Patience 2: the last 5 of 10 steps climb, so steps 6 and 7 score worse than step 5 and the run ends at 7."""
    payloads = _train(tmp_path, 10, climbing_steps=5, early_stopping_patience=2)
    measured = {p.step: p.eval_loss for p in payloads if isinstance(p, ProgressPayload) and p.eval_loss is not None}
    assert list(measured) == list(range(1, 8)), measured
    assert max(p.step for p in payloads if isinstance(p, ProgressPayload)) == 7  # no step after the 7th
    assert measured[6] > measured[5] and measured[7] > measured[5]
    messages = [p.message for p in payloads if isinstance(p, LogPayload)]
    assert (
        f"Stopped early at step 7/10: the held-out loss has not improved for 2 evaluations "
        f"(best {measured[5]:.4f} at step 5)"
    ) in messages
    complete = payloads[-1]
    assert isinstance(complete, CompletePayload)
    assert complete.best_step == 5 and complete.restored_best is True
    assert complete.eval_loss_after == measured[5]
