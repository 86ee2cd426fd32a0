"""OpenAI-style object ids over Fast Brain's UUIDs: `file-<hex>`, `ftjob-<hex>`, `ftckpt-<hex>` and
`ftevent-<job hex>-<seq>`.

Parsing never raises: an id that is not one of ours names nothing, so the caller answers 404
(or 400 for a cursor), as for an id of another workspace.
"""

from __future__ import annotations

import re
import uuid

from shared.events import MAX_SEQ

FILE = "file-"
JOB = "ftjob-"
CHECKPOINT = "ftckpt-"
EVENT = "ftevent-"
_HEX = re.compile(r"^[0-9a-f]{32}$")
_EVENT = re.compile(r"^ftevent-(?P<job>[0-9a-f]{32})-(?P<seq>[0-9]{1,10})$")


def file_id(value: uuid.UUID) -> str:
    return f"{FILE}{value.hex}"


def job_id(value: uuid.UUID) -> str:
    return f"{JOB}{value.hex}"


def checkpoint_id(value: uuid.UUID) -> str:
    return f"{CHECKPOINT}{value.hex}"


def event_id(job: uuid.UUID, seq: int) -> str:
    return f"{EVENT}{job.hex}-{seq}"


def _parse(value: str, prefix: str) -> uuid.UUID | None:
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix) :]
    return uuid.UUID(hex=rest) if _HEX.match(rest) else None


def parse_file(value: str) -> uuid.UUID | None:
    return _parse(value, FILE)


def parse_job(value: str) -> uuid.UUID | None:
    return _parse(value, JOB)


def parse_checkpoint(value: str) -> uuid.UUID | None:
    return _parse(value, CHECKPOINT)


def parse_event(value: str, job: uuid.UUID) -> int | None:
    """The seq of one of `job`'s event ids; None for anything else."""
    match = _EVENT.match(value)
    if match is None or match["job"] != job.hex:
        return None
    seq = int(match["seq"])
    return seq if seq <= MAX_SEQ else None
