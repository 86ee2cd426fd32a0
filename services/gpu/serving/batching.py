"""Decode steps for many generations on one base model as one batched forward pass.

A single-token forward is memory-bandwidth bound: reading the weights costs the same for
one row as for eight. So the generations on one base that are past their prefill decode
together: their KV caches live as rows of one left-padded `DynamicCache` (0 in the
attention mask on the pads, each row's own position ids), rebuilt only when a generation
joins or leaves, and mixed adapters share the pass through PEFT's per-row
`adapter_names`. Each generation still picks its own token (`Sequence.sample`), so
sampling, stop handling and streaming are the same code as for a lone generation.
"""

from __future__ import annotations

from typing import Any

from services.gpu.serving.decoding import Sequence, Step

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in `adapter_names`


class DecodeBatch:
    """The generations on one base that decode together, and their one batched KV cache."""

    def __init__(self) -> None:
        self.members: list[Sequence] = []
        self.cache: Any = None  # a DynamicCache, [rows, heads, padded length, head_dim] per layer
        self.mask: Any = None  # [rows, padded length]: 1 on real tokens, 0 on the left pads

    @staticmethod
    def can_join(sequence: Sequence) -> bool:
        """A solo cache of plain full-attention layers (all `Sequence` makes) can be padded and stacked here."""
        from transformers.cache_utils import DynamicLayer

        cache = sequence.cache
        return cache is not None and bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)

    def holds(self, sequence: Sequence) -> bool:
        return any(sequence is member for member in self.members)

    def sync(self, sequences: list[Sequence]) -> None:
        """Make the rows exactly `sequences`, in that order: rebuild the batched cache if any joined or left."""
        if len(sequences) == len(self.members) and all(a is b for a, b in zip(sequences, self.members, strict=True)):
            return
        import torch

        with torch.inference_mode():
            self._rebuild(sequences)

    def _rebuild(self, sequences: list[Sequence]) -> None:
        import torch
        from transformers.cache_utils import DynamicCache

        rows = [self._kv(sequence) for sequence in sequences]
        lengths = [layers[0][0].shape[-2] for layers in rows]
        padded = max(lengths)
        first_k, first_v = rows[0][0]
        layers = []
        for index in range(len(rows[0])):
            keys = first_k.new_zeros((len(rows), first_k.shape[1], padded, first_k.shape[3]))
            values = first_v.new_zeros((len(rows), first_v.shape[1], padded, first_v.shape[3]))
            for row, (layer_rows, length) in enumerate(zip(rows, lengths, strict=True)):
                keys[row, :, padded - length :] = layer_rows[index][0][0]
                values[row, :, padded - length :] = layer_rows[index][1][0]
            layers.append((keys, values))
        mask = torch.zeros((len(rows), padded), dtype=torch.long, device=first_k.device)
        for row, length in enumerate(lengths):
            mask[row, padded - length :] = 1
        self.cache = DynamicCache(layers)
        self.mask = mask
        self.members = list(sequences)
        for sequence in sequences:
            sequence.cache = None  # its KV now lives in the batch

    def release(self, keep: list[Sequence]) -> None:
        """Give each of `keep` (members still running alone) its own cache back, and drop the batched one."""
        import torch
        from transformers.cache_utils import DynamicCache

        with torch.inference_mode():
            for sequence in keep:
                if sequence.cache is None and self.holds(sequence):
                    layers = [(k.clone(), v.clone()) for k, v in self._kv(sequence)]
                    sequence.cache = DynamicCache(layers)
        self.members, self.cache, self.mask = [], None, None

    def forward(self, model: Any, adapter_names: list[str] | None) -> Any:
        """One token for every row: their next-token logits, [rows, vocab]. On failure the cache is as it was."""
        import torch

        saved = [(layer.keys, layer.values) for layer in self.cache.layers]  # `update` concatenates: these stay valid
        mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        device = model.device
        ids = torch.tensor([[sequence.generated[-1]] for sequence in self.members], device=device)
        positions = self.mask.sum(dim=1, keepdim=True).to(device)  # each row's real length: its next position
        extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
        try:
            with torch.inference_mode():
                out = model(
                    input_ids=ids,
                    attention_mask=mask.to(device),
                    position_ids=positions,
                    past_key_values=self.cache,
                    use_cache=True,
                    **extra,
                )
        except BaseException:
            for layer, (keys, values) in zip(self.cache.layers, saved, strict=True):
                layer.keys, layer.values = keys, values
            raise
        self.mask = mask
        return out.logits[:, -1, :]

    def _kv(self, sequence: Sequence) -> list[tuple[Any, Any]]:
        """`sequence`'s keys and values per layer, [1, heads, length, head_dim], without pads."""
        layers = self.cache.layers if self.cache is not None else []
        for row, member in enumerate(self.members):
            if member is sequence:
                start = int(self.mask.shape[1] - self.mask[row].sum())
                return [
                    (layer.keys[row : row + 1, :, start:], layer.values[row : row + 1, :, start:]) for layer in layers
                ]
        return [(layer.keys, layer.values) for layer in sequence.cache.layers]


def sample_rows(batch: DecodeBatch, logits: Any) -> list[Step | Exception]:
    """Each member picks its own token from its row: a Step, or the exception that member alone raised."""
    results: list[Step | Exception] = []
    for row, sequence in enumerate(batch.members):
        try:
            results.append(sequence.sample(logits[row : row + 1]))
        except Exception as exc:
            results.append(exc)
    return results
