"""The GPU backend contract (DESIGN.md): `train` yields event payloads.

Chat is not a worker's job: the inference engine (`fastbrain serve`, services/gpu/serving)
answers it, locally or through the Modal class's `chat` method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from shared.schemas.training import TrainingSpec


class GpuBackend(Protocol):
    name: str
    device: str

    def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        """Event payloads (`log`, `progress`, `complete`, `error`) as the trainer emits them.

        Closing the iterator early (or cancelling the consuming task) must stop
        the training and free its resources.
        """
        ...
