"""Device keys: where a job ran, as estimates calibrate on it."""

from __future__ import annotations


def device_key(backend_device: str) -> str:
    """A backend's device (`cpu`, `cuda:0`, `modal:A10G`) as a calibration key (`cpu`, `cuda`, `a10g`)."""
    value = backend_device.strip().lower()
    if value.startswith("modal:"):
        return value.split(":", 1)[1]
    return value.split(":", 1)[0]


def device_for(backend: str, gpu_type: str | None, local_device: str = "cpu") -> str:
    """The calibration key of where a job will run: `cpu`/`cuda` locally, the GPU type on Modal."""
    if backend == "modal":
        return (gpu_type or "").strip().lower()
    return local_device
