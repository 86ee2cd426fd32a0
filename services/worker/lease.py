"""The worker's side of a job's lease: fenced writes that ride out database blips, and the watcher.

Every write a worker makes for a job goes through `Recorder.write`, which runs one
`shared.db.job_state` transition in its own transaction. A refused write (the
fence did not hold) raises `LeaseLost`: the attempt stops and writes nothing more.
The watcher renews the lease and tells the attempt when to stop: a cancel, a lost
lease, or a database it could not reach for longer than the stale threshold (by
then the reaper may have handed the job to another worker, so it must assume so).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from services.worker.context import WorkerContext
from services.worker.tracking import RunTracker
from shared.db import job_state
from shared.db.job_state import Lease, LeaseLost
from shared.events import publish

log = structlog.get_logger(__name__)

T = TypeVar("T")
StopReason = Literal["cancelled", "lease_lost", "ending"]
# Transitions that end the attempt: once one starts, its own fence is the lease check, and
# the watcher must not report the job's new status as a lost lease.
ENDING_TRANSITIONS = frozenset({"complete", "fail", "requeue", "cancelled"})


def transient(exc: BaseException) -> bool:
    """A database or network blip worth retrying: a dropped or refused connection."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc.orig, OSError | ConnectionError)
    return isinstance(exc, OSError | ConnectionError)


async def in_transaction(
    ctx: WorkerContext,
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    undo: Callable[[], None] | None = None,
) -> T:
    """Run `work` in one transaction, committed unless it returns None (a refused fence changes nothing).

    Connection blips are retried for up to the stale threshold; `undo` reverts what
    `work` did outside the database (moved files) whenever its transaction did not commit.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(transient),
        stop=stop_after_delay(ctx["settings"].heartbeat_stale_seconds),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        reraise=True,
    ):
        with attempt:
            async with ctx["sessionmaker"]() as session:
                try:
                    result = await work(session)
                    if result is None:
                        await session.rollback()
                    else:
                        await session.commit()
                except BaseException:
                    if undo is not None:
                        undo()
                    raise
                return result
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def publish_quietly(ctx: WorkerContext, events: list[dict[str, Any]] | dict[str, Any] | None) -> None:
    """Publish committed events; a Redis blip only delays live clients (they backfill from the table)."""
    if not events:
        return
    try:
        await publish(ctx["redis"], events)
    except Exception as exc:
        log.warning("publish_failed", error=str(exc))


class Recorder:
    """Fenced, persisted-then-published writes for one attempt of one job (and, once committed, to
    its experiment-tracking run: `tracker`). `skill_name` names the job's skill in its log lines."""

    def __init__(
        self, ctx: WorkerContext, lease: Lease, tracker: RunTracker | None = None, skill_name: str | None = None
    ) -> None:
        self.ctx = ctx
        self.lease = lease
        self.tracker = tracker or RunTracker()
        self.skill_name = skill_name
        self.ending = asyncio.Event()  # set when an ending transition starts: the watcher stands down
        self._claimed = time.monotonic()  # built right after the claim: the attempt's start

    def attempt_seconds(self) -> float:
        return time.monotonic() - self._claimed

    async def write(
        self,
        name: str,
        transition: Callable[[AsyncSession], Awaitable[T | None]],
        *,
        undo: Callable[[], None] | None = None,
    ) -> T:
        """One transition; raises LeaseLost (and logs the refusal) when its fence does not hold."""
        if name in ENDING_TRANSITIONS:
            self.ending.set()
        result = await in_transaction(self.ctx, transition, undo=undo)
        if result is None:
            log.warning("lease_lost_write_refused", transition=name, attempt=self.lease.attempt)
            raise LeaseLost(self.lease, name)
        return result

    async def emit(self, payload: dict[str, Any], **values: Any) -> dict[str, Any]:
        event = await self.write("emit", lambda session: job_state.emit(session, self.lease, payload, **values))
        await publish_quietly(self.ctx, event)
        self.tracker.event(event)
        return event


async def watch(ctx: WorkerContext, lease: Lease, ending: asyncio.Event) -> StopReason:
    """Renew the lease every heartbeat; return as soon as the attempt must stop, or is ending by itself."""
    settings = ctx["settings"]
    poll = min(settings.cancel_poll_seconds, settings.heartbeat_seconds)
    last_beat = time.monotonic()  # the claim wrote the first heartbeat
    while not ending.is_set():
        beat = time.monotonic() - last_beat >= settings.heartbeat_seconds
        try:
            async with ctx["sessionmaker"]() as session, session.begin():
                state = await job_state.look(session, lease, beat=beat)
        except Exception as exc:  # a database blip must not kill a healthy training...
            if time.monotonic() - last_beat > settings.heartbeat_stale_seconds:
                # ...but past the stale threshold the reaper may have given the job away.
                log.warning("lease_assumed_lost", error=str(exc), silent_seconds=round(time.monotonic() - last_beat))
                return "lease_lost"
            log.warning("watch_failed", error=str(exc))
        else:
            if ending.is_set():  # the attempt's own ending changed the row meanwhile
                break
            if state == "lost":
                return "lease_lost"
            if state == "cancel_requested":
                return "cancelled"
            if beat:
                last_beat = time.monotonic()
        with contextlib.suppress(TimeoutError):  # the poll interval, cut short when the attempt ends
            await asyncio.wait_for(ending.wait(), poll)
    return "ending"
