"""The trainer's process entry and event writer.

    python -m services.gpu.trainer SPEC.json

writes one JSON payload per line to stdout (`log`, `progress`, `complete`, or a final
`error`); everything libraries print goes to stderr. Exit 0 after `complete`, 1 after
`error`, 143 on SIGTERM (after an `error` line with category CANCELLED). The local backend
runs it as a subprocess; the Modal app calls `train` (and `warm_up`) in its container.

The run itself lives in `services/gpu/training/`: `pipeline.train` (the steps), `model`
(PEFT/Unsloth loading, the warm cache), `callbacks` (progress payloads), `checkpoints`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from services.gpu.training.callbacks import Payload
from services.gpu.training.model import LORA_TARGET_MODULES, UNSLOTH_ENV, unsloth_wanted, warm_up
from services.gpu.training.pipeline import STAGING_DIRS, train
from shared.errors import DataFormatError, JobCancelled, describe
from shared.schemas.training import TrainingSpec

__all__ = ["LORA_TARGET_MODULES", "UNSLOTH_ENV", "main", "train", "unsloth_wanted", "warm_up"]


class _EventWriter:
    """One JSON line per payload on a private dup of the original stdout. Main thread only.

    `cancel` may be called from a signal handler, which can interrupt `write` half-way: then
    the line in progress is finished first, so stdout never holds a torn line.
    """

    def __init__(self, fd: int) -> None:
        self._stream = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._busy = False
        self._pending: tuple[Payload, int] | None = None

    def write(self, payload: Payload) -> None:
        line = json.dumps(payload, default=str, ensure_ascii=False) + "\n"
        self._busy = True
        try:
            self._stream.write(line)
            self._stream.flush()
        finally:
            self._busy = False
        if self._pending is not None:
            self._exit()

    def cancel(self, payload: Payload, exit_code: int) -> None:
        """Write `payload` as the last line and exit the process at once (no cleanup, no waiting for a step)."""
        self._pending = (payload, exit_code)
        if not self._busy:
            self._exit()

    def _exit(self) -> None:
        assert self._pending is not None
        payload, exit_code = self._pending
        try:
            self._stream.write(json.dumps(payload, default=str, ensure_ascii=False) + "\n")
            self._stream.flush()
        finally:
            os._exit(exit_code)


def _watch_parent(interval: float = 0.5) -> None:
    """End this trainer when the worker that started it dies (even by SIGKILL).

    The trainer runs in its own session so cancel can kill its whole group; the
    flip side is that the worker's death does not reach it, so it watches.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


READY_LINE = "standby: ready"  # on stderr, once warm (the worker's debug log; bench/warm_start.py waits for it)


def _standby(args: list[str]) -> list[str]:
    """`--standby [MODEL_ID MODELS_DIR]`: get ready for a job that has not arrived yet, then wait for it.

    Importing torch, transformers, PEFT and TRL and loading the base model take most of a small job's
    start (seconds on a CPU). A standby trainer does both while its worker is idle, then reads the
    spec file's path from stdin and runs that one job like any other trainer: still one process per
    job, so a crash, an OOM kill or a cancel ends only that job, and every job gets a model loaded
    for it alone. A model that fails to load here is left to the job, which reports the real error.
    """
    # What a job's pipeline imports on its way to the first step (lazily, so that the modules stay importable
    # without the ML stack): seconds of a small job's start.
    import datasets  # noqa: F401
    import peft  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # noqa: F401

    if len(args) == 2:
        try:
            warm_up(args[0], args[1])
        except Exception as exc:  # the job loads the model itself and reports what goes wrong
            print(f"standby: could not load {args[0]} ahead: {exc}", file=sys.stderr)
    print(READY_LINE, file=sys.stderr, flush=True)
    line = sys.stdin.readline().strip()
    return [line] if line else []  # EOF: the worker let this standby go


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: `python -m services.gpu.trainer SPEC.json` (or `--standby ...`, then the path on stdin)."""
    args = sys.argv[1:] if argv is None else argv
    # Keep stdout for events only: libraries (and C extensions) that print go to stderr.
    sys.stdout.flush()
    writer = _EventWriter(os.dup(1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        for staging in list(STAGING_DIRS):
            shutil.rmtree(staging, ignore_errors=True)
        writer.cancel({"type": "error", **describe(JobCancelled("Training was cancelled (SIGTERM)"))}, 128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    _watch_parent()
    try:
        if args[:1] == ["--standby"]:
            args = _standby(args[1:])
            if not args:
                return 0
        if len(args) != 1:
            raise DataFormatError("invalid format: usage: python -m services.gpu.trainer SPEC.json")
        spec = TrainingSpec.model_validate_json(Path(args[0]).read_text(encoding="utf-8"))
        for payload in train(spec):
            writer.write(payload)
    except KeyboardInterrupt:
        writer.write({"type": "error", **describe(JobCancelled("Training was interrupted"))})
        return 1
    except Exception as exc:
        writer.write({"type": "error", **describe(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
