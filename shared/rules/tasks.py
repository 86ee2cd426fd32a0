"""arq task names and job ids: what the API enqueues and the worker registers."""

from __future__ import annotations

import uuid

RUN_TRAINING = "run_training"
DATA_REPORT = "data_report"
DELETE_REMOTE_ADAPTER = "delete_remote_adapter"
REAP_STALE_JOBS = "reap_stale_jobs"
RUN_EXPORT = "run_export"


def training_job_id(job_id: uuid.UUID | str, attempt: int) -> str:
    """A fresh arq job id per attempt: arq keeps a finished job's id for a while and would refuse it again."""
    return f"train:{job_id}:{attempt}"
