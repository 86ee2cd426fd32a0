"""Warm starts: the local backend's standby trainer, with real trainer processes and real training.

A standby has imported the ML libraries and loaded the base model before a job arrives; the job
takes it. Isolation must hold as without it: every job has its own process and a model loaded for
it alone (two jobs of one spec give the same adapter), a standby that died is replaced by a cold
start, a cancelled job ends only its process, and closing the backend ends the standby.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from services.worker.backends.local import LocalBackend
from shared.schemas.training import Hyperparameters, TrainingSpec
from shared.settings import Settings
from tests.integration.test_trainer import CONVERSATIONS, models_dir

pytestmark = pytest.mark.timeout(600)
MODEL = "tiny-random"


def spec(tmp: Path, name: str, **hyperparameters: Any) -> TrainingSpec:
    hp = {"max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 1, "max_seq_length": 128, **hyperparameters}
    return TrainingSpec(
        job_id=f"warm-{name}",
        skill_id="warm-skill",
        base_model=MODEL,
        system_prompt="You are Bob, a friendly plumber. Answer briefly.",
        conversations=CONVERSATIONS,
        hyperparameters=Hyperparameters(**hp),
        output_dir=str(tmp / name / "adapter"),
        models_dir=str(models_dir()),
    )


@pytest.fixture
async def backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    monkeypatch.setenv("FASTBRAIN_TRAIN_DEVICE", "cpu")
    settings = Settings(model_cache_dir=models_dir(), data_dir=tmp_path / "data", trainer_standby=True)
    backend = LocalBackend(settings)
    yield backend
    await backend.close()


async def run(backend: LocalBackend, job: TrainingSpec) -> list[dict[str, Any]]:
    return [payload async for payload in backend.train(job)]


def messages(payloads: list[dict[str, Any]]) -> list[str]:
    return [p["message"] for p in payloads if p["type"] == "log"]


async def next_standby(backend: LocalBackend) -> int:
    """The pid of the standby started after the last job ended."""
    assert backend._standby_starting is not None, "no standby was started after the job"
    await backend._standby_starting
    assert backend._standby is not None
    return backend._standby.process.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_jobs_take_the_warm_standby_each_in_a_fresh_process(backend: LocalBackend, tmp_path: Path) -> None:
    await backend.start(MODEL)
    assert backend._standby is not None
    first_pid = backend._standby.process.pid
    first = await run(backend, spec(tmp_path, "a"))
    assert first[-1]["type"] == "complete", first[-1]
    assert any(m.startswith("Model loaded: ") and m.endswith(", already warm") for m in messages(first))

    second_pid = await next_standby(backend)
    assert second_pid != first_pid and not alive(first_pid), "the finished job's process must be gone"
    second = await run(backend, spec(tmp_path, "b"))
    assert second[-1]["type"] == "complete", second[-1]
    assert any(m.endswith(", already warm") for m in messages(second))

    # Same spec and seed, each on a model loaded for it alone: the same adapter.
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-6, name


async def test_a_dead_standby_is_replaced_by_a_cold_start(backend: LocalBackend, tmp_path: Path) -> None:
    await backend.start(MODEL)
    assert backend._standby is not None
    backend._standby.process.kill()
    await backend._standby.process.wait()
    payloads = await run(backend, spec(tmp_path, "cold"))
    assert payloads[-1]["type"] == "complete", payloads[-1]
    assert not any(m.endswith(", already warm") for m in messages(payloads)), "a cold start loads its own model"


async def test_a_cancelled_job_ends_its_process_and_the_next_job_runs(backend: LocalBackend, tmp_path: Path) -> None:
    await backend.start(MODEL)
    assert backend._standby is not None
    cancelled_pid = backend._standby.process.pid
    events = backend.train(spec(tmp_path, "cancelled", max_steps=500))
    async for payload in events:
        if payload["type"] == "progress":
            break  # the worker's cancel: it stops consuming and closes the iterator
    await events.aclose()
    assert not alive(cancelled_pid)

    await next_standby(backend)
    payloads = await run(backend, spec(tmp_path, "after"))
    assert payloads[-1]["type"] == "complete", payloads[-1]


async def test_a_standby_that_cannot_load_its_model_still_runs_the_job(backend: LocalBackend, tmp_path: Path) -> None:
    await backend.start("no-such-model")
    payloads = await run(backend, spec(tmp_path, "job"))
    assert payloads[-1]["type"] == "complete", payloads[-1]


async def test_close_ends_the_standby(backend: LocalBackend) -> None:
    await backend.start(MODEL)
    assert backend._standby is not None
    pid = backend._standby.process.pid
    await backend.close()
    await asyncio.sleep(0)
    assert not alive(pid) and backend._standby is None


async def test_off_means_no_standby(tmp_path: Path) -> None:
    settings = Settings(model_cache_dir=models_dir(), data_dir=tmp_path / "data", trainer_standby=False)
    backend = LocalBackend(settings)
    await backend.start(MODEL)
    assert backend._standby is None
