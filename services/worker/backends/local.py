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
            env=trainer_env(),  # allow-listed: no database URL, no Modal tokens
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
            line = raw.decode("utf-8", errors="replace").rstrip()
            tail.append(line)
            log.debug("trainer_output", line=line)  # libraries' output; the job's ids are bound (its task's context)

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
