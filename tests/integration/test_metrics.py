"""Prometheus metrics: the API's `/metrics` (admin key) and the worker's own endpoint.

A private stack (its own API and worker processes, its own queue) trains `tiny-random` for real,
so every count it moves is this test's: the API's job gauges and request counters, the event
lag of the stream it watched, and the worker's finished-jobs counter, durations, throughput and
billed time. The queue depth is read against the real Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import websockets
from arq import create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.metrics.endpoints import queue_depth
from shared.db.keys import Scope
from shared.queue import redis_settings
from shared.settings import Settings
from tests.conftest import Stack, auth, create_skill, free_port, make_key
from tests.integration.test_skills_api import assert_error_shape

pytestmark = pytest.mark.timeout(600)

TINY = {
    "preset": "quick",
    "base_model": "tiny-random",
    "max_steps": 2,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 128,
}


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for point in family.samples:
            if point.name == name and all(point.labels.get(k) == v for k, v in labels.items()):
                total += point.value
    return total


@pytest.fixture(scope="module")
def worker_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(migrated: Settings, worker_metrics_port: int) -> Iterator[Stack]:
    stack = Stack("metrics", migrated, env={"FASTBRAIN_WORKER_METRICS_PORT": str(worker_metrics_port)})
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client(timeout=30) as http:
        yield http


async def scrape_api(http: httpx.AsyncClient) -> str:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def scrape_until(http: httpx.AsyncClient, settled: Callable[[str], bool]) -> str:
    """A scrape once `settled(text)`: a request is counted when its handler returns, which may be just
    after its client got the answer (dependencies are closed after the response is sent)."""
    async with asyncio.timeout(10):
        while not settled(text := await scrape_api(http)):
            await asyncio.sleep(0.1)
    return text


async def scrape_worker(port: int) -> str:
    """The worker's endpoint, waiting (with a deadline) for the process to start serving it."""
    async with asyncio.timeout(60), httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
                if response.status_code == 200:
                    return response.text
            except httpx.HTTPError:
                pass  # the worker process is still starting
            await asyncio.sleep(0.2)


async def test_metrics_needs_an_admin_key(stack: Stack, engine: AsyncEngine) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as anonymous:
        refused = await anonymous.get("/metrics")
    assert_error_shape(refused, 401, "unauthorized")
    assert refused.headers["www-authenticate"].startswith("Bearer")
    train_key = await make_key(engine, f"metrics-{uuid.uuid4().hex[:6]}", Scope.TRAIN)
    async with stack.client(key=train_key) as http:
        error = assert_error_shape(await http.get("/metrics"), 403, "insufficient_scope")
    assert error["details"] == {"required_scope": "admin", "key_scope": "train"}


async def test_a_training_moves_the_api_and_the_worker_metrics(
    stack: Stack, api: httpx.AsyncClient, worker_metrics_port: int
) -> None:
    skill_id = f"metrics-{uuid.uuid4().hex[:6]}"
    await create_skill(api, skill_id)
    worker_before = await scrape_worker(worker_metrics_port)
    before = await scrape_api(api)

    started = await api.post(f"/api/train-skill/{skill_id}", json={"config": TINY})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    url = stack.url.replace("http://", "ws://") + f"/api/training-stream/{job_id}"
    async with asyncio.timeout(300), websockets.connect(url, additional_headers=auth()) as ws:
        last = json.loads(await ws.recv())
        assert last["seq"] == 1
        during = await scrape_api(api)
        assert sample(during, "fastbrain_websockets_open") == 1
        async for message in ws:  # the server closes the socket after the job's final event
            last = json.loads(message)
    assert last["type"] == "complete", last

    polls = 0
    async with asyncio.timeout(60):  # the final event is committed with the status: at once, in fact
        while True:
            polls += 1
            status = await api.get(f"/api/training-status/{job_id}")
            assert status.status_code == 200, status.text
            if status.json()["status"] == "completed":
                break
            await asyncio.sleep(0.2)

    def requests(text: str, method: str, route: str, status: str) -> float:
        return sample(text, "fastbrain_http_requests_total", method=method, route=route, status=status)

    train = ("POST", "/api/train-skill/{skill_id}", "202")
    status_polls = ("GET", "/api/training-status/{job_id}", "200")
    after = await scrape_until(
        api, lambda text: requests(text, *train) > requests(before, *train) and requests(text, *status_polls) >= polls
    )
    assert (
        sample(after, "fastbrain_jobs", status="completed") == sample(before, "fastbrain_jobs", status="completed") + 1
    )
    assert sample(after, "fastbrain_jobs", status="running") == 0
    assert "\nfastbrain_queue_depth " in after  # its count: test_queue_depth_counts_waiting_jobs_not_running_ones
    assert sample(after, "fastbrain_metrics_source_up", source="database") == 1
    assert sample(after, "fastbrain_metrics_source_up", source="redis") == 1
    assert sample(after, "fastbrain_websockets_open") == 0
    assert requests(after, *train) == requests(before, *train) + 1  # exactly: each request counts once
    assert requests(after, *status_polls) == polls
    assert requests(after, "GET", "/metrics", "200") >= 2  # the scrapes themselves
    duration_count = "fastbrain_http_request_duration_seconds_count"
    assert sample(after, duration_count, route="/api/training-status/{job_id}") == polls
    assert sample(after, "fastbrain_event_lag_seconds_count") > sample(before, "fastbrain_event_lag_seconds_count")

    worker_after = await scrape_worker(worker_metrics_port)

    def moved(name: str, **labels: str) -> float:
        return sample(worker_after, name, **labels) - sample(worker_before, name, **labels)

    assert moved("fastbrain_jobs_finished_total", status="completed") == 1
    assert moved("fastbrain_jobs_finished_total", status="failed") == 0
    assert moved("fastbrain_job_duration_seconds_count", status="completed") == 1
    assert moved("fastbrain_job_duration_seconds_sum", status="completed") > 0
    assert moved("fastbrain_job_queue_wait_seconds_count") == 1
    assert moved("fastbrain_training_tokens_per_second_count", device="cpu") == 1
    assert moved("fastbrain_gpu_seconds_total") > 0  # the local trainer's wall time (at price 0: no cost)
    assert moved("fastbrain_cost_usd_total") == 0


async def test_queue_depth_counts_waiting_jobs_not_running_ones(migrated: Settings) -> None:
    queue = f"{migrated.queue_name}:depth:{uuid.uuid4().hex[:6]}"
    pool = await create_pool(redis_settings(str(migrated.redis_url)), default_queue_name=queue)
    try:
        assert await queue_depth(pool, queue) == 0
        for n in range(3):
            assert await pool.enqueue_job("nothing", _job_id=f"{queue}:{n}", _queue_name=queue) is not None
        assert await queue_depth(pool, queue) == 3
        await pool.set(in_progress_key_prefix + f"{queue}:0", b"1", px=60_000)  # as a worker marks a job it runs
        assert await queue_depth(pool, queue) == 2
    finally:
        ids = [f"{queue}:{n}" for n in range(3)]
        await pool.delete(
            queue, *(prefix + job_id for job_id in ids for prefix in (in_progress_key_prefix, job_key_prefix))
        )
        await pool.aclose()
