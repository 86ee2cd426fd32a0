"""Estimate error before (seeded) and after calibration, in one run.

Against a running Fast Brain (`./run.sh`, or API + worker on a fresh database):
creates a skill, trains it `--calibration` times on tiny-random with a fixed small
config, then once more, and prints for every job the estimate it was given (its
throughput source), the actual wall time and the recorded error
(estimated − actual) / actual. The first job's estimate is seeded only when the
database has no completed job for (tiny-random, cpu) yet.

    .venv/bin/python bench/estimates.py [--url http://127.0.0.1:8000] [--calibration 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import httpx

from services.admin.commands import local_api_key

CONFIG = {"preset": "quick", "base_model": "tiny-random", "max_steps": 4, "max_seq_length": 128}
CONVERSATIONS = [
    {"user": f"Question {i} about {topic}?", "assistant": f"A short answer on {topic}, number {i}."}
    for i, topic in enumerate(["molasses", "honey", "maple syrup", "treacle", "sorghum", "agave"] * 2)
]


def wait(http: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(f"/api/training-status/{job_id}").json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise TimeoutError(job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--calibration", type=int, default=3)
    args = parser.parse_args()
    skill = f"bench-estimates-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=args.url, timeout=60, headers={"Authorization": f"Bearer {local_api_key()}"}) as http:
        http.post(
            "/api/skills",
            json={
                "skill_id": skill,
                "name": "Bench",
                "system_prompt": "You are terse.",
                "conversations": CONVERSATIONS,
            },
        ).raise_for_status()
        rows = []
        for n in range(args.calibration + 1):
            accepted = http.post(f"/api/train-skill/{skill}", json={"config": CONFIG})
            accepted.raise_for_status()
            estimate = accepted.json()["estimate"]
            done = wait(http, accepted.json()["job_id"])
            assert done["status"] == "completed", done
            error = done["estimate_error_pct"]
            actual = estimate["seconds"] / (1 + error / 100) if error is not None else float("nan")
            rows.append((n + 1, estimate, actual, error, done))
            print(
                f"job {n + 1}: estimate {estimate['seconds']:6.1f} s [{estimate['throughput_source']}, "
                f"{estimate['throughput_tokens_per_second']} tok/s, startup {estimate['startup_seconds']} s, "
                f"{estimate['tokens']} tokens, {estimate['confidence']}]  actual {actual:6.1f} s  "
                f"error {error:+6.1f} %  (measured {done['tokens_per_second']} tok/s, "
                f"startup {done['startup_seconds']} s, {done['tokens_trained']} tokens)",
                flush=True,
            )
        http.delete(f"/api/skills/{skill}")
    seeded = [r[3] for r in rows if r[1]["throughput_source"] == "seeded"]
    calibrated = [r[3] for r in rows if r[1]["throughput_source"].startswith("measured")]
    if seeded:
        print(f"seeded estimate error: {seeded[0]:+.1f} %")
    if calibrated:
        print(
            f"calibrated estimate error: last {calibrated[-1]:+.1f} %, "
            f"mean |error| {statistics.mean(abs(e) for e in calibrated):.1f} % over {len(calibrated)} job(s)"
        )


if __name__ == "__main__":
    main()
