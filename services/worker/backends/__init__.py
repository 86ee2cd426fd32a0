"""GPU backends: where the trainer runs. One interface, several homes."""

from __future__ import annotations

from services.worker.backends.base import GpuBackend
from shared.settings import Settings


def create_backend(settings: Settings) -> GpuBackend:
    if settings.gpu_backend == "local":
        from services.worker.backends.local import LocalBackend

        return LocalBackend(settings)
    if settings.gpu_backend == "modal":
        from services.worker.backends.modal import ModalBackend

        return ModalBackend(settings)
    raise ValueError(f"Unknown FASTBRAIN_GPU_BACKEND '{settings.gpu_backend}'; allowed: local, modal")
