"""The local backend: the trainer runs in a child process on this machine.

A crash or an OOM kill of the child cannot take the worker down, and cancel
is a signal to it. Events arrive as JSON lines on its stdout; its stderr (library
logs, warnings) is kept as a tail for error reports. Each event is checked against
`shared/schemas/events.py`: a malformed one ends the run as an `INTERNAL` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Sequence
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


def _device() -> str:
    # The worker does not import torch just to ask; the trainer reports the real
    # device in its events. CUDA_VISIBLE_DEVICES is the deployment's switch.
    return "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") else "cpu"


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings, trainer_command: Sequence[str] = TRAINER_COMMAND) -> None:
        self.settings = settings
        self.device = _device()
        self.trainer_command = tuple(trainer_command)

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="fastbrain-spec-", delete=False) as spec_file:
            spec_file.write(spec.model_dump_json())
        process = await asyncio.create_subprocess_exec(
            *self.trainer_command,
            spec_file.name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
            start_new_session=True,  # its own process group: cancel kills the whole tree
            limit=16 * 1024 * 1024,
        )
        log.info("trainer_started", pid=process.pid, job_id=spec.job_id)
        stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        stderr_task = asyncio.create_task(self._drain(process, stderr_tail))
        saw_terminal = False
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    stderr_tail.append(f"[stdout] {line}")
                    continue
                payload = check_trainer_payload(data)
                if payload is not data:  # malformed: this trainer cannot be trusted further
                    log.warning("trainer_event_malformed", message=payload["message"], job_id=spec.job_id)
                    yield payload
                    return  # the finally stops the process
                if payload["type"] in ("complete", "error"):
                    saw_terminal = True
                yield payload
            returncode = await process.wait()
            await stderr_task
            if not saw_terminal:
                yield self._crash_payload(returncode, list(stderr_tail))
        finally:
            if process.returncode is None:
                await self._stop(process)
            stderr_task.cancel()
            with contextlib.suppress(OSError):
                os.unlink(spec_file.name)

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process, tail: deque[str]) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            tail.append(raw.decode("utf-8", errors="replace").rstrip())

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

    async def generate(self, request: dict[str, Any]) -> str:
        from services.gpu import inference  # torch lives only on this path

        return await asyncio.to_thread(
            inference.generate,
            models_dir=self.settings.models_dir,
            base_model=request["base_model"],
            adapter_dir=request["adapter_dir"],
            system_prompt=request["system_prompt"],
            prompt=request["prompt"],
            max_new_tokens=request.get("max_new_tokens", 128),
        )
