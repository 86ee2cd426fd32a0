"""Warm starts: a job's start to its first progress event, with and without the standby trainer.

Drives the worker's local backend directly (the part a warm start changes; the API and queue
add the same tens of milliseconds to both): for each model, `--jobs` jobs one after another
with the standby off (each job starts a trainer process: imports torch, transformers, PEFT and
TRL, loads the model), then `--jobs` with it on, each job arriving once the standby is ready
(a warm worker). The job: the demo skill's conversations, the Standard preset's values,
`max_steps` 2, so the first progress event comes after the held-out loss of the base model and
one optimizer step, as in a real run. Prints the medians and their ratio.

    FASTBRAIN_TRAIN_DEVICE=cpu .venv/bin/python bench/warm_start.py [--jobs 10] \
        [--models tiny-random,smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from services.gpu.trainer import READY_LINE  # noqa: E402
from services.worker.backends.local import LocalBackend  # noqa: E402
from shared.schemas.training import TrainingConfigRequest, TrainingSpec, Turn  # noqa: E402
from shared.settings import Settings  # noqa: E402

DEMO = REPO / "shared" / "demo" / "molasses-alchemist.json"
READY_TIMEOUT = 300.0


def job(model: str, models_dir: Path, out: Path, n: int) -> TrainingSpec:
    skill = json.loads(DEMO.read_text())
    conversations = [Turn.model_validate(c) for c in skill["conversations"]]
    hp = TrainingConfigRequest(max_steps=2).resolve(len(conversations))
    return TrainingSpec(
        job_id=f"warm-bench-{n}",
        skill_id=skill["skill_id"],
        base_model=model,
        system_prompt=skill["system_prompt"],
        conversations=conversations,
        hyperparameters=hp,
        output_dir=str(out / f"job-{n}"),
        models_dir=str(models_dir),
    )


async def wait_ready(backend: LocalBackend) -> None:
    if backend._standby_starting is not None:
        await backend._standby_starting
    standby = backend._standby
    assert standby is not None, "no standby trainer"
    deadline = time.monotonic() + READY_TIMEOUT
    while READY_LINE not in standby.stderr_tail:
        if time.monotonic() > deadline or standby.process.returncode is not None:
            raise SystemExit(f"the standby never got ready: {list(standby.stderr_tail)[-5:]}")
        await asyncio.sleep(0.05)


async def first_progress(backend: LocalBackend, spec: TrainingSpec) -> float:
    started = time.perf_counter()
    seconds: float | None = None
    async for payload in backend.train(spec):
        if payload["type"] == "progress" and seconds is None:
            seconds = time.perf_counter() - started
        if payload["type"] == "error":
            raise SystemExit(f"the job failed: {payload.get('message')}")
    assert seconds is not None, "no progress event"
    return seconds


async def measure(model: str, jobs: int, standby: bool, models_dir: Path, out: Path) -> list[float]:
    settings = Settings(model_cache_dir=models_dir, data_dir=out / "data", trainer_standby=standby)
    backend = LocalBackend(settings)
    times = []
    try:
        await backend.start(model)
        for n in range(jobs):
            if standby:
                await wait_ready(backend)
            times.append(await first_progress(backend, job(model, models_dir, out, n)))
    finally:
        await backend.close()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--models", default="tiny-random,smollm2-135m-instruct")
    parser.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "test-models")
    args = parser.parse_args()
    os.environ.setdefault("FASTBRAIN_TRAIN_DEVICE", "cpu")
    print(f"machine: {describe()}")
    print("| model | cold start: median (min-max) | warm standby: median (min-max) | cold / warm |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            cold = await measure(model, args.jobs, False, args.models_dir, Path(tmp) / "cold")
            warm = await measure(model, args.jobs, True, args.models_dir, Path(tmp) / "warm")
            row: dict[str, Any] = {"cold": cold, "warm": warm}
            c, w = statistics.median(cold), statistics.median(warm)
            spread = f"{c:.2f} s ({min(cold):.2f}-{max(cold):.2f}) | {w:.2f} s ({min(warm):.2f}-{max(warm):.2f})"
            print(f"| {model} | {spread} | {c / w:.1f}x |", flush=True)
            print(json.dumps({model: {k: [round(x, 3) for x in v] for k, v in row.items()}}), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
