"""Sequence packing: several short training examples share one row, without seeing each other.

`pack_examples` puts tokenized examples (`input_ids`, `labels`) into rows of at most `max_length`
tokens (first-fit decreasing; an example is never split). Each row carries `position_ids` that
restart at 0 at every example and `seq_lengths`, the lengths of the examples in it.

Isolation uses transformers' own packed-sequence support: when a batch has `position_ids` and
no `attention_mask`, `masking_utils.create_causal_mask` finds the resets
(`find_packed_sequence_indices`) and builds a block-diagonal causal mask (sdpa, eager, flex),
and FlashAttention-2 runs varlen from the same `position_ids`. So a token attends only to the
earlier tokens of its own example, with the positions (RoPE) it would have alone.

`PackedCollator` pads rows on the right (padding is its own segment after every real token, so
causality keeps it out of sight) and also returns a 2D `attention_mask` of the real tokens: the
Trainer counts `num_input_tokens_seen` from it (tokens/s stays a count of real tokens). The
trainer class from `packed_trainer_class` drops that mask before the forward, where it would
switch packed-sequence detection off.

Labels: the label at position t is predicted from position t-1, so the first token of each
example gets -100 (it would otherwise be predicted from the previous example's last token).
Unpacked, the first label is never used either, so the loss is the same sum over the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

IGNORE_INDEX = -100

if TYPE_CHECKING:
    from datasets import Dataset


def pack_examples(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Pack examples into rows of at most `max_length` tokens, first-fit decreasing.

    No example is split or dropped; one longer than `max_length` (already truncated upstream,
    normally) gets a row of its own. Rows come out in bin order; examples in a row keep the
    decreasing-length order of the packing.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]), reverse=True)
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []  # room left per row
    for i in order:
        size = len(examples[i]["input_ids"])
        for r, room in enumerate(free):
            if size <= room:
                rows[r].append(i)
                free[r] -= size
                break
        else:
            rows.append([i])
            free.append(max(max_length - size, 0))
    packed: list[dict[str, list[int]]] = []
    for members in rows:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        seq_lengths: list[int] = []
        for i in members:
            ids, lbl = examples[i]["input_ids"], examples[i]["labels"]
            if len(ids) != len(lbl):
                raise ValueError(f"example {i}: {len(ids)} input_ids but {len(lbl)} labels")
            if not ids:
                continue
            input_ids.extend(ids)
            # Never predict an example's first token from the previous example's last one.
            labels.append(IGNORE_INDEX)
            labels.extend(lbl[1:])
            position_ids.extend(range(len(ids)))
            seq_lengths.append(len(ids))
        if seq_lengths:
            packed.append(
                {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_lengths": seq_lengths}
            )
    return packed


@dataclass
class PackedCollator:
    """Pads packed rows on the right into a batch: `input_ids`, `labels`, `position_ids`, `attention_mask`.

    Padding gets `pad_token_id`, label -100 and positions 0, 1, ... (a segment of its own, after
    every real token). `attention_mask` marks the real tokens, for counting only: the packed
    trainer class removes it before the forward (see the module docstring).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((batch, longest), dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            if "position_ids" in feature:
                position_ids[row, :n] = torch.as_tensor(feature["position_ids"], dtype=torch.long)
            else:
                position_ids[row, :n] = torch.arange(n)
            position_ids[row, n:] = torch.arange(longest - n)
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": attention_mask,
        }


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The collator's batch as the model must get it: without the counting `attention_mask`."""
    return {k: v for k, v in batch.items() if k != "attention_mask"}


def packed_trainer_class(base: type) -> type:
    """`base` (an SFTTrainer subclass) taking `PackedCollator` batches: the mask is dropped before the forward.

    The Trainer has counted the real tokens from the mask by then (`num_input_tokens_seen`).
    """

    class PackedSFTTrainer(base):  # type: ignore[misc]
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if "position_ids" in inputs:
                inputs.pop("attention_mask", None)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return PackedSFTTrainer


@dataclass
class PackedData:
    dataset: Dataset
    collator: PackedCollator
    trainer_class: type
    examples: int
    rows: int
    tokens: int

    def message(self, max_length: int) -> str:
        fill = 100 * self.tokens / max(self.rows * max_length, 1)
        return (
            f"Packing: {self.examples} examples into {self.rows} sequences of up to {max_length} tokens "
            f"({fill:.0f}% full; examples do not attend to each other)"
        )


def pack_for_training(
    dataset: Dataset, max_length: int, pad_token_id: int, trainer_class: type, pad_to_multiple_of: int | None = None
) -> PackedData:
    """The training `dataset` (`input_ids`, `labels`) packed: dataset, collator and trainer class to train on it."""
    from datasets import Dataset

    examples = [
        {"input_ids": ids, "labels": lbl} for ids, lbl in zip(dataset["input_ids"], dataset["labels"], strict=True)
    ]
    rows = pack_examples(examples, max_length)
    columns = ("input_ids", "labels", "position_ids", "seq_lengths")
    dataset = Dataset.from_dict({c: [row[c] for row in rows] for c in columns})
    return PackedData(
        dataset=dataset,
        collator=PackedCollator(pad_token_id=pad_token_id, pad_to_multiple_of=pad_to_multiple_of),
        trainer_class=packed_trainer_class(trainer_class),
        examples=len(examples),
        rows=len(rows),
        tokens=sum(len(row["input_ids"]) for row in rows),
    )
