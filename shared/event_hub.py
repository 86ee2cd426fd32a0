"""One Redis subscription per process, fanned out to every stream client.

`EventHub` holds a single pub/sub connection with `PSUBSCRIBE fastbrain:job:*`,
read by one task, and hands each message to the subscriptions of its job: one
bounded `asyncio.Queue` per client. 1,000 dashboards are one Redis connection.

Why one pattern subscription, not SUBSCRIBE/UNSUBSCRIBE per job with reference
counts: the hub then never has to change its subscription while clients come and
go, so there is no window between "first client of a job arrives" and "Redis
confirmed the SUBSCRIBE" in which an event could slip past, no unsubscribe race
when the last client leaves as another arrives, and a reconnect restores one
pattern, not thousands of channels. The cost, every job's events reaching every
API process, is small: one JSON line per training step, parsed (its lag is measured,
`fastbrain_event_lag_seconds`) and dropped when that job has no client here.

Nothing is ever lost, only delayed, because `fb_training_logs` is the truth and
pub/sub is a hint (events are written before they are published):
- a client whose queue is full (a slow reader) has its queue emptied and gets a
  *resync* marker: it re-reads history after its last seq from the database; the
  hub itself never waits for a client;
- when the hub's Redis connection drops (or stops answering its PINGs), it
  reconnects with exponential backoff and then tells every client to resync;
- every `watch_interval` seconds one query reads `event_seq` and `status` of all
  jobs with idle clients and nudges those that are behind the table (an event
  committed but never published: its publisher died) or whose job ended.

`EventHub.stream` is the gap-free client: subscribe first, then replay history
after `after_seq`, then live events, dropping seqs already sent and filling gaps
from the table. It ends after the job's terminal event (`is_terminal`), or at once
when the job's row is terminal and nothing is left to send, or when the job is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import export_state
from shared.db.models import TERMINAL_JOB_STATUSES, Export, TrainingJob
from shared.events import CHANNEL_PREFIX, history
from shared.schemas.events import is_terminal

log = structlog.get_logger(__name__)

PATTERN: Final = f"{CHANNEL_PREFIX}*"
TERMINAL_STATUSES: Final = frozenset(status.value for status in TERMINAL_JOB_STATUSES)
# Per-client queue bound: a job emits about one event per optimizer step, so this
# is minutes of backlog; past it the client reads from the database instead.
QUEUE_SIZE: Final = 256
# Events read from the table per query when a client catches up.
BACKFILL_PAGE: Final = 500
# How often idle clients are checked against the table (one query per hub).
WATCH_INTERVAL_SECONDS: Final = 2.0
# The hub PINGs Redis after this much silence and reconnects when no answer comes.
PING_INTERVAL_SECONDS: Final = 5.0
PING_TIMEOUT_SECONDS: Final = 5.0
BACKOFF_MIN_SECONDS: Final = 0.1
BACKOFF_MAX_SECONDS: Final = 5.0

# Every event the hub hears counts, watched or not: the path's health should not depend on viewers.
EVENT_LAG: Final = Histogram(
    "fastbrain_event_lag_seconds",
    "From an event's `ts` (the database clock at its write) to its arrival in this API process's hub.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def observe_lag(event: dict[str, Any], now: datetime | None = None) -> float | None:
    """Record how late `event` arrived (clamped at 0: the clocks of database and API may differ a little)."""
    try:
        ts = datetime.fromisoformat(str(event["ts"]))
    except (KeyError, ValueError):
        return None
    if ts.tzinfo is None:
        return None
    lag = max(0.0, ((now or datetime.now(UTC)) - ts).total_seconds())
    EVENT_LAG.observe(lag)
    return lag


def hub_client_name() -> str:
    """The Redis CLIENT SETNAME of this process's hub connection: `fastbrain-api-hub:<host>:<pid>`."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    return f"fastbrain-api-hub:{host}:{os.getpid()}"


class _Resync:
    """Queue marker: what was queued may be incomplete; re-read the table."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()


class Subscription:
    """One client's view of one job: a bounded queue the hub fills and never waits on."""

    def __init__(self, job_id: str, maxsize: int) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[dict[str, Any] | _Resync] = asyncio.Queue(maxsize)
        self.last_seq = 0  # the consumer's position: the last seq it handed on
        self.overflows = 0
        self._resync_queued = False

    def deliver(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self._overflow()

    def resync(self) -> None:
        """Ask the consumer to re-read history (once, however often this is called before it does)."""
        if self._resync_queued:
            return
        try:
            self.queue.put_nowait(RESYNC)
            self._resync_queued = True
        except asyncio.QueueFull:
            self._overflow()

    def _overflow(self) -> None:
        # Whatever is queued is in the table too: drop it and let the consumer read from there.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(RESYNC)
        self._resync_queued = True
        self.overflows += 1
        log.warning("stream_client_slow", job_id=self.job_id, overflows=self.overflows)

    async def get(self) -> dict[str, Any] | _Resync:
        item = await self.queue.get()
        if item is RESYNC:
            self._resync_queued = False
        return item


class EventHub:
    """The process's one pub/sub reader and its clients; `start()` it, `aclose()` it."""

    def __init__(
        self,
        redis: Redis,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        queue_size: int = QUEUE_SIZE,
        watch_interval: float = WATCH_INTERVAL_SECONDS,
        ping_interval: float = PING_INTERVAL_SECONDS,
        ping_timeout: float = PING_TIMEOUT_SECONDS,
        backoff_min: float = BACKOFF_MIN_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self._redis = redis
        self.sessionmaker = sessionmaker
        self.queue_size = queue_size
        self.watch_interval = watch_interval
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self.connects = 0  # successful (re)subscriptions, for tests and logs

    # Lifecycle

    async def start(self) -> None:
        """Start the reader and the watcher; returns at once (Redis may still be down)."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._read_forever(), name="event-hub-reader"),
                asyncio.create_task(self._watch_forever(), name="event-hub-watcher"),
            ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    # Clients

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: uuid.UUID | str) -> AsyncIterator[Subscription]:
        """Register a client for `job_id` now (before it reads history); removed on exit."""
        key = str(job_id)
        subscription = Subscription(key, self.queue_size)
        self._subscriptions.setdefault(key, set()).add(subscription)
        try:
            yield subscription
        finally:
            subs = self._subscriptions.get(key)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscriptions[key]

    async def stream(self, job_id: uuid.UUID, after_seq: int = 0) -> AsyncGenerator[dict[str, Any], None]:
        """History after `after_seq`, then live events, in seq order, each once; ends with the job."""
        async with self.subscribe(job_id) as sub:
            sub.last_seq = after_seq
            while True:
                events, finished = await self._backfill(job_id, sub.last_seq)
                for event in events:
                    if event["seq"] <= sub.last_seq:
                        continue
                    sub.last_seq = event["seq"]
                    yield event
                    if is_terminal(event):
                        return
                if finished:
                    return
                if len(events) >= BACKFILL_PAGE:
                    continue  # far behind: read the next page before going live
                while True:
                    item = await sub.get()
                    if isinstance(item, _Resync):
                        break
                    seq = item["seq"]
                    if seq <= sub.last_seq:
                        continue  # already sent (from history, or a duplicate publish)
                    if seq > sub.last_seq + 1:
                        break  # a gap: something published was missed; the table has it
                    sub.last_seq = seq
                    yield item
                    if is_terminal(item):
                        return

    async def _backfill(self, job_id: uuid.UUID, after_seq: int) -> tuple[list[dict[str, Any]], bool]:
        """Stored events after `after_seq` (one page) and whether the stream ends after them.

        The job row is read before its events: a terminal status is committed with (or
        before) the job's last event, so the history read next contains that event.
        """
        async with self.sessionmaker() as session:
            row = (await session.execute(select(TrainingJob.status).where(TrainingJob.id == job_id))).one_or_none()
            if row is not None:
                events = await history(session, job_id, after_seq, limit=BACKFILL_PAGE)
            else:  # an export job: the same contract, its own tables (shared/db/export_state.py)
                row = (await session.execute(select(Export.status).where(Export.id == job_id))).one_or_none()
                if row is None:
                    return [], True  # deleted with its skill or adapter: nothing more will come
                events = await export_state.history(session, job_id, after_seq, limit=BACKFILL_PAGE)
        return events, row.status in TERMINAL_STATUSES and len(events) < BACKFILL_PAGE

    # The reader: one pub/sub connection, reconnected with backoff

    async def _read_forever(self) -> None:
        backoff = self.backoff_min
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._subscribe(pubsub)
                self._connected.set()
                self.connects += 1
                backoff = self.backoff_min
                log.info("event_hub_subscribed", connects=self.connects, clients=self.subscriber_count)
                # Whatever was published while we were not subscribed is only in the table.
                self._resync_all()
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis or socket failure: start over on a new connection
                log.warning("event_hub_redis_lost", error=repr(exc), retry_in_seconds=backoff)
            finally:
                self._connected.clear()
                with contextlib.suppress(Exception):  # bounded: closing a dead peer's socket may wait
                    async with asyncio.timeout(1.0):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _subscribe(self, pubsub: PubSub) -> None:
        # Connecting, sending and the confirmation all within the deadline: an unreachable
        # Redis (no RST, SYNs unanswered) must not hold the reader for the OS's minutes.
        async with asyncio.timeout(self.ping_timeout):
            await pubsub.psubscribe(PATTERN)
            while True:  # wait for Redis to confirm, so "connected" means "receiving"
                message = await pubsub.get_message(timeout=self.ping_timeout)
                if message is not None and message["type"] == "psubscribe":
                    return

    async def _pump(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        ping_sent: float | None = None
        tick = min(1.0, self.ping_interval, self.ping_timeout)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=tick)
            now = loop.time()
            if message is not None:
                heard, ping_sent = now, None
                if message["type"] == "pmessage":
                    self._dispatch(message["channel"], message["data"])
                continue
            if ping_sent is not None:
                if now - ping_sent >= self.ping_timeout:
                    raise ConnectionError(f"no PONG from Redis within {self.ping_timeout}s")
            elif now - heard >= self.ping_interval:
                async with asyncio.timeout(self.ping_timeout):  # a full send buffer to a dead peer blocks
                    await pubsub.ping()
                ping_sent = now

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        subs = self._subscriptions.get(name.removeprefix(CHANNEL_PREFIX))
        try:
            event = json.loads(data)
            int(event["seq"])
        except (ValueError, TypeError, KeyError) as exc:
            if subs:  # a bad message nobody here waits for is no one's concern
                log.warning("event_hub_bad_message", channel=name, error=repr(exc))
            return
        observe_lag(event)
        if not subs:
            return
        for sub in list(subs):
            sub.deliver(event)

    def _resync_all(self) -> None:
        for subs in list(self._subscriptions.values()):
            for sub in list(subs):
                sub.resync()

    # The watcher: one query for all idle clients

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                await self.check_idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: clients wait, the next round retries
                log.warning("event_hub_watch_failed", error=repr(exc))

    async def check_idle(self) -> None:
        """Nudge idle clients whose job has events they have not seen, has ended, or is gone."""
        idle = [sub for subs in list(self._subscriptions.values()) for sub in subs if sub.queue.empty()]
        if not idle:
            return
        ids = sorted({sub.job_id for sub in idle})
        rows: dict[str, tuple[int, str]] = {}
        async with self.sessionmaker() as session:
            for start in range(0, len(ids), 1000):
                chunk = [uuid.UUID(job_id) for job_id in ids[start : start + 1000]]
                result = await session.execute(
                    select(TrainingJob.id, TrainingJob.event_seq, TrainingJob.status).where(TrainingJob.id.in_(chunk))
                )
                rows.update({str(job_id): (seq, status) for job_id, seq, status in result.all()})
                result = await session.execute(
                    select(Export.id, Export.event_seq, Export.status).where(Export.id.in_(chunk))
                )
                rows.update({str(job_id): (seq, status) for job_id, seq, status in result.all()})
        for sub in idle:
            row = rows.get(sub.job_id)
            if row is None or row[0] > sub.last_seq or row[1] in TERMINAL_STATUSES:
                sub.resync()
