"""Streams that end and scale: the WebSocket's closes, a client that leaves is freed,
one Redis subscription per API process (the `EventHub`), a slow client and a lost Redis
connection fall back to the table, and bounded HTTP answers (events paging, metrics).

Jobs and events are written straight to the database (`job_state.append` + `publish`, as
the worker does): nothing here trains a model. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import event, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.app import WS_PING_INTERVAL_SECONDS, WS_PING_TIMEOUT_SECONDS, create_app
from services.api.training import service
from shared.db import job_state
from shared.db.models import Skill, TrainingJob
from shared.event_hub import EventHub
from shared.events import publish
from shared.settings import Settings
from tests.conftest import ServiceProcess, auth, demo_conversations, free_port, service_env, wait_http_ready

pytestmark = pytest.mark.timeout(60)

COMPLETE = {"type": "complete", "final_loss": 0.5}


def progress(step: int, total: int = 1000) -> dict[str, Any]:
    return {
        "type": "progress",
        "step": step,
        "total_steps": total,
        "epoch": 1.0,
        "total_epochs": 1,
        "loss": 1.0 / step,
        "learning_rate": 1e-4,
        "progress": 100.0 * step / total,
    }


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> float:
    """Await `condition` with a deadline; returns the seconds it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = condition()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return time.monotonic() - started
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


# Jobs and events, straight in the database


async def new_job(sessionmaker: async_sessionmaker[AsyncSession], status: str = "running") -> uuid.UUID:
    skill_id = f"streams-{uuid.uuid4().hex[:8]}"  # a skill per job: one active job per skill
    async with sessionmaker() as session, session.begin():
        session.add(
            Skill(id=skill_id, workspace_id="default", name="s", system_prompt="p", training_data=demo_conversations(1))
        )
        await session.flush()
        job = TrainingJob(skill_id=skill_id, status=status, config={"base_model": "tiny-random"}, dataset={"big": "x"})
        session.add(job)
        await session.flush()
        return job.id


async def emit(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis | None,
    job_id: uuid.UUID,
    *payloads: dict[str, Any],
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Record `payloads` in one transaction (optionally setting the job's status), then publish them
    unless `redis` is None (a publisher that died after its commit)."""
    async with sessionmaker() as session, session.begin():
        events = [await job_state.append(session, job_id, payload) for payload in payloads]
        if status is not None:
            await session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(status=status))
    if redis is not None:
        await publish(redis, events)
    return events


# An API in this process (so the test can look at its hub), served by uvicorn as `fastbrain api` serves it


@dataclass
class Api:
    app: FastAPI
    url: str

    @property
    def hub(self) -> EventHub:
        hub: EventHub = self.app.state.fastbrain.hub
        return hub

    def client(self, timeout: float = 10) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=auth())

    def ws(self, job_id: uuid.UUID | str, after_seq: int = 0) -> str:
        return self.url.replace("http://", "ws://") + f"/api/training-stream/{job_id}?after_seq={after_seq}"


@pytest.fixture
async def api(migrated: Settings, clean_db: AsyncEngine) -> AsyncIterator[Api]:
    app = create_app(migrated)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws_ping_interval=WS_PING_INTERVAL_SECONDS,
        ws_ping_timeout=WS_PING_TIMEOUT_SECONDS,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 15, "the API started")
    assert not task.done(), "the API did not start"
    running = Api(app, f"http://127.0.0.1:{port}")
    await wait_until(lambda: running.hub.connected, 5, "the hub subscribed")
    yield running
    server.should_exit = True
    async with asyncio.timeout(15):
        await task


@dataclass
class Received:
    events: list[dict[str, Any]]
    close_code: int | None
    seconds: float


async def collect(url: str, timeout: float = 10) -> Received:
    """Everything a client receives until the server closes the socket."""
    started = time.monotonic()
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), websockets.connect(url, open_timeout=5, additional_headers=auth()) as ws:
        try:
            async for message in ws:
                events.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        return Received(events, ws.close_code, time.monotonic() - started)


# Streams that end


async def test_finished_job_at_its_last_seq_closes_1000_at_once_with_nothing(
    api: Api, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, {"type": "log", "message": "a"}, progress(1), COMPLETE, status="completed")
    got = await collect(api.ws(job_id, after_seq=3))
    assert (got.events, got.close_code) == ([], 1000)
    assert got.seconds < 2, "no waiting for events that will never come"
    got = await collect(api.ws(job_id, after_seq=50))  # past the end: the same
    assert (got.events, got.close_code) == ([], 1000)


async def test_finished_job_sends_the_rest_then_closes_1000(
    api: Api, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, {"type": "log", "message": "a"}, progress(1), COMPLETE, status="completed")
    got = await collect(api.ws(job_id, after_seq=1))
    assert [e["seq"] for e in got.events] == [2, 3]
    assert got.close_code == 1000 and got.seconds < 2
    full = await collect(api.ws(job_id))
    assert [e["seq"] for e in full.events] == [1, 2, 3] and full.close_code == 1000


async def test_job_whose_row_ended_without_a_final_event_closes(
    api: Api, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """A terminal row status ends the stream too, even when the last event is not terminal."""
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, {"type": "log", "message": "a"}, status="failed")
    got = await collect(api.ws(job_id))
    assert [e["seq"] for e in got.events] == [1] and got.close_code == 1000
    got = await collect(api.ws(job_id, after_seq=1))
    assert (got.events, got.close_code) == ([], 1000)


async def test_live_stream_ends_with_the_terminal_event(
    api: Api, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, {"type": "status", "status": "running"})
    client = asyncio.create_task(collect(api.ws(job_id)))
    await wait_until(lambda: api.hub.subscriber_count == 1, 5, "the client subscribed")
    await emit(sessionmaker, redis, job_id, progress(1))
    await emit(sessionmaker, redis, job_id, {"type": "error", "category": "CUDA_OOM", "message": "m", "final": False})
    await emit(sessionmaker, redis, job_id, COMPLETE, status="completed")
    got = await client
    assert [e["seq"] for e in got.events] == [1, 2, 3, 4] and got.close_code == 1000
    await wait_until(lambda: api.hub.subscriber_count == 0, 5, "the subscription was released")


async def test_unknown_job_gets_an_error_then_4404(api: Api) -> None:
    got = await collect(api.ws(uuid.uuid4()))
    assert got.close_code == 4404
    assert len(got.events) == 1
    error = got.events[0]
    assert (error["type"], error["category"], error["final"]) == ("error", "NOT_FOUND", True)
    # A position that is none (negative, not a number, past PostgreSQL's integer): an error, then 4422.
    for bad in ("-1", "x", str(2**31), "9" * 40):
        url = api.ws(uuid.uuid4()).replace("after_seq=0", f"after_seq={bad}")
        got = await collect(url)
        assert got.close_code == 4422, bad
        assert [(e["type"], e["category"], e["final"]) for e in got.events] == [("error", "VALIDATION_ERROR", True)]


# Clients that leave


async def test_client_that_closes_is_freed_at_once(api: Api, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    job_id = await new_job(sessionmaker)
    async with asyncio.timeout(10), websockets.connect(api.ws(job_id), open_timeout=5, additional_headers=auth()):
        await wait_until(lambda: api.hub.subscriber_count == 1, 5, "the client subscribed")
    seconds = await wait_until(lambda: api.hub.subscriber_count == 0, 5, "a client that closed was freed")
    assert seconds < 5


async def test_client_that_goes_silent_is_dropped_within_5_seconds(
    api: Api, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A peer that vanished without a close (no FIN, no PONG) is found by uvicorn's PINGs."""
    job_id = await new_job(sessionmaker)
    port = int(api.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"GET /api/training-stream/{job_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: {auth()['Authorization']}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(5):
            response = await reader.readuntil(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        await wait_until(lambda: api.hub.subscriber_count == 1, 5, "the client subscribed")
        # From here on this client reads nothing and answers no PING.
        seconds = await wait_until(lambda: api.hub.subscriber_count == 0, 8, "a silent client was dropped")
        assert seconds < 5, f"dropped after {seconds:.1f}s"
    finally:
        writer.close()


# One Redis subscription per API process


def hub_connections(clients: list[dict[str, Any]], pid: int) -> list[dict[str, Any]]:
    return [c for c in clients if c.get("name", "").startswith("fastbrain-api-hub:") and c["name"].endswith(f":{pid}")]


@pytest.fixture
def api_process(migrated: Settings, clean_db: AsyncEngine) -> Iterator[tuple[str, ServiceProcess]]:
    """A real `fastbrain api` process, as deployed (with room for the test's 30 sockets on one key)."""
    port = free_port()
    env = {**service_env(migrated), "FASTBRAIN_WEBSOCKETS_PER_KEY": "50"}
    process = ServiceProcess("streams-api", ["api", "--host", "127.0.0.1", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(url, process)
        yield url, process
    finally:
        process.stop()


async def test_many_websockets_share_one_redis_connection(
    api_process: tuple[str, ServiceProcess], sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    url, process = api_process
    pid = process.process.pid
    jobs = [await new_job(sessionmaker) for _ in range(3)]
    for job_id in jobs:
        await emit(sessionmaker, redis, job_id, {"type": "status", "status": "running"})
    ws_base = url.replace("http://", "ws://")
    sockets = 30
    async with asyncio.timeout(30):
        clients = [
            await websockets.connect(
                f"{ws_base}/api/training-stream/{jobs[i % 3]}", open_timeout=5, additional_headers=auth()
            )
            for i in range(sockets)
        ]
        try:
            for ws in clients:  # each got its history: it is subscribed
                assert json.loads(await ws.recv())["seq"] == 1
            hubs = hub_connections(await redis.client_list(), pid)
            assert len(hubs) == 1, hubs
            assert hubs[0]["psub"] == "1" and hubs[0]["sub"] == "0", hubs
            # Every client of a job gets its live events from that one connection.
            for job_id in jobs:
                await emit(sessionmaker, redis, job_id, progress(1))
            for ws in clients:
                assert json.loads(await ws.recv())["seq"] == 2
            assert len(hub_connections(await redis.client_list(), pid)) == 1
        finally:
            for ws in clients:
                await ws.close()


async def test_slow_client_falls_back_to_the_table_and_never_blocks_the_hub(
    migrated: Settings, clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, {"type": "status", "status": "running"})
    hub = EventHub(Redis.from_url(str(migrated.redis_url)), sessionmaker, queue_size=2, watch_interval=60)
    await hub.start()
    try:
        await wait_until(lambda: hub.connected, 5, "the hub subscribed")
        async with aclosing(hub.stream(job_id)) as slow, aclosing(hub.stream(job_id)) as fast:
            async with asyncio.timeout(10):
                assert (await anext(slow))["seq"] == 1
                assert (await anext(fast))["seq"] == 1
                # The slow client reads nothing while ten events go by; the fast one gets each live.
                for step in range(1, 11):
                    await emit(sessionmaker, redis, job_id, progress(step))
                    assert (await anext(fast))["seq"] == step + 1
                await emit(sessionmaker, redis, job_id, COMPLETE, status="completed")
                assert (await anext(fast))["seq"] == 12
                overflows = sorted(sub.overflows for sub in hub._subscriptions[str(job_id)])
                assert overflows[0] == 0 and overflows[1] >= 1, overflows
                rest = [event["seq"] async for event in slow]
        assert rest == list(range(2, 13)), "every event once, in order, from the table"
        assert hub.subscriber_count == 0
    finally:
        await hub.aclose()
        await hub._redis.aclose()


async def test_hub_reconnects_after_losing_redis_and_clients_backfill(
    migrated: Settings, clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    name = f"fastbrain-test-hub-{uuid.uuid4().hex[:8]}"
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, {"type": "status", "status": "running"})
    # No watcher rounds during the test: only the reconnect can bring the missed event.
    hub = EventHub(Redis.from_url(str(migrated.redis_url), client_name=name), sessionmaker, watch_interval=60)
    await hub.start()
    try:
        await wait_until(lambda: hub.connected, 5, "the hub subscribed")
        async with aclosing(hub.stream(job_id)) as stream, asyncio.timeout(15):
            assert (await anext(stream))["seq"] == 1
            mine = [c for c in await redis.client_list() if c.get("name") == name]
            assert len(mine) == 1
            # Committed, never published (as while the hub is away), then the connection is cut.
            await emit(sessionmaker, None, job_id, progress(1))
            await redis.client_kill_filter(_id=mine[0]["id"])
            assert (await anext(stream))["seq"] == 2, "backfilled from the table after the reconnect"
            assert hub.connects == 2
            again = [c for c in await redis.client_list() if c.get("name") == name]
            assert len(again) == 1 and again[0]["id"] != mine[0]["id"]
            # And live again.
            await emit(sessionmaker, redis, job_id, progress(2))
            assert (await anext(stream))["seq"] == 3
    finally:
        await hub.aclose()
        await hub._redis.aclose()


async def test_hub_reconnects_when_redis_stops_answering(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A connection that stays open but goes silent (a partition, a hung server) is found by
    the hub's own PINGs: this fake Redis confirms the PSUBSCRIBE and then never answers."""
    connections = 0

    async def silent_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while line := await reader.readline():
                if not line.startswith(b"*"):
                    continue
                parts = [await reader.readline() for _ in range(2 * int(line[1:]))][1::2]
                command = parts[0].strip().upper()
                if command == b"PSUBSCRIBE":
                    pattern = parts[1].strip()
                    writer.write(b"*3\r\n$10\r\npsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(pattern), pattern))
                elif command != b"PING":
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(silent_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis(host="127.0.0.1", port=port)
    hub = EventHub(client, sessionmaker, ping_interval=0.3, ping_timeout=0.3, backoff_min=0.05, watch_interval=60)
    await hub.start()
    try:
        await wait_until(lambda: hub.connects >= 1, 5, "the hub subscribed to the fake")
        await wait_until(lambda: hub.connects >= 2 and connections >= 2, 5, "the hub gave up on it and reconnected")
    finally:
        await hub.aclose()
        await client.aclose()
        server.close()
        await server.wait_closed()


async def drain(hub: EventHub, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return [event async for event in hub.stream(job_id)]


async def test_watcher_delivers_unpublished_events_and_ends_streams_of_ended_jobs(
    migrated: Settings, clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await new_job(sessionmaker)
    hub = EventHub(Redis.from_url(str(migrated.redis_url)), sessionmaker, watch_interval=0.2)
    await hub.start()
    try:
        async with aclosing(hub.stream(job_id)) as stream, asyncio.timeout(10):
            # A publisher that died after its commit: the watcher finds the event in the table.
            await emit(sessionmaker, None, job_id, {"type": "log", "message": "unpublished"})
            assert (await anext(stream))["seq"] == 1
            # The row ends without a terminal event (as a reaper might leave it): the stream ends.
            async with sessionmaker() as session, session.begin():
                await session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(status="cancelled"))
            assert [event async for event in stream] == []
        # A job deleted under a stream ends it as well.
        other = await new_job(sessionmaker)
        consumer = asyncio.create_task(drain(hub, other))
        await wait_until(lambda: hub.subscriber_count == 1, 5, "subscribed")
        async with sessionmaker() as session, session.begin():
            await session.execute(text("DELETE FROM fb_training_jobs WHERE id = :id"), {"id": other})
        async with asyncio.timeout(10):
            assert await consumer == []
        assert hub.subscriber_count == 0
    finally:
        await hub.aclose()
        await hub._redis.aclose()


# Bounded answers


async def test_events_endpoint_pages(api: Api, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, redis, job_id, *[progress(step) for step in range(1, 8)])
    async with api.client(timeout=10) as http:
        pages = []
        after = 0
        while True:
            body = (
                await http.get(f"/api/training-jobs/{job_id}/events", params={"after_seq": after, "limit": 3})
            ).json()
            pages.append([e["seq"] for e in body["events"]])
            after = body["next_after_seq"]
            if not body["has_more"]:
                break
        assert pages == [[1, 2, 3], [4, 5, 6], [7]]
        assert after == 7
        tail = (await http.get(f"/api/training-jobs/{job_id}/events", params={"after_seq": 7})).json()
        assert (tail["events"], tail["next_after_seq"], tail["has_more"]) == ([], 7, False)
        default = (await http.get(f"/api/training-jobs/{job_id}/events")).json()
        assert [e["seq"] for e in default["events"]] == list(range(1, 8))

        bad: list[dict[str, int | str]] = [
            {"after_seq": -1},
            {"after_seq": 2**31},  # past PostgreSQL's integer: 422, never a 500 from the database
            {"after_seq": 2**63},
            {"after_seq": "9" * 40},
            {"limit": 0},
            {"limit": 1001},
        ]
        for params in bad:
            response = await http.get(f"/api/training-jobs/{job_id}/events", params=params)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["error"]["code"] == "validation_error", response.text
        top = await http.get(f"/api/training-jobs/{job_id}/events", params={"after_seq": 2**31 - 1})
        assert top.status_code == 200 and top.json()["events"] == []
        missing = await http.get(f"/api/training-jobs/{uuid.uuid4()}/events")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


async def test_training_status_sends_the_latest_metrics_by_default(
    api: Api, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await new_job(sessionmaker)
    await emit(sessionmaker, None, job_id, *[progress(step) for step in range(1, 251)])
    async with api.client(timeout=10) as http:
        url = f"/api/training-status/{job_id}"
        body = (await http.get(url)).json()
        assert [p["step"] for p in body["metrics_history"]] == list(range(51, 251)), "the latest 200, oldest first"
        assert body["metrics_total"] == 250
        assert body["last_event_seq"] == 250
        few = (await http.get(url, params={"metrics_limit": 5})).json()
        assert [p["step"] for p in few["metrics_history"]] == [246, 247, 248, 249, 250]
        everything = (await http.get(url, params={"metrics": "all"})).json()
        assert [p["step"] for p in everything["metrics_history"]] == list(range(1, 251))
        none = (await http.get(url, params={"metrics_limit": 0})).json()
        assert none["metrics_history"] == [] and none["metrics_total"] == 250
        for params in ({"metrics_limit": -1}, {"metrics_limit": 10_001}, {"metrics": "some"}):
            response = await http.get(url, params=params)
            assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"
        described = (await http.get("/openapi.json")).json()["paths"]["/api/training-status/{job_id}"]["get"]
        assert "metrics=all" in described["description"]


async def test_job_answers_never_load_the_dataset(
    engine: AsyncEngine, clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await new_job(sessionmaker, status="completed")
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with sessionmaker() as session:
            jobs, total = await service.list_jobs(session, skill_id=None, status=None, limit=10, offset=0)
            assert total == 1 and [job.job_id for job in jobs] == [job_id]
            assert jobs[0].base_model == "tiny-random"
            status = await service.job_status(session, job_id)
            assert status.status == "completed"
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    selects = [s for s in statements if "fb_training_jobs" in s and s.lstrip().upper().startswith("SELECT")]
    assert selects, statements
    assert not [s for s in selects if "dataset" in s], selects
