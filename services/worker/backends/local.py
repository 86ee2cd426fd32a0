"""The local backend: the trainer runs in a child process on this machine, one per job.

A crash or an OOM kill of the child cannot take the worker down, and cancel
is a signal to it. Events arrive as JSON lines on its stdout; its stderr (library
logs, warnings) is kept as a tail for error reports. Each event is checked against
`shared/schemas/events.py`: a malformed one ends the run as an `INTERNAL` error.

Warm starts: while no job runs, the backend keeps one *standby* trainer that has imported
the ML libraries and loaded the last job's base model (at startup: the first of
`prepare_models`, else none), waiting for a spec path on its stdin. The next job takes it and
skips those seconds; the standby for the job after is started once this one has ended, so a
GPU never holds a waiting model beside a training one. Isolation is as without it: each job
still has a process of its own, loaded for it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import signal
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlog import get_logger

from shared.errors import CATALOGUE, ErrorCategory, classify_type_and_message
from shared.schemas.events import check_trainer_payload
from shared.schemas.training import TrainingSpec
from shared.settings import Settings

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
STDERR_TAIL_LINES = 40
KILL_GRACE_SECONDS = 3.0
TRAINER_COMMAND = (sys.executable, "-m", "services.gpu.trainer")  # the spec file's path is appended

# The trainer's environment is built from this allow-list, never the worker's whole one: the
# worker holds the database and Redis URLs and the Modal tokens, which the trainer has no use
# for (it reads its spec file and writes events to stdout). Names listed exactly, or any name
# starting with a prefix ending in "_". What passes: the process basics, Python's own switches,
# the Hugging Face caches and offline switches, thread counts, the GPU device selection, torch's
# allocator, the trainer's FASTBRAIN_* switches (services/gpu/training/model.py) and its
# FASTBRAIN_TEST_* fault hooks (services/gpu/faults.py). Proxy variables are left out (they may
# carry credentials): the trainer loads its base models offline from the spec's models_dir.
TRAINER_ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_", "TZ", "TMPDIR", "TEMP", "TMP",
    "XDG_CACHE_HOME", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONDONTWRITEBYTECODE", "PYTHONFAULTHANDLER",
    "PYTHONUTF8", "PYTHONIOENCODING",
    "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "SAFETENSORS_",
    "OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "KMP_",
    "CUDA_", "NVIDIA_", "TORCH_", "PYTORCH_", "TRITON_", "UNSLOTH_",
    "FASTBRAIN_TRAIN_DEVICE", "FASTBRAIN_UNSLOTH", "FASTBRAIN_TEST_",
)  # fmt: skip
# Never passed, whatever the list above would let through.
TRAINER_ENV_DENY = ("FASTBRAIN_DATABASE_URL", "FASTBRAIN_REDIS_URL", "MODAL_")


def _allowed(name: str, patterns: Sequence[str]) -> bool:
    return any(name.startswith(p) if p.endswith("_") else name == p for p in patterns)


def trainer_env(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """The trainer subprocess's environment: the allow-listed part of `environ` (default: this process's)."""
    source = os.environ if environ is None else environ
    env = {
        name: value
        for name, value in source.items()
        if _allowed(name, TRAINER_ENV_ALLOW) and not _allowed(name, TRAINER_ENV_DENY)
    }
    return {**env, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def _device() -> str:
    # The worker does not import torch just to ask; the trainer reports the real
    # device in its events. CUDA_VISIBLE_DEVICES is the deployment's switch.
    return "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") else "cpu"


@dataclass
class _Trainer:
    """A trainer child process and the tail of its stderr, drained from its start."""

    process: asyncio.subprocess.Process
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    stderr_task: asyncio.Task[None] | None = None
    job_id: str | None = None  # set when a standby is handed a job


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings, trainer_command: Sequence[str] = TRAINER_COMMAND) -> None:
        self.settings = settings
        self.device = _device()
        self.trainer_command = tuple(trainer_command)
        self.standby_enabled = settings.trainer_standby
        self._started = False  # standbys are kept only once `start` was called (the worker's startup)
        self._standby: _Trainer | None = None
        self._standby_starting: asyncio.Task[None] | None = None
        self._running = 0

    async def start(self, model_id: str | None = None) -> None:
        """Start a standby trainer (loading `model_id` ahead, if given) unless one is there or it is off.

        From then on, a new standby is started whenever the last running job ends, until `close`."""
        self._started = True
        await self._start_standby(model_id)

    async def _start_standby(self, model_id: str | None) -> None:
        if self.standby_enabled and self._started and self._standby is None and self._running == 0:
            ahead = [model_id, str(self.settings.models_dir)] if model_id else []
            self._standby = await self._spawn(["--standby", *ahead], stdin=asyncio.subprocess.PIPE)
            log.info("trainer_standby_started", pid=self._standby.process.pid, model=model_id)

    async def close(self) -> None:
        """Stop the standby trainer, and start no more (the worker is shutting down)."""
        self._started = False
        if self._standby_starting is not None:
            with contextlib.suppress(Exception):
                await self._standby_starting
        standby, self._standby = self._standby, None
        if standby is not None:
            await self._stop(standby.process)
            if standby.stderr_task is not None:
                standby.stderr_task.cancel()

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fastbrain-spec-", delete=False) as spec_file:
            spec_file.write(spec.model_dump_json())
        self._running += 1
        trainer: _Trainer | None = None
        try:
            trainer = await self._take_standby(spec_file.name, spec.job_id) or await self._spawn([spec_file.name])
            log.info("trainer_started", pid=trainer.process.pid, job_id=spec.job_id)
            async for payload in self._events(trainer, spec):
                yield payload
        finally:
            if trainer is not None:
                if trainer.process.returncode is None:
                    await self._stop(trainer.process)
                if trainer.stderr_task is not None:
                    trainer.stderr_task.cancel()
            with contextlib.suppress(OSError):
                os.unlink(spec_file.name)
            self._running -= 1
            if self.standby_enabled and self._started and self._running == 0:
                # A task: this may run while the consumer is being cancelled, where awaiting is unsafe.
                # A fresh context: the standby belongs to no job yet, so it must not log under this one's ids.
                self._standby_starting = asyncio.get_running_loop().create_task(
                    self._start_standby(spec.base_model), context=contextvars.Context()
                )

    async def _events(self, trainer: _Trainer, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        process = trainer.process
        assert process.stdout is not None
        saw_terminal = False
        async for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                trainer.stderr_tail.append(f"[stdout] {line}")
                continue
            payload = check_trainer_payload(data)
            if payload is not data:  # malformed: this trainer cannot be trusted further
                log.warning("trainer_event_malformed", message=payload["message"], job_id=spec.job_id)
                yield payload
                return  # the caller stops the process
            if payload["type"] in ("complete", "error"):
                saw_terminal = True
            yield payload
        returncode = await process.wait()
        if trainer.stderr_task is not None:
            await trainer.stderr_task
        if not saw_terminal:
            yield self._crash_payload(returncode, list(trainer.stderr_tail))

    async def _take_standby(self, spec_path: str, job_id: str) -> _Trainer | None:
        """The standby trainer, handed this job's spec; None when there is none alive to take."""
        if self._standby_starting is not None:
            with contextlib.suppress(Exception):
                await self._standby_starting  # a process start, not its warm-up: quick
            self._standby_starting = None
        standby, self._standby = self._standby, None
        if standby is None:
            return None
        stdin = standby.process.stdin
        try:
            if standby.process.returncode is not None or stdin is None:
                raise ConnectionResetError("the standby trainer has exited")
            standby.job_id = job_id
            stdin.write(f"{spec_path}\n".encode())
            await stdin.drain()
            stdin.close()
        except (ConnectionResetError, BrokenPipeError) as exc:
            log.warning("trainer_standby_lost", error=str(exc), returncode=standby.process.returncode)
            if standby.process.returncode is None:
                await self._stop(standby.process)
            return None
        return standby

    async def _spawn(self, args: list[str], stdin: int = asyncio.subprocess.DEVNULL) -> _Trainer:
        process = await asyncio.create_subprocess_exec(
            *self.trainer_command,
            *args,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=trainer_env(),  # allow-listed: no database URL, no Modal tokens
            start_new_session=True,  # its own process group: cancel kills the whole tree
            limit=16 * 1024 * 1024,
        )
        trainer = _Trainer(process)
        # Drained from the start: a standby's warm-up output must not fill the pipe while it waits.
        trainer.stderr_task = asyncio.create_task(self._drain(trainer))
        return trainer

    @staticmethod
    async def _drain(trainer: _Trainer) -> None:
        stderr = trainer.process.stderr
        assert stderr is not None
        async for raw in stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            trainer.stderr_tail.append(line)
            # Libraries' output. A cold trainer's drain runs in its job's context (the ids are bound); a
            # standby's was started before its job existed, so the job's id is added once it is taken.
            log.debug("trainer_output", line=line, **({"job_id": trainer.job_id} if trainer.job_id else {}))

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    @staticmethod
    def _crash_payload(returncode: int, stderr_tail: list[str]) -> dict[str, Any]:
        """The trainer died without reporting: describe it from its exit and stderr."""
        text = "\n".join(stderr_tail)
        if returncode < 0:
            signame = signal.Signals(-returncode).name
            message = f"Trainer process was killed by {signame}"
            if -returncode == signal.SIGKILL:
                message += " (often the kernel's out-of-memory killer)"
        else:
            message = f"Trainer process exited with code {returncode}"
        category = classify_type_and_message(set(), text) if text else ErrorCategory.INTERNAL
        info = CATALOGUE[category]
        last_line = next((line for line in reversed(stderr_tail) if line.strip()), "")
        return {
            "type": "error",
            "category": category.value,
            "message": f"{message}: {last_line}" if last_line else message,
            "severity": info.severity.value,
            "user_message": info.user_message,
            "suggestions": list(info.suggestions),
            "exception_type": None,
            "traceback_tail": text[-4000:],
        }
