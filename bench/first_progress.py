"""Latency and speed of one real training through the running service.

Starts a job on a running Fast Brain (`./run.sh`; the key is $FASTBRAIN_API_KEY or
its data/admin-key), follows its WebSocket and prints: time from POST
/api/train-skill to the first progress event, seconds
per optimizer step, tokens/s, and the loss drop. The baseline is the same
skill trained on tiny-random in the same run (pure service + trainer startup
overhead, no real compute).

    .venv/bin/python bench/first_progress.py [--url http://127.0.0.1:8000] [--skill molasses-master-expert]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
import websockets

from services.admin.commands import local_api_key

# The key of a ./run.sh on this machine (<data dir>/admin-key), or FASTBRAIN_API_KEY.
HEADERS = {"Authorization": f"Bearer {local_api_key()}"}


async def one_run(url: str, skill: str, config: dict[str, Any]) -> dict[str, Any]:
    posted = time.monotonic()
    response = httpx.post(f"{url}/api/train-skill/{skill}", json={"config": config}, headers=HEADERS, timeout=30)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    first: float | None = None
    progress: list[tuple[float, dict[str, Any]]] = []
    final: dict[str, Any] = {}
    stream = url.replace("http", "ws", 1) + f"/api/training-stream/{job_id}"
    async with websockets.connect(stream, additional_headers=HEADERS) as ws:
        async for message in ws:
            event = json.loads(message)
            now = time.monotonic() - posted
            if event["type"] == "progress":
                first = now if first is None else first
                progress.append((now, event))
            final = event
    if final.get("type") != "complete":
        raise SystemExit(f"training did not complete: {final}")
    seconds_per_step = (progress[-1][0] - progress[0][0]) / (len(progress) - 1) if len(progress) > 1 else None
    losses = [e["loss"] for _, e in progress]
    return {
        "first_progress_s": round(first or 0.0, 1),
        "seconds_per_step": round(seconds_per_step, 2) if seconds_per_step else None,
        "tokens_per_second": progress[-1][1].get("tokens_per_second"),
        "initial_loss": round(losses[0], 3),
        "final_loss": round(losses[-1], 3),
        "loss_drop_pct": round(100 * (losses[0] - losses[-1]) / losses[0], 1),
        "total_s": round(time.monotonic() - posted, 1),
        "steps": len(progress),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--skill", default="molasses-master-expert")
    parser.add_argument("--preset", default="standard")
    args = parser.parse_args()
    baseline = await one_run(args.url, args.skill, {"preset": "quick", "base_model": "tiny-random", "max_steps": 2})
    print("tiny-random (baseline):   ", json.dumps(baseline))
    real = await one_run(args.url, args.skill, {"preset": args.preset})
    print(f"smollm2 ({args.preset}):", json.dumps(real))
    print(f"first progress, smollm2 / tiny-random: {real['first_progress_s'] / baseline['first_progress_s']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
