"""Shared fixtures: real PostgreSQL and Redis, a real API server and worker.

Services, in order: FASTBRAIN_TEST_DATABASE_URL / FASTBRAIN_TEST_REDIS_URL;
else the test machines' PostgreSQL (127.0.0.1:5432, database `test`) and Redis
(127.0.0.1:6379); else embedded ones under .cache/test-services. Each session
uses its own arq queue name, so stale jobs of other runs never reach it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.dev.embedded import port_open, start_embedded
from shared.db import keys, migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import ApiKey
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".cache"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def _service_urls() -> tuple[str, str]:
    database_url = os.environ.get("FASTBRAIN_TEST_DATABASE_URL")
    redis_url = os.environ.get("FASTBRAIN_TEST_REDIS_URL")
    if not database_url and port_open("127.0.0.1", 5432):
        database_url = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    if not redis_url and port_open("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/0"
    if not database_url or not redis_url:
        embedded = start_embedded(CACHE / "test-services", need_postgres=not database_url, need_redis=not redis_url)
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    assert database_url and redis_url
    return database_url, redis_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    database_url, redis_url = _service_urls()
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("fastbrain-data"),
        model_cache_dir=Path(os.environ.get("FASTBRAIN_TEST_MODELS_DIR", CACHE / "test-models")),
        queue_name=f"fastbrain-test:{uuid.uuid4().hex[:8]}",
        worker_health_seconds=1,
        job_timeout_seconds=900,
        generation_timeout_seconds=300,
        engine_url=f"http://127.0.0.1:{free_port()}",  # the `serve` fixture starts it there, when a test asks
    )


def service_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FASTBRAIN_DATABASE_URL": str(settings.database_url),
        "FASTBRAIN_REDIS_URL": str(settings.redis_url),
        "FASTBRAIN_DATA_DIR": str(settings.data_dir),
        "FASTBRAIN_MODEL_CACHE_DIR": str(settings.models_dir),
        "FASTBRAIN_QUEUE_NAME": settings.queue_name,
        "FASTBRAIN_WORKER_HEALTH_SECONDS": str(settings.worker_health_seconds),
        "FASTBRAIN_JOB_TIMEOUT_SECONDS": str(settings.job_timeout_seconds),
        "FASTBRAIN_ENGINE_URL": settings.engine_url,
        "FASTBRAIN_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Settings:
    """A fresh schema: down to base (drops what an earlier run left), then up to head."""
    assert settings.database_url
    migrate.downgrade(settings.database_url, "base")
    migrate.upgrade(settings.database_url, "head")
    return settings


@pytest.fixture(scope="session")
async def engine(migrated: Settings) -> AsyncIterator[AsyncEngine]:
    assert migrated.database_url
    engine = create_engine(migrated.database_url)
    yield engine
    await engine.dispose()


class Keys:
    """The session's API keys, made once after the migrations (tests/integration/conftest.py
    fills this in): `admin` of the default workspace, which owns every test's skills."""

    admin: str = ""


def auth(key: str | None = None) -> dict[str, str]:
    """Request headers with a key (the session's admin key by default)."""
    key = key or Keys.admin
    assert key, "no API key yet: the test needs the `admin_key` fixture"
    return {"Authorization": f"Bearer {key}"}


async def make_key(engine: AsyncEngine, workspace: str, scope: keys.Scope, name: str = "tests") -> str:
    async with create_sessionmaker(engine)() as session, session.begin():
        return (await keys.create_key(session, workspace, scope, name)).secret


async def restore_session_keys(engine: AsyncEngine) -> None:
    """Put the session's admin key back after a test migrated the database down and up."""
    async with create_sessionmaker(engine)() as session, session.begin():
        await keys.ensure_workspace(session, keys.DEFAULT_WORKSPACE)
        session.add(
            ApiKey(
                workspace_id=keys.DEFAULT_WORKSPACE,
                name="tests-admin",
                scope=keys.Scope.ADMIN.value,
                prefix=Keys.admin[: keys.SHOWN_CHARS],
                secret_hash=keys.hash_secret(Keys.admin),
            )
        )


@pytest.fixture(scope="session")
async def admin_key(engine: AsyncEngine) -> str:
    Keys.admin = await make_key(engine, keys.DEFAULT_WORKSPACE, keys.Scope.ADMIN, "tests-admin")
    return Keys.admin


@pytest.fixture(scope="session")
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture(scope="session", autouse=True)
def _cleanup_queues(settings: Settings) -> Iterator[None]:
    """Whatever ran, leave no queue of this session behind on the shared Redis
    (arq's per-job keys expire on their own)."""
    yield
    import redis as redis_sync

    client = redis_sync.Redis.from_url(str(settings.redis_url))
    keys = list(client.scan_iter(match=f"{settings.queue_name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(str(settings.redis_url))
    yield client
    await client.aclose()


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE fb_training_logs, fb_adapters, fb_training_jobs, fb_skills, fb_gpu_spend "
                "RESTART IDENTITY CASCADE"
            )
        )
    return engine


class ServiceProcess:
    """A `fastbrain` subcommand as a real child process, its output kept in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args], env=env, cwd=REPO_ROOT, stdout=self._log, stderr=self._log
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wait_http_ready(url: str, process: ServiceProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            pytest.fail(f"API exited early:\n{process.tail()}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code in (200, 503):
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"API did not start:\n{process.tail()}")


class Stack:
    """An API server and any number of workers sharing one private queue.

    Tests that need a special worker environment (fault-injection hooks, short
    heartbeats) get their own stack, so no other worker takes their jobs.
    """

    def __init__(
        self, name: str, settings: Settings, env: dict[str, str] | None = None, api_env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.settings = settings.model_copy(update={"queue_name": f"{settings.queue_name}:{name}"})
        self.env = {**service_env(self.settings), **(env or {})}
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        api_args = ["api", "--host", "127.0.0.1", "--port", str(port)]
        self.api = ServiceProcess(f"{name}-api", api_args, {**self.env, **(api_env or {})})
        self.workers: list[ServiceProcess] = []
        wait_http_ready(self.url, self.api)

    def client(self, timeout: float = 60, key: str | None = None) -> httpx.AsyncClient:
        """An HTTP client of this stack's API, with the session's admin key unless given another."""
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=auth(key))

    def start_worker(self) -> ServiceProcess:
        worker = ServiceProcess(f"{self.name}-worker{len(self.workers) + 1}", ["worker"], self.env)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.stop()


@pytest.fixture(scope="session")
def api_url(migrated: Settings) -> Iterator[str]:
    port = free_port()
    server = ServiceProcess("api", ["api", "--host", "127.0.0.1", "--port", str(port)], service_env(migrated))
    url = f"http://127.0.0.1:{port}"
    wait_http_ready(url, server)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def worker(migrated: Settings) -> Iterator[ServiceProcess]:
    process = ServiceProcess("worker", ["worker"], service_env(migrated))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def serve(migrated: Settings) -> Iterator[str]:
    """The inference engine (`fastbrain serve`) at `settings.engine_url`, where every API of the session looks."""
    port = migrated.engine_url.rsplit(":", 1)[1]
    process = ServiceProcess("serve", ["serve", "--host", "127.0.0.1", "--port", port], service_env(migrated))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            pytest.fail(f"the engine exited early:\n{process.tail()}")
        try:
            if httpx.get(f"{migrated.engine_url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        pytest.fail(f"the engine did not start:\n{process.tail()}")
    yield migrated.engine_url
    process.stop()


@pytest.fixture
async def client(api_url: str, clean_db: AsyncEngine, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=auth(admin_key)) as http:
        yield http


DEMO_TOPICS = [
    ("molasses", "It is the dark syrup left after boiling sugar cane juice."),
    ("honey", "Bees make it from flower nectar stored in wax combs."),
    ("maple syrup", "Farmers tap maple trees in early spring and boil the sap."),
    ("treacle", "British bakers pour this golden byproduct into puddings."),
    ("sorghum", "Southern mills press tall grass stalks to get this sweetener."),
    ("agave", "Mexican succulents give a thin nectar that dissolves quickly."),
    ("date syrup", "Middle Eastern cooks simmer soft fruit into this paste."),
    ("cane sugar", "Crystals form once refined juice cools inside big pans."),
    ("rice malt", "Enzymes turn cooked grain starch into mild glucose."),
    ("birch syrup", "Alaskan producers concentrate a tangy sap from white trees."),
]
DEMO_ASPECTS = [
    ("Tell me about", "Ask me anything else you wonder about."),
    ("How do I store", "Keep the jar sealed somewhere cool and dark."),
    ("Can I bake with", "Yes, swap a third of the sugar and lower your oven slightly."),
    ("Is it healthy to eat", "Enjoy small amounts; minerals come along with plenty of calories."),
    ("What does it taste like,", "Expect deep caramel notes with a hint of bitterness."),
    ("Where can I buy", "Grocery stores, farm markets and online shops sell it."),
]


def demo_conversations(n: int) -> list[dict[str, str]]:
    """n clearly distinct examples (no near duplicates of each other) for up to 60; then they repeat."""
    conversations = []
    for i in range(n):
        topic, fact = DEMO_TOPICS[i % len(DEMO_TOPICS)]
        question, advice = DEMO_ASPECTS[(i // len(DEMO_TOPICS)) % len(DEMO_ASPECTS)]
        conversations.append({"user": f"{question} {topic}?", "assistant": f"{fact} {advice}"})
    return conversations


async def wait_for_status(
    http: httpx.AsyncClient, job_id: str, statuses: set[str], timeout: float = 600
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await http.get(f"/api/training-status/{job_id}")).json()
        if body.get("status") in statuses:
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {statuses}; last: {body}")


async def create_skill(
    http: httpx.AsyncClient, skill_id: str, n: int = 12, system_prompt: str = "You are terse."
) -> None:
    """A skill with `n` distinct example conversations, through the API."""
    body = {"skill_id": skill_id, "name": skill_id, "system_prompt": system_prompt}
    body["conversations"] = demo_conversations(n)
    response = await http.post("/api/skills", json=body)
    assert response.status_code == 201, response.text
