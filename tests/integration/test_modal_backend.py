"""The Modal path for real, minus the cloud: `SkillTrainer`'s methods run through Modal's `.local()`.

There is no Modal account and no GPU here, so this is the stand-in for the cloud: the worker's
`ModalBackend` is given a class lookup (its one injection point) that returns `.local()`-backed
methods instead of `modal.Cls.from_name(...)`. `.local()` is Modal's own in-process execution: it
instantiates the class, runs its `@modal.enter` hook (which warms `tiny-random` here) and the
method body. The only double is `LocalTrainer` below, which exposes `.remote_gen.aio` / `.remote.aio`
over `.local()` (a thread and a queue, as Modal's client streams a remote generator).
Everything else is real: the trainer, the Volume layout (a temp dir), the adapter files streamed
back, the worker's persist-then-publish path, PostgreSQL, Redis, cancel.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gpu import modal_app
from services.gpu.serving.remote import ModalEngine
from services.gpu.serving.residency import Residency
from services.gpu.serving.scheduler import Scheduler
from services.worker.attempt import run_training
from services.worker.backends.local import LocalBackend
from services.worker.backends.modal import ModalBackend
from services.worker.context import WorkerContext
from services.worker.tasks import delete_remote_adapter
from shared.db.models import Adapter, TrainingJob
from shared.schemas.serving import AdapterRef, ChatMessage, GenerateRequest, Sampling
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn
from shared.settings import Settings
from tests.conftest import Stack, demo_conversations

pytestmark = pytest.mark.slow

TINY = {"base_model": "tiny-random", "batch_size": 2, "gradient_accumulation_steps": 1, "max_seq_length": 128}


class _LocalGen:
    def __init__(self, method: Any) -> None:
        self._method = method

    @property
    def remote_gen(self) -> _LocalGen:
        return self

    async def aio(self, *args: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:
            generator = self._method.local(*args)
            try:
                for item in generator:
                    loop.call_soon_threadsafe(items.put_nowait, ("item", item))
                    if stop.is_set():
                        break
            except BaseException as exc:
                loop.call_soon_threadsafe(items.put_nowait, ("error", exc))
            finally:
                generator.close()  # as Modal stops the input when the caller goes away
                loop.call_soon_threadsafe(items.put_nowait, ("end", None))

        thread = threading.Thread(target=pump, name="modal-local-call", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = await items.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)


class _LocalCall:
    def __init__(self, method: Any) -> None:
        self._method = method

    @property
    def remote(self) -> _LocalCall:
        return self

    async def aio(self, *args: Any) -> Any:
        return await asyncio.to_thread(self._method.local, *args)


class LocalTrainer:
    """A `SkillTrainer` instance (one "container") whose methods run through `.local()`."""

    def __init__(self) -> None:
        self.obj = modal_app.SkillTrainer()
        self.train = _LocalGen(self.obj.train)
        self.chat = _LocalGen(self.obj.chat)
        self.list_adapters = _LocalCall(self.obj.list_adapters)
        self.delete_adapter = _LocalCall(self.obj.delete_adapter)


@pytest.fixture
def volume(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The Modal Volume as a temp dir; its model cache shares the tests' built models."""
    root = tmp_path / "volume"
    root.mkdir()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    (root / ".models").symlink_to(settings.models_dir)
    monkeypatch.setenv(modal_app.VOLUME_ROOT_ENV, str(root))
    monkeypatch.setenv(modal_app.PRELOAD_ENV, "tiny-random")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will not have access to the mounted Volume.*")
        yield root


def _spec(settings: Settings, tmp_path: Path, name: str, max_steps: int = 2) -> TrainingSpec:
    return TrainingSpec(
        job_id=f"job-{name}",
        skill_id="modal-skill",
        base_model="tiny-random",
        system_prompt="You are terse.",
        conversations=[Turn.model_validate(c) for c in demo_conversations(4)],
        hyperparameters=Hyperparameters(
            max_steps=max_steps, batch_size=2, gradient_accumulation_steps=1, max_seq_length=128
        ),
        output_dir=str(tmp_path / name / "staging"),
        models_dir=str(settings.models_dir),
    )


async def _collect(backend: Any, spec: TrainingSpec) -> list[dict[str, Any]]:
    return [payload async for payload in backend.train(spec)]


async def test_modal_backend_emits_the_local_events_and_the_same_adapter(
    settings: Settings, tmp_path: Path, volume: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    local_settings = settings.model_copy(update={"gpu_backend": "local"})
    local_events = await _collect(LocalBackend(local_settings), _spec(settings, tmp_path, "local"))
    modal_backend = ModalBackend(settings.model_copy(update={"gpu_backend": "modal"}), lookup=LocalTrainer)
    modal_spec = _spec(settings, tmp_path, "modal")
    modal_events = await _collect(modal_backend, modal_spec)

    # Same event stream: no remote-only events leak, the same types in the same order.
    assert [e["type"] for e in modal_events] == [e["type"] for e in local_events], modal_events
    local_progress = [e for e in local_events if e["type"] == "progress"]
    modal_progress = [e for e in modal_events if e["type"] == "progress"]
    assert [e["step"] for e in modal_progress] == [e["step"] for e in local_progress] == [1, 2]
    assert set(modal_progress[0]) == set(local_progress[0])
    complete = modal_events[-1]
    assert set(local_events[-1]) <= set(complete)
    assert complete["loss" if "loss" in complete else "final_loss"] == pytest.approx(local_events[-1]["final_loss"])
    # Billing: the container's GPU seconds at the configured A10G price.
    assert complete["gpu_seconds"] > 0 and complete["price_per_hour"] == 1.10
    assert complete["cost_usd"] == pytest.approx(round(complete["gpu_seconds"] / 3600 * 1.10, 4))

    # Same adapter: the files came back into the worker's staging dir, identical to the Volume's copy,
    # and (same seed, same data, same CPU) the same weights as the local backend's.
    staging = Path(modal_spec.output_dir)
    assert complete["adapter_path"] == str(staging)
    on_volume = volume / complete["adapter_ref"]
    names = {"adapter_model.safetensors", "adapter_config.json", "training_metadata.json"}
    assert {p.name for p in staging.iterdir()} == {p.name for p in on_volume.iterdir()} == names
    for name in names:
        assert (staging / name).read_bytes() == (on_volume / name).read_bytes(), name
    modal_weights = load_file(staging / "adapter_model.safetensors")
    local_weights = load_file(Path(_spec(settings, tmp_path, "local").output_dir) / "adapter_model.safetensors")
    assert modal_weights.keys() == local_weights.keys()
    for key in modal_weights:
        torch.testing.assert_close(modal_weights[key], local_weights[key], rtol=1e-4, atol=1e-5)

    # The Modal class's adapter methods see it, and its engine chats with it: the answer `fastbrain serve`
    # relays with FASTBRAIN_SERVE_BACKEND=modal equals the local engine's (same weights, same greedy decoding).
    trainer = LocalTrainer()
    listed = await trainer.list_adapters.aio("modal-skill")
    assert [a["ref"] for a in listed] == [complete["adapter_ref"]]
    request = GenerateRequest(
        base_model="tiny-random",
        adapter=AdapterRef(name="modal-v1", path=str(staging), remote_ref=complete["adapter_ref"]),
        messages=[ChatMessage(role="system", content="You are terse."), ChatMessage(role="user", content="Hello?")],
        sampling=Sampling(max_tokens=8, temperature=0),
        queue_key="modal-v1",
    )
    remote = ModalEngine(lambda: trainer)
    answer = await _answer(remote.events(request))
    local = Scheduler(Residency(settings.models_dir, "cpu", max_adapters=2), max_waiting=4, max_active=1)
    local.start()
    try:
        assert answer == "".join(e.text for e in local.run(request) if e.type == "delta")
    finally:
        local.stop()
    # Removed from the Volume: the engine sends the local copy along once, and still answers the same.
    assert await trainer.delete_adapter.aio(complete["adapter_ref"]) is True
    assert not on_volume.exists()
    fresh = LocalTrainer()  # a new container: nothing resident
    assert await _answer(ModalEngine(lambda: fresh).events(request)) == answer
    assert (on_volume / "adapter_model.safetensors").is_file()


async def _answer(events: Any) -> str:
    pieces = []
    async for event in events:
        assert event.type != "error", event
        if event.type == "delta":
            pieces.append(event.text)
    return "".join(pieces)


async def test_gpu_catalog_model_is_refused_on_cpu_through_modal(
    settings: Settings, tmp_path: Path, volume: Path
) -> None:
    spec = _spec(settings, tmp_path, "gpu-model").model_copy(
        update={"base_model": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"}
    )
    events = await _collect(ModalBackend(settings, lookup=LocalTrainer), spec)
    assert events[-1]["type"] == "error" and events[-1]["category"] == "MODEL_LOAD_FAIL"
    # A failed run used the GPU too: billed like a completed one.
    assert events[-1]["gpu_seconds"] > 0 and events[-1]["gpu"] == settings.modal_gpu
    assert events[-1]["cost_usd"] == round(events[-1]["gpu_seconds"] / 3600 * settings.modal_price_per_hour, 4)


@pytest.fixture
async def modal_stack(migrated: Settings) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    """An API on a private queue and no worker process: the test runs the worker's task in-process."""
    stack = await asyncio.to_thread(Stack, "modal", migrated)
    async with stack.client(timeout=60) as http:
        yield stack, http
    stack.stop()


async def _start_job(http: httpx.AsyncClient, skill_id: str, **config: Any) -> str:
    skill = {
        "skill_id": skill_id,
        "name": "Modal",
        "system_prompt": "You are terse.",
        "conversations": demo_conversations(12),
    }
    assert (await http.post("/api/skills", json=skill)).status_code == 201
    response = await http.post(f"/api/train-skill/{skill_id}", json={"config": {**TINY, **config}})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def _context(stack: Stack, sessionmaker: async_sessionmaker[AsyncSession]) -> WorkerContext:
    settings = stack.settings.model_copy(update={"gpu_backend": "modal", "cancel_poll_seconds": 0.2})
    return {
        "redis": await create_pool(RedisSettings.from_dsn(str(settings.redis_url))),
        "settings": settings,
        "sessionmaker": sessionmaker,
        "backend": ModalBackend(settings, lookup=LocalTrainer),
        "worker_id": f"modal-test-{uuid.uuid4().hex[:6]}",
    }


async def test_worker_trains_on_modal_backend_end_to_end(
    modal_stack: tuple[Stack, httpx.AsyncClient],
    sessionmaker: async_sessionmaker[AsyncSession],
    clean_db: Any,
    volume: Path,
) -> None:
    stack, http = modal_stack
    job_id = await _start_job(http, "modal-e2e", max_steps=3)
    ctx = await _context(stack, sessionmaker)
    assert await run_training(ctx, job_id) == "completed"

    events = (await http.get(f"/api/training-jobs/{job_id}/events")).json()["events"]
    types = [e["type"] for e in events]
    assert types[0] == "status" and types[-1] == "complete", types
    assert not {"remote_call", "adapter_file"} & set(types)
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    complete = events[-1]
    assert complete["adapter_version"] == 1 and complete["gpu_seconds"] > 0
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "completed"
    assert status["cost_usd"] == pytest.approx(complete["cost_usd"], abs=1e-4)

    # Listed, and on disk exactly like a local adapter.
    adapters = (await http.get("/api/adapters", params={"skill_id": "modal-e2e"})).json()["adapters"]
    assert [(a["version"], a["is_active"]) for a in adapters] == [(1, True)]
    adapter_dir = Path(adapters[0]["storage_path"])
    assert adapter_dir == stack.settings.adapters_dir / "modal-e2e" / "v1"
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_metadata.json"):
        assert (adapter_dir / name).is_file(), name
    async with sessionmaker() as session:
        job = await session.get(TrainingJob, uuid.UUID(job_id))
        assert job is not None and float(job.cost_usd or 0) == pytest.approx(complete["cost_usd"], abs=1e-4)

    # Deleting it removes the local files at once and, through a worker task, the Volume's copy.
    ref = adapters[0]["remote_ref"]
    assert ref == f"modal-e2e/jobs/{job_id}-a1" and (volume / ref / "adapter_model.safetensors").is_file()
    deleted = await http.delete(f"/api/adapters/{adapters[0]['id']}")
    assert deleted.status_code == 200 and not adapter_dir.exists()
    assert await _queued_removals(ctx, stack, "modal-e2e") == [(ref,)]
    assert await delete_remote_adapter(ctx, ref) is True
    assert not (volume / ref).exists()
    assert await delete_remote_adapter(ctx, ref) is False  # already gone: nothing to do, no error
    await ctx["redis"].aclose()


async def _queued_removals(ctx: WorkerContext, stack: Stack, skill_id: str) -> list[tuple[Any, ...]]:
    """`delete_remote_adapter` jobs waiting on the stack's queue (it has no worker) for one skill's refs."""
    jobs = await ctx["redis"].queued_jobs(queue_name=stack.settings.queue_name)
    return [
        tuple(job.args)
        for job in jobs
        if job.function == "delete_remote_adapter" and str(job.args[0]).startswith(f"{skill_id}/")
    ]


async def test_deleting_a_skill_queues_removal_of_its_modal_copies(
    modal_stack: tuple[Stack, httpx.AsyncClient], sessionmaker: async_sessionmaker[AsyncSession], clean_db: Any
) -> None:
    stack, http = modal_stack
    skill = {"skill_id": "gone", "name": "Gone", "system_prompt": "x", "conversations": demo_conversations(2)}
    assert (await http.post("/api/skills", json=skill)).status_code == 201
    async with sessionmaker() as session, session.begin():
        for version, ref in ((1, "gone/jobs/j1-a1"), (2, None), (3, "gone/jobs/j3-a2")):
            session.add(
                Adapter(
                    skill_id="gone",
                    version=version,
                    is_active=version == 3,
                    storage_path=f"/x/{version}",
                    remote_ref=ref,
                )
            )
    ctx = await _context(stack, sessionmaker)
    assert (await http.delete("/api/skills/gone")).status_code == 200
    assert sorted(await _queued_removals(ctx, stack, "gone")) == [("gone/jobs/j1-a1",), ("gone/jobs/j3-a2",)]
    await ctx["redis"].aclose()


async def test_cancel_stops_the_modal_training(
    modal_stack: tuple[Stack, httpx.AsyncClient],
    sessionmaker: async_sessionmaker[AsyncSession],
    clean_db: Any,
    volume: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FASTBRAIN_TEST_STEP_DELAY_SECONDS", "0.5")
    stack, http = modal_stack
    job_id = await _start_job(http, "modal-cancel", max_steps=200)
    ctx = await _context(stack, sessionmaker)
    task = asyncio.create_task(run_training(ctx, job_id))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = (await http.get(f"/api/training-jobs/{job_id}/events")).json()["events"]
        if any(e["type"] == "progress" for e in events):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("no progress")
    cancelled_at = time.monotonic()
    assert (await http.post(f"/api/training-jobs/{job_id}/cancel")).status_code in (200, 202)
    assert await asyncio.wait_for(task, 60) == "cancelled"
    assert time.monotonic() - cancelled_at < 10
    # The in-process "container" stopped: no trainer thread is left running.
    assert not [t for t in threading.enumerate() if t.name in (f"trainer-{job_id}", "modal-local-call")]
    events = (await http.get(f"/api/training-jobs/{job_id}/events")).json()["events"]
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert events[-1]["type"] == "status" and events[-1]["status"] == "cancelled"
    assert max(steps) < 200
    async with sessionmaker() as session:
        assert not list(await session.scalars(select(Adapter).where(Adapter.skill_id == "modal-cancel")))
    await ctx["redis"].aclose()
