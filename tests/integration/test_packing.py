"""Packing: the algorithm, and proof with a real (tiny-random) Llama that packed examples do not see each other."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from services.gpu import data as data_mod
from services.gpu import packing
from services.gpu.models import ensure_model, load_tokenizer
from shared.schemas.events import LogPayload
from shared.schemas.training import Turn
from tests.integration.test_trainer import CONVERSATIONS, make_spec, models_dir, progress_of, run_trainer

SYSTEM = "You are Bob, a friendly plumber. Answer briefly."
MORE = [
    Turn(user="Do you fix boilers?", assistant="Yes, all brands, and we service them yearly too."),
    Turn(user="Ok", assistant="Great."),
    Turn(
        user="What areas do you cover?",
        assistant="The whole city and the villages within twenty miles, weekends included.",
        history=[{"user": "Hello", "assistant": "Hello! How can I help?"}],
    ),
]


# --- the algorithm ---------------------------------------------------------------------------------------------


def fake_examples(lengths: list[int]) -> list[dict[str, list[int]]]:
    out = []
    for n, length in enumerate(lengths):
        ids = [1000 * (n + 1) + k for k in range(length)]
        out.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2 :]})
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pack_keeps_every_token_splits_nothing_and_fits(seed: int) -> None:
    rng = random.Random(seed)
    max_length = 64
    lengths = [rng.randint(1, 64) for _ in range(40)] + [90]  # one over max_length: alone, kept whole
    examples = fake_examples(lengths)
    rows = packing.pack_examples(examples, max_length)

    seen = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lengths"])
        assert len(row["input_ids"]) <= max_length or row["seq_lengths"] == [90]
        start = 0
        for length in row["seq_lengths"]:
            ids = row["input_ids"][start : start + length]
            assert row["position_ids"][start : start + length] == list(range(length))
            original = next(e for e in examples if e["input_ids"] == ids)  # a whole example, unsplit
            assert row["labels"][start] == -100  # never predicted from the previous example
            assert row["labels"][start + 1 : start + length] == original["labels"][1:]
            seen.append(ids[0])
            start += length
    assert sorted(seen) == sorted(e["input_ids"][0] for e in examples)  # each example exactly once
    assert sum(len(r["input_ids"]) for r in rows) == sum(lengths)
    # First fit leaves at most one row half empty or worse (no two such rows: the second would have fitted).
    assert sum(1 for r in rows if 2 * len(r["input_ids"]) <= max_length) <= 1


def test_collator_pads_right_as_own_segment_and_masks_real_tokens() -> None:
    rows = packing.pack_examples(fake_examples([5, 3, 4]), max_length=8)
    assert [r["seq_lengths"] for r in rows] == [[5, 3], [4]]
    batch = packing.PackedCollator(pad_token_id=7)(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch["input_ids"][1, 4:].tolist() == [7] * 4
    assert batch["labels"][1, 4:].tolist() == [-100] * 4
    assert "attention_mask" not in packing.model_inputs(batch)


def test_collator_pads_to_a_multiple_as_the_trainer_does_on_cuda() -> None:
    """Padded to a multiple (few distinct lengths on a GPU): the pads are one more segment, unlabelled, unmasked."""
    rows = packing.pack_examples(fake_examples([5, 3, 4]), max_length=8)
    batch = packing.PackedCollator(pad_token_id=7, pad_to_multiple_of=6)(rows)
    assert batch["input_ids"].shape == (2, 12)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    assert batch["attention_mask"].sum(dim=1).tolist() == [8, 4]
    assert batch["labels"][0, 8:].tolist() == [-100] * 4 and batch["input_ids"][0, 8:].tolist() == [7] * 4


def test_packed_trainer_class_drops_the_counting_mask_before_the_forward() -> None:
    received: dict[str, Any] = {}

    class Base:
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any) -> Any:
            received.update(inputs)
            return 0.0

    trainer = packing.packed_trainer_class(Base)()
    trainer.compute_loss(None, {"input_ids": 1, "position_ids": 2, "attention_mask": 3})
    assert set(received) == {"input_ids", "position_ids"}


# --- isolation with the real model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    ensure_model("tiny-random", models_dir())
    return load_tokenizer("tiny-random", models_dir())


@pytest.fixture(scope="module")
def examples(tokenizer: Any) -> list[dict[str, list[int]]]:
    found, _ = data_mod.prepare_examples(tokenizer, SYSTEM, CONVERSATIONS + MORE, 512)
    assert all(e["labels"][0] == -100 for e in found)  # the template's first token is never a target anyway
    return found


def load_model(attn: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        Path(models_dir()) / "tiny-random", dtype=torch.float32, attn_implementation=attn
    )
    return model.eval()


def token_losses(logits: Any, labels: Any) -> Any:
    """Per-token cross-entropy (label at t predicted from t-1), 0 where unlabelled; shape [batch, seq-1]."""
    import torch.nn.functional as F

    shifted = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), shifted.clamp(min=0), reduction="none")
    return losses * (shifted != -100)


def unpacked(model: Any, examples: list[dict[str, list[int]]]) -> list[tuple[Any, float]]:
    import torch

    out = []
    with torch.no_grad():
        for e in examples:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            logits = model(input_ids=ids, use_cache=False).logits
            out.append((logits[0], float(token_losses(logits, labels).sum())))
    return out


def packed_forward(
    model: Any, rows: list[dict[str, Any]], isolate: bool = True, pad_to_multiple_of: int | None = None
) -> tuple[Any, Any]:
    import torch

    batch = packing.PackedCollator(pad_token_id=0, pad_to_multiple_of=pad_to_multiple_of)(rows)
    inputs = packing.model_inputs(batch)
    if not isolate:  # negative control: one plain causal sequence per row, continuous positions
        inputs["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        inputs["attention_mask"] = batch["attention_mask"]
    with torch.no_grad():
        out = model(**inputs, use_cache=False)
    return out, batch


@pytest.mark.parametrize(("attn", "pad_to_multiple_of"), [("sdpa", None), ("eager", None), ("sdpa", 64)])
def test_packed_loss_and_logits_equal_unpacked(
    attn: str, pad_to_multiple_of: int | None, examples: list[dict[str, list[int]]]
) -> None:
    model = load_model(attn)
    alone = unpacked(model, examples)
    longest = max(len(e["input_ids"]) for e in examples)
    rows = packing.pack_examples(examples, max_length=2 * longest)
    assert len(rows) < len(examples) and any(len(r["seq_lengths"]) >= 3 for r in rows)  # really packed

    out, batch = packed_forward(model, rows, pad_to_multiple_of=pad_to_multiple_of)
    per_token = token_losses(out.logits, batch["labels"])
    by_first_token = {tuple(e["input_ids"]): i for i, e in enumerate(examples)}
    total_packed = 0.0
    for r, row in enumerate(rows):
        start = 0
        for length in row["seq_lengths"]:
            i = by_first_token[tuple(row["input_ids"][start : start + length])]
            logits_alone, loss_alone = alone[i]
            diff = (out.logits[r, start : start + length] - logits_alone).abs().max().item()
            assert diff < 1e-4, f"example {i}: packed logits differ by {diff}"
            loss_here = float(per_token[r, start : start + length - 1].sum())  # within the example only
            assert loss_here == pytest.approx(loss_alone, abs=1e-4)
            total_packed += loss_here
            start += length
    total_alone = sum(loss for _, loss in alone)
    assert float(per_token.sum()) == pytest.approx(total_packed, abs=1e-4)  # nothing across boundaries or padding
    assert total_packed == pytest.approx(total_alone, abs=1e-4)
    # The model's own loss (what the Trainer logs) is the mean over the same labelled tokens.
    n_labelled = sum(sum(1 for lbl in e["labels"][1:] if lbl != -100) for e in examples)
    assert float(out.loss) == pytest.approx(total_alone / n_labelled, abs=1e-5)

    # Negative control: without the isolation the same rows give different losses, so this test can fail.
    leaky, _ = packed_forward(model, rows, isolate=False, pad_to_multiple_of=pad_to_multiple_of)
    assert abs(float(token_losses(leaky.logits, batch["labels"]).sum()) - total_alone) > 1e-2


# --- through the trainer -------------------------------------------------------------------------------------------


def test_trainer_packs_when_asked_and_counts_real_tokens(tmp_path: Path) -> None:
    runs = {}
    for packed in (True, False):
        (tmp_path / str(packed)).mkdir()
        spec = make_spec(
            tmp_path / str(packed),
            conversations=CONVERSATIONS + MORE,
            epochs=1,
            batch_size=2,
            gradient_accumulation_steps=1,
            max_seq_length=256,
            packing=packed,
        )
        runs[packed] = run_trainer(spec)
        assert runs[packed].returncode == 0, runs[packed].stderr[-3000:]

    def loaded_tokens(run: Any) -> int:
        message = next(p.message for p in run.payloads if isinstance(p, LogPayload) and p.message.startswith("Loaded"))
        return int(message.split("(")[1].split(" tokens")[0])

    messages = [p.message for p in runs[True].payloads if isinstance(p, LogPayload)]
    assert any(m.startswith(f"Packing: {len(CONVERSATIONS + MORE)} examples into ") for m in messages)
    assert not any(
        isinstance(p, LogPayload) and p.message.startswith("Packing") for p in runs[False].payloads
    )  # off: the unpacked path as before
    packed_steps = progress_of(runs[True])[-1].total_steps
    assert progress_of(runs[False])[-1].total_steps == 4  # 8 examples, batch 2
    assert packed_steps < 4  # fewer, fuller rows
    for run in runs.values():
        # One epoch: every real token once, padding never counted (tokens/s counts real tokens).
        assert progress_of(run)[-1].tokens_seen == loaded_tokens(run)  # type: ignore[attr-defined]


def test_small_skills_train_unpacked_unless_asked(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, conversations=CONVERSATIONS + MORE, max_steps=2, batch_size=2, max_seq_length=256)
    run = run_trainer(spec)
    assert run.returncode == 0, run.stderr[-3000:]
    messages = [p.message for p in run.payloads if isinstance(p, LogPayload)]
    assert any(m.startswith("Packing off:") for m in messages), messages
    assert not any(m.startswith("Packing:") for m in messages)
