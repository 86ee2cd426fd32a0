"""Chaos run: real workers are killed, paused and cut off while real (tiny) trainings run.

Three workers, 12 tiny-random jobs across 4 skills (3 rounds: a skill trains one job
at a time), every step slowed with the step-delay hook so jobs are mid-run when hit.
During the run: SIGKILL a worker that holds a job, three times (restarting it each
time); SIGSTOP one worker past the stale threshold, let its job move to another
worker, then SIGCONT it; restart Redis once; terminate the services' PostgreSQL
connections once (pg_terminate_backend). Then it checks what must hold (every job
completed, one adapter each, versions 1..3 per skill, gapless seqs, nothing written
by the paused attempt after it lost its lease, no orphan checkpoint or staging
directories, a late WebSocket client gets each job's full history and a normal
close) and prints the figures.

Redis is a private redis-server on a free port (it is restarted; the machine's own is
never touched). PostgreSQL is the one configured, in its own database.

    .venv/bin/python bench/chaos.py [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/fb_chaos]

tests/integration/test_chaos.py runs the same harness in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

REPO_ROOT = Path(__file__).resolve().parents[1]
SKILLS = 4
ROUNDS = 3
WORKERS = 3
STALE_SECONDS = 3.0
TINY = {"preset": "quick", "base_model": "tiny-random", "max_seq_length": 128, "max_steps": 12, "batch_size": 2}
WORKER_ENV = {
    "FASTBRAIN_HEARTBEAT_SECONDS": "0.5",
    "FASTBRAIN_HEARTBEAT_STALE_SECONDS": str(STALE_SECONDS),
    "FASTBRAIN_REAPER_INTERVAL_SECONDS": "1",
    "FASTBRAIN_MAX_ATTEMPTS": "10",  # this run kills on purpose; attempts are counted, not capped
    "FASTBRAIN_WORKER_MAX_JOBS": "2",  # two CPU cores: at most six trainers at once
    "FASTBRAIN_TEST_STEP_DELAY_SECONDS": "0.4",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(predicate: Callable[[], Awaitable[Any]], what: str, timeout: float) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` past `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Process:
    """A child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=self._log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class PrivateRedis:
    """A redis-server of this run's own, so it can be restarted (no persistence: a restart loses the queue)."""

    def __init__(self, log_dir: Path) -> None:
        from services.dev.embedded import redis_server_binary

        self.binary = str(redis_server_binary())
        self.port = free_port()
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.log_dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, cwd=self.log_dir, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Report:
    seconds: float = 0.0
    jobs: int = 0
    completed: int = 0
    kills: list[str] = field(default_factory=list)
    paused_job: str | None = None
    paused_attempt: int | None = None
    paused_refused_writes: int = 0
    paused_lease_lost_lines: int = 0
    redis_restarts: int = 0
    pg_connections_terminated: int = 0
    attempts_per_job: dict[str, int] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)
    events_per_job: dict[str, int] = field(default_factory=dict)
    websocket_replays_ok: int = 0
    problems: list[str] = field(default_factory=list)

    def figures(self) -> str:
        attempts = list(self.attempts_per_job.values())
        return "\n".join(
            [
                f"jobs completed        {self.completed}/{self.jobs} in {self.seconds:.0f} s",
                f"workers SIGKILLed     {len(self.kills)} ({', '.join(self.kills)})",
                f"paused worker         job {self.paused_job} attempt {self.paused_attempt}: "
                f"{self.paused_refused_writes} refused writes, "
                f"{self.paused_lease_lost_lines} lease-lost lines in its log",
                f"redis restarts        {self.redis_restarts}",
                f"pg backends killed    {self.pg_connections_terminated}",
                f"attempts per job      max {max(attempts, default=0)}, resumed jobs "
                f"{sum(1 for a in attempts if a > 1)}",
                f"versions per skill    {json.dumps(self.versions)}",
                f"events per job        min {min(self.events_per_job.values(), default=0)}, "
                f"max {max(self.events_per_job.values(), default=0)}",
                f"late WebSocket replays {self.websocket_replays_ok}/{self.jobs} full history + close 1000",
                f"problems              {self.problems or 'none'}",
            ]
        )


class Chaos:
    def __init__(self, database_url: str, engine: AsyncEngine, work_dir: Path, api_key: str) -> None:
        self.engine = engine
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.work_dir = work_dir
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data_dir = work_dir / "data"
        self.redis = PrivateRedis(self.logs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models = os.environ.get("FASTBRAIN_TEST_MODELS_DIR", str(REPO_ROOT / ".cache" / "test-models"))
        self.env = {
            **os.environ,
            "FASTBRAIN_DATABASE_URL": database_url,
            "FASTBRAIN_REDIS_URL": self.redis.url,
            "FASTBRAIN_DATA_DIR": str(self.data_dir),
            "FASTBRAIN_MODEL_CACHE_DIR": models,
            "FASTBRAIN_QUEUE_NAME": f"fastbrain-chaos:{uuid.uuid4().hex[:6]}",
            "FASTBRAIN_WORKER_HEALTH_SECONDS": "5",
            "FASTBRAIN_LOG_LEVEL": "INFO",
            # All the run's trainings are in flight at once, and it polls them all: no workspace limits.
            "FASTBRAIN_MAX_CONCURRENT_JOBS_PER_WORKSPACE": str(SKILLS * ROUNDS),
            "FASTBRAIN_REQUESTS_PER_MINUTE_PER_KEY": "100000",
            **WORKER_ENV,
        }
        self.cli = [sys.executable, "-m", "services.cli"]
        self.api = Process(
            "api", [*self.cli, "api", "--host", "127.0.0.1", "--port", str(self.port)], self.env, self.logs
        )
        self.workers: list[Process] = []
        self.spawned = 0
        self.paused: Process | None = None
        self.trainer: asyncio.Task[list[str]] | None = None
        self.report = Report()

    # -- processes -------------------------------------------------------------------

    def start_worker(self) -> Process:
        self.spawned += 1
        worker = Process(f"worker{self.spawned}", [*self.cli, "worker"], self.env, self.logs)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.stop()
        self.redis.stop()

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    async def running_jobs(self) -> list[tuple[uuid.UUID, str, int, int]]:
        """(job id, lease owner, attempt, current step) of running jobs."""
        rows = await self.sql(
            "SELECT id, lease_owner, attempt, current_step FROM fb_training_jobs WHERE status = 'running'"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def worker_of(self, lease_owner: str) -> Process | None:
        # Worker ids are host:pid:suffix (services/worker/main.py).
        parts = lease_owner.split(":")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else -1
        return next((w for w in self.workers if w.pid == pid and w.popen.poll() is None), None)

    async def busy_worker(self, exclude: set[int] = frozenset()) -> tuple[Process, uuid.UUID, int]:
        """A live worker with a running job that has made progress (it has a checkpoint to lose)."""

        async def find() -> tuple[Process, uuid.UUID, int] | None:
            if self.trainer is not None and self.trainer.done():
                raise AssertionError("every job ended before the chaos was through")
            for job_id, owner, attempt, step in await self.running_jobs():
                worker = self.worker_of(owner or "")
                if worker is not None and worker.pid not in exclude and step >= 2:
                    return worker, job_id, attempt
            return None

        found: tuple[Process, uuid.UUID, int] = await wait_until(find, "a worker with a running job", 180)
        return found

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> Report:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=60, headers=self.headers) as http:
            await wait_until(lambda: self._healthy(http), "the API", 60)
            for _ in range(WORKERS):
                self.start_worker()
            skills = [f"chaos-{i}" for i in range(SKILLS)]
            for skill in skills:
                await self._create_skill(http, skill)
            trainer = asyncio.create_task(self._train_all(http, skills))
            self.trainer = trainer
            inflict = asyncio.create_task(self._inflict(trainer))
            try:
                done, _ = await asyncio.wait({trainer, inflict}, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # a failed job or a failed step of the chaos ends the run here
                job_ids = trainer.result()
            finally:
                for task in (trainer, inflict):
                    task.cancel()
            self.report.seconds = time.monotonic() - started
            await self._check(job_ids)
        return self.report

    async def _healthy(self, http: httpx.AsyncClient) -> bool:
        try:
            return (await http.get("/api/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _create_skill(self, http: httpx.AsyncClient, skill: str) -> None:
        from tests.conftest import demo_conversations

        body = {"skill_id": skill, "name": skill, "system_prompt": "Be brief.", "conversations": demo_conversations(10)}
        response = await http.post("/api/skills", json=body)
        assert response.status_code == 201, response.text

    async def _train_all(self, http: httpx.AsyncClient, skills: list[str]) -> list[str]:
        """Each skill trains ROUNDS jobs one after another (one active job per skill)."""

        async def rounds(skill: str) -> list[str]:
            ids = []
            for _ in range(ROUNDS):
                response = await self._post_retrying(http, f"/api/train-skill/{skill}", {"config": TINY})
                job_id = response.json()["job_id"]
                ids.append(job_id)
                await wait_until(lambda job_id=job_id: self._ended(http, job_id), f"job {job_id} to end", 600)
            return ids

        per_skill = await asyncio.gather(*(rounds(skill) for skill in skills))
        return [job_id for ids in per_skill for job_id in ids]

    async def _post_retrying(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
        """A user retries a request that failed while Redis or PostgreSQL was being hit."""
        for _ in range(30):
            try:
                response = await http.post(path, json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 202:
                return response
            await asyncio.sleep(0.5)
        raise AssertionError(f"POST {path} never accepted: {response.text if response is not None else 'no answer'}")

    async def _ended(self, http: httpx.AsyncClient, job_id: str) -> bool:
        try:
            status = (await http.get(f"/api/training-status/{job_id}")).json().get("status")
        except (httpx.HTTPError, ValueError):
            return False
        if status in ("failed", "cancelled"):
            raise AssertionError(f"job {job_id} ended {status}")
        return status == "completed"

    async def _inflict(self, trainer: asyncio.Task[list[str]]) -> None:
        rng = random.Random(215)
        for n in range(3):
            worker, job_id, _ = await self.busy_worker()
            worker.signal(signal.SIGKILL)
            worker.popen.wait()
            self.report.kills.append(f"{worker.name} on job {str(job_id)[:8]}")
            self.workers.remove(worker)
            self.start_worker()
            if n == 0:
                await self._pause_one()
            if n == 1:
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                self.redis.restart()
                self.report.redis_restarts += 1
            if n == 2:
                killed = await self.sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name LIKE 'fastbrain-%'"
                )
                self.report.pg_connections_terminated = int(killed[0][0])
            if trainer.done():
                break

    async def _pause_one(self) -> None:
        worker, job_id, attempt = await self.busy_worker()
        worker.signal(signal.SIGSTOP)
        self.report.paused_job, self.report.paused_attempt = str(job_id), attempt

        async def moved() -> bool:
            rows = await self.sql("SELECT attempt, status FROM fb_training_jobs WHERE id = :id", id=job_id)
            return bool(rows) and (rows[0][0] > attempt or rows[0][1] == "completed")

        await wait_until(moved, "the paused worker's job to move to another worker", 120)
        worker.signal(signal.SIGCONT)
        self.paused = worker

    # -- what must hold ----------------------------------------------------------------

    async def _check(self, job_ids: list[str]) -> None:
        report = self.report
        report.jobs = len(job_ids)
        rows = await self.sql("SELECT id::text, skill_id, status, attempt FROM fb_training_jobs ORDER BY created_at")
        report.completed = sum(1 for r in rows if r[2] == "completed")
        report.attempts_per_job = {r[0]: r[3] for r in rows}
        adapters = await self.sql(
            "SELECT a.training_job_id::text, a.skill_id, a.version FROM fb_adapters a "
            "JOIN fb_training_jobs j ON j.id = a.training_job_id ORDER BY j.created_at"
        )
        per_job: dict[str, int] = {}
        for job_id, skill, version in adapters:
            per_job[job_id] = per_job.get(job_id, 0) + 1
            report.versions.setdefault(skill, []).append(version)
        if any(per_job.get(job_id) != 1 for job_id in job_ids):
            report.problems.append(f"adapters per job: {per_job}")
        for skill, versions in report.versions.items():
            if versions != list(range(1, ROUNDS + 1)):
                report.problems.append(f"{skill} versions {versions}")
        for job_id in job_ids:
            seqs = [
                r[0]
                for r in await self.sql("SELECT seq FROM fb_training_logs WHERE job_id = :id ORDER BY seq", id=job_id)
            ]
            report.events_per_job[job_id] = len(seqs)
            if seqs != list(range(1, len(seqs) + 1)):
                report.problems.append(f"job {job_id} seqs not 1..N")
        await self._check_paused()
        leftovers = [
            str(p.relative_to(self.data_dir))
            for pattern in ("adapters/*/.checkpoints/*", "adapters/*/.staging/*")
            for p in self.data_dir.glob(pattern)
        ]
        if leftovers:
            report.problems.append(f"orphan directories: {leftovers}")
        for job_id in job_ids:
            if await self._replay(job_id):
                report.websocket_replays_ok += 1
            else:
                report.problems.append(f"job {job_id}: late WebSocket replay incomplete")

    async def _check_paused(self) -> None:
        report = self.report
        if report.paused_job is None:
            report.problems.append("no worker was paused")
            return
        events = [
            r[0]
            for r in await self.sql(
                "SELECT data FROM fb_training_logs WHERE job_id = :id ORDER BY seq", id=uuid.UUID(report.paused_job)
            )
        ]
        # The reaper's requeue is written under the old attempt's lease; after it, that attempt wrote nothing.
        handed_over = [
            e["seq"]
            for e in events
            if e.get("attempt") == report.paused_attempt and e["type"] == "status" and e.get("status") == "queued"
        ]
        if not handed_over:
            report.problems.append("the paused job was never requeued")
            return
        late = [e for e in events if e.get("attempt") == report.paused_attempt and e["seq"] > handed_over[0]]
        if late:
            report.problems.append(f"paused attempt wrote {len(late)} events after losing its lease")
        # Give it a moment to wake and notice, then read what it logged.
        paused = self.paused
        assert paused is not None

        async def noticed() -> bool:
            return "lease_lost" in paused.log() or paused.popen.poll() is not None

        await wait_until(noticed, "the paused worker to notice its lost lease", 30)
        log = paused.log()
        report.paused_refused_writes = log.count("job_write_refused")
        report.paused_lease_lost_lines = log.count("lease_lost")

    async def _replay(self, job_id: str) -> bool:
        expected = (await self.sql("SELECT event_seq FROM fb_training_jobs WHERE id = :id", id=uuid.UUID(job_id)))[0][0]
        url = self.url.replace("http", "ws", 1) + f"/api/training-stream/{job_id}"
        seqs = []
        async with asyncio.timeout(30), websockets.connect(url, additional_headers=self.headers) as ws:
            try:
                async for message in ws:
                    seqs.append(json.loads(message)["seq"])
            except websockets.ConnectionClosed:
                pass
            code = ws.close_code
        return seqs == list(range(1, expected + 1)) and code == 1000


async def run_chaos(database_url: str, work_dir: Path) -> Report:
    from shared.db import keys, migrate
    from shared.db.engine import create_engine, create_sessionmaker

    await asyncio.to_thread(migrate.upgrade, database_url, "head")
    engine = create_engine(database_url, application_name="chaos-checker")
    async with create_sessionmaker(engine)() as session, session.begin():
        api_key = (await keys.create_key(session, "chaos", keys.Scope.TRAIN, "chaos run")).secret
    chaos = Chaos(database_url, engine, work_dir, api_key)
    try:
        return await chaos.run()
    finally:
        chaos.stop()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/fb_chaos")
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="fastbrain-chaos-"))
    report = asyncio.run(run_chaos(args.database_url, work_dir))
    print(report.figures())
    print(f"logs: {work_dir / 'logs'}")
    sys.exit(1 if report.problems or report.completed != report.jobs else 0)


if __name__ == "__main__":
    main()
