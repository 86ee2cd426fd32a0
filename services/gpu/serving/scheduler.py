"""The engine's one compute thread: a bounded, fair queue in front of interleaved generations.

Waiting requests are grouped by `queue_key` (one key per skill version or base model) and
admitted round-robin across keys, so one busy skill cannot starve another. Up to
`max_active` generations run at once, a token at a time, so a new request gets its first
token after its prefill instead of after every earlier answer. Each round, the generations
on one base model take their next token together in one batched forward pass
(`batching.py`: a decode step costs about the same for eight rows as for one), each row
with its own adapter; a generation alone on its base steps alone, with its adapter switched
on. Past `max_waiting` a request is refused at once (the API answers 503 with Retry-After);
a cancelled request (its client went away) is dropped before its next token.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from structlog import get_logger

from services.gpu.serving.batching import BASE_ROW, DecodeBatch, sample_rows
from services.gpu.serving.decoding import Sequence, Step
from services.gpu.serving.residency import Base, EngineError, Residency
from shared.schemas.serving import DeltaEvent, DoneEvent, EngineEvent, ErrorEvent, GenerateRequest, StartEvent

log = get_logger(__name__)
T = TypeVar("T")
BATCH_FAILURES_TOLERATED = 3  # batched steps on one base failing in a row before it decodes one by one


class QueueFull(Exception):
    def __init__(self, waiting: int) -> None:
        super().__init__(f"The inference queue is full ({waiting} requests waiting).")
        self.waiting = waiting


@dataclass
class Ticket:
    request: GenerateRequest
    emit: Callable[[EngineEvent], None]  # thread-safe: called from the compute thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)


@dataclass
class _Running:
    ticket: Ticket
    base: Base
    adapter: str | None
    sequence: Sequence


@dataclass
class Stats:
    waiting: int
    active: int
    served: int
    base_loads: int
    adapter_loads: int
    adapter_evictions: int
    resident: dict[str, list[str]]


class Scheduler:
    def __init__(self, residency: Residency, max_waiting: int, max_active: int) -> None:
        self.residency = residency
        self.max_waiting = max_waiting
        self.max_active = max_active
        self._wake = threading.Condition()
        self._waiting: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._waiting_count = 0
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._active: list[_Running] = []
        self._batches: dict[str, DecodeBatch] = {}  # base model id -> its generations decoding together
        self._batch_failures: dict[str, int] = {}
        self._served = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="fastbrain-engine", daemon=True)

    # --- called from the server's event loop ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def submit(self, ticket: Ticket) -> None:
        with self._wake:
            if self._waiting_count >= self.max_waiting:
                raise QueueFull(self._waiting_count)
            self._waiting.setdefault(ticket.request.queue_key, deque()).append(ticket)
            self._waiting_count += 1
            self._wake.notify()

    def run(self, request: GenerateRequest) -> Iterator[EngineEvent]:
        """One request's events, for a caller on another (blocking) thread; closing the iterator cancels it."""
        events: queue.SimpleQueue[EngineEvent] = queue.SimpleQueue()
        ticket = Ticket(request, emit=events.put)
        self.submit(ticket)
        try:
            while True:
                event = events.get()
                yield event
                if event.type in ("done", "error"):
                    return
        finally:
            ticket.cancelled.set()

    def call(self, function: Callable[[], T]) -> Future[T]:
        """Run `function` on the compute thread (the only one that touches models), between tokens."""
        future: Future[T] = Future()
        with self._wake:
            self._calls.append((function, future))
            self._wake.notify()
        return future

    def stats(self) -> Stats:
        counters = self.residency.counters
        return Stats(
            waiting=self._waiting_count,
            active=len(self._active),
            served=self._served,
            base_loads=counters.base_loads,
            adapter_loads=counters.adapter_loads,
            adapter_evictions=counters.adapter_evictions,
            resident=self.residency.resident(),
        )

    # --- the compute thread -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        from services.gpu.imports import ensure_ml_stack

        ensure_ml_stack()
        while True:
            with self._wake:
                while not (self._stopping or self._calls or self._waiting_count or self._active):
                    self._wake.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for function, future in calls:
                self._run_call(function, future)
            while len(self._active) < self.max_active and (ticket := self._next()) is not None:
                self._admit(ticket)
            for running in list(self._active):
                if running.ticket.cancelled.is_set():
                    self._retire(running)
            self._decode()
        for running in list(self._active):
            self._retire(running)
        self._batches.clear()

    @staticmethod
    def _run_call(function: Callable[[], Any], future: Future[Any]) -> None:
        try:
            future.set_result(function())
        except BaseException as exc:
            future.set_exception(exc)

    def _next(self) -> Ticket | None:
        """The head of the next key in the rotation, skipping requests whose clients have gone."""
        with self._wake:
            while self._waiting:
                key, queue = next(iter(self._waiting.items()))
                ticket = queue.popleft()
                self._waiting_count -= 1
                if queue:
                    self._waiting.move_to_end(key)
                else:
                    del self._waiting[key]
                if not ticket.cancelled.is_set():
                    return ticket
        return None

    def _admit(self, ticket: Ticket) -> None:
        request = ticket.request
        try:
            base = self.residency.base(request.base_model)
            adapter = None
            if request.adapter is not None:
                in_use = {r.adapter for r in self._active if r.adapter and r.base is base}
                self.residency.attach(base, request.adapter, in_use)
                adapter = request.adapter.name
            messages = [m.model_dump() for m in request.messages]
            prompt_ids = list(base.chat.encode(base.chat.render(messages, add_generation_prompt=True)).ids)
            limit = int(getattr(base.model.config, "max_position_embeddings", 0) or 0)
            if limit and len(prompt_ids) + request.sampling.max_tokens > limit:
                raise EngineError(
                    400,
                    "context_length_exceeded",
                    f"The prompt has {len(prompt_ids)} tokens and max_tokens is {request.sampling.max_tokens}: "
                    f"more than {request.base_model}'s context of {limit} tokens.",
                )
            sequence = Sequence(prompt_ids, request.sampling, base.tokenizer, base.stop_ids)
        except Exception as exc:
            self._fail(ticket, exc)
            return
        ticket.emit(StartEvent(prompt_tokens=len(prompt_ids)))
        running = _Running(ticket, base, adapter, sequence)
        self._active.append(running)
        self._step(running)

    def _decode(self) -> None:
        """One token for every active generation: those on one base model as one batched step, if there are two."""
        groups: dict[str, list[_Running]] = {}
        for running in self._active:
            groups.setdefault(running.base.model_id, []).append(running)
        for model_id, group in groups.items():
            batch = self._batches.get(model_id, DecodeBatch())
            rows = [r for r in group if batch.holds(r.sequence) or DecodeBatch.can_join(r.sequence)]
            if len(rows) < 2 or self._batch_failures.get(model_id, 0) >= BATCH_FAILURES_TOLERATED:
                self._unbatch(model_id, group)
                rows = []
            else:
                self._batches[model_id] = batch
                self._step_batch(model_id, batch, rows)
            for running in group:
                if not any(running is row for row in rows):
                    self._step(running)
        for model_id in list(self._batches):  # free the batched cache once its last generation is gone
            if model_id not in groups or not any(self._batches[model_id].holds(r.sequence) for r in self._active):
                self._unbatch(model_id, groups.get(model_id, []))

    def _unbatch(self, model_id: str, group: list[_Running]) -> None:
        batch = self._batches.pop(model_id, None)
        if batch is not None:
            batch.release([running.sequence for running in group])

    def _step_batch(self, model_id: str, batch: DecodeBatch, rows: list[_Running]) -> None:
        base = rows[0].base
        adapters = {running.adapter for running in rows}
        try:
            batch.sync([running.sequence for running in rows])
            if len(adapters) == 1:
                with self.residency.using(base, rows[0].adapter):
                    logits = batch.forward(base.model, None)
            else:  # PEFT applies each row's own adapter ("__base__": none) within the one pass
                for name in adapters:
                    if name is not None and name in base.adapters:
                        base.adapters.move_to_end(name)
                logits = batch.forward(base.model, [running.adapter or BASE_ROW for running in rows])
        except Exception as exc:
            # Not attributable to one generation: each takes this token alone, so only a failing one fails.
            failures = self._batch_failures[model_id] = self._batch_failures.get(model_id, 0) + 1
            log.warning("engine_batch_step_failed", base_model=model_id, rows=len(rows), error=str(exc), exc_info=True)
            if failures >= BATCH_FAILURES_TOLERATED:
                log.error("engine_batching_disabled", base_model=model_id, failures=failures)
            self._unbatch(model_id, rows)
            for running in rows:
                self._step(running)
            return
        self._batch_failures.pop(model_id, None)
        for running, result in zip(rows, sample_rows(batch, logits), strict=True):
            if isinstance(result, Exception):
                self._fail(running.ticket, result)
                self._retire(running)
            else:
                self._deliver(running, result)

    def _step(self, running: _Running) -> None:
        try:
            with self.residency.using(running.base, running.adapter):
                step: Step = running.sequence.forward(running.base.model)
        except Exception as exc:
            self._fail(running.ticket, exc)
            self._retire(running)
            return
        self._deliver(running, step)

    def _deliver(self, running: _Running, step: Step) -> None:
        if step.text:
            running.ticket.emit(DeltaEvent(text=step.text))
        if step.finish_reason is not None:
            running.ticket.emit(
                DoneEvent(finish_reason=step.finish_reason, completion_tokens=running.sequence.completion_tokens)
            )
            self._served += 1
            self._retire(running)

    def _retire(self, running: _Running) -> None:
        if running in self._active:
            self._active.remove(running)
        running.sequence.cache = None

    @staticmethod
    def _fail(ticket: Ticket, exc: Exception) -> None:
        if isinstance(exc, EngineError):
            ticket.emit(ErrorEvent(status=exc.status, code=exc.code, message=exc.message))
            return
        from shared.errors import ModelLoadError

        if isinstance(exc, ModelLoadError):
            ticket.emit(ErrorEvent(status=409, code="model_load_failed", message=str(exc)))
            return
        log.exception("engine_generation_failed", error=str(exc))
        ticket.emit(ErrorEvent(status=500, code="generation_failed", message=f"{type(exc).__name__}: {exc}"))
