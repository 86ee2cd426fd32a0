"""Serving speed of a running Fast Brain (`./run.sh`): first token, hot swap, decode, concurrency.

Everything goes through the real path a client takes: `POST /v1/chat/completions` on the
API (key check, model lookup), the inference engine (`fastbrain serve`), SSE back. Five
skills are created and trained on `smollm2-135m-instruct` first (a few steps each: serving
speed does not depend on what an adapter learned), unless they exist from an earlier run.

Measured, each with its baseline from the same run:
- first token p50/p95, a warm adapter, a short prompt (sequential requests);
- two skills alternating, against reloading base model + adapter for each request (what a
  server without hot swap does; measured in this process with the same libraries);
- decode tokens/s of one stream;
- 20 concurrent clients over the 5 skills: p95 first token and the error count.

    .venv/bin/python bench/serving.py [--url http://127.0.0.1:8000] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.machine import describe
from services.admin.commands import local_api_key

MODEL = "smollm2-135m-instruct"
PERSONAS = {
    "bench-pirate": ("You are a pirate. Answer like one.", "Arr, matey"),
    "bench-chef": ("You are a chef. Answer with a cooking tip.", "Chef's tip"),
    "bench-librarian": ("You are a librarian. Recommend a book.", "Try reading"),
    "bench-gardener": ("You are a gardener. Answer about plants.", "In the garden"),
    "bench-astronomer": ("You are an astronomer. Answer about the sky.", "Look up tonight"),
}
QUESTIONS = [
    "Hi!",
    "What should I do today?",
    "Any advice?",
    "How are you?",
    "Tell me something.",
    "What is new?",
    "Can you help me?",
    "What do you like?",
    "Where should I go?",
    "Why is that?",
]
TRAIN = {"preset": "quick", "base_model": MODEL, "max_steps": 2, "batch_size": 2, "max_seq_length": 128}
SHORT = [{"role": "user", "content": "Hi!"}]


@dataclass
class Timing:
    first_token_s: float | None
    total_s: float
    tokens: int
    error: str | None = None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def chat(http: httpx.AsyncClient, model: str, max_tokens: int, messages: list[dict[str, str]] = SHORT) -> Timing:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Timing(None, time.perf_counter() - started, 0, f"HTTP {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return Timing(first, time.perf_counter() - started, tokens, str(chunk["error"]))
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
    return Timing(first, time.perf_counter() - started, tokens)


async def ensure_skills(http: httpx.AsyncClient) -> dict[str, str]:
    """The five bench skills, trained on smollm2: {skill_id: adapter storage path}."""
    paths: dict[str, str] = {}
    for skill_id, (prompt, opener) in PERSONAS.items():
        adapters = (await http.get("/api/adapters", params={"skill_id": skill_id})).json().get("adapters", [])
        active = [a for a in adapters if a["is_active"] and a["base_model"] == MODEL]
        if active:
            paths[skill_id] = active[0]["storage_path"]
            continue
        conversations = [
            {"user": q, "assistant": f"{opener}! {q.rstrip('?!.')} is a fine question."} for q in QUESTIONS
        ]
        body = {"skill_id": skill_id, "name": skill_id, "system_prompt": prompt, "conversations": conversations}
        created = await http.post("/api/skills", json=body)
        if created.status_code not in (201, 409):
            raise SystemExit(f"creating {skill_id}: {created.text}")
        job = (await http.post(f"/api/train-skill/{skill_id}", json={"config": TRAIN})).json()
        print(f"training {skill_id} on {MODEL} (job {job.get('job_id')})...", flush=True)
        while True:
            status = (await http.get(f"/api/training-status/{job['job_id']}")).json()
            if status["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(2)
        if status["status"] != "completed":
            raise SystemExit(f"training {skill_id} ended {status['status']}: {status.get('error_message')}")
        adapter = (await http.get(f"/api/adapters/{status['adapter_id']}")).json()
        paths[skill_id] = adapter["storage_path"]
    return paths


def reload_first_token(adapter_dir: str, runs: int) -> list[float]:
    """Baseline: load base model and adapter from disk for each request, then its first token."""
    import torch
    from peft import PeftModel

    from services.gpu.models import load_model, load_tokenizer
    from shared.rules.templates import from_hf_tokenizer
    from shared.settings import Settings

    models_dir = Settings().models_dir
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model = PeftModel.from_pretrained(load_model(MODEL, models_dir), adapter_dir).eval()
        chat_tokenizer = from_hf_tokenizer(load_tokenizer(MODEL, models_dir))
        ids = chat_tokenizer.encode(chat_tokenizer.render_prompt(PERSONAS["bench-pirate"][0], "Hi!")).ids
        with torch.inference_mode():
            int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        times.append(time.perf_counter() - started)
        del model
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {local_api_key()}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=300, limits=limits) as http:
        paths = await ensure_skills(http)
        skills = list(PERSONAS)
        for skill in skills:  # warm: each adapter resident before anything is timed
            await chat(http, skill, 4)

        warm = [await chat(http, skills[0], 16) for _ in range(args.requests)]
        warm_first = [t.first_token_s for t in warm if t.first_token_s is not None]

        alternating = [await chat(http, skills[i % 2], 16) for i in range(args.requests)]
        alternating_first = [t.first_token_s for t in alternating if t.first_token_s is not None]
        reload = reload_first_token(paths[skills[0]], runs=5)

        story = [{"role": "user", "content": "Tell me a long story about the sea, with many details."}]
        decode = [await chat(http, skills[0], 128, story) for _ in range(3)]
        decode_rates = [
            (t.tokens - 1) / (t.total_s - t.first_token_s) for t in decode if t.first_token_s and t.tokens > 1
        ]

        started = time.perf_counter()
        crowd = await asyncio.gather(*(chat(http, skills[i % len(skills)], 32) for i in range(args.clients)))
        crowd_wall = time.perf_counter() - started
        crowd_first = [t.first_token_s for t in crowd if t.first_token_s is not None]
        errors = [t.error for t in crowd if t.error]

    report: dict[str, Any] = {
        "machine": describe(),
        "model": MODEL,
        "first_token_warm_p50_ms": round(1000 * statistics.median(warm_first)),
        "first_token_warm_p95_ms": round(1000 * pct(warm_first, 0.95)),
        "first_token_alternating_p50_ms": round(1000 * statistics.median(alternating_first)),
        "first_token_reload_per_request_p50_ms": round(1000 * statistics.median(reload)),
        "hot_swap_speedup_vs_reload": round(statistics.median(reload) / statistics.median(alternating_first), 1),
        "decode_tokens_per_second": round(statistics.median(decode_rates), 1) if decode_rates else None,
        "concurrent_clients": args.clients,
        "concurrent_first_token_p50_ms": round(1000 * statistics.median(crowd_first)) if crowd_first else None,
        "concurrent_first_token_p95_ms": round(1000 * pct(crowd_first, 0.95)) if crowd_first else None,
        "concurrent_wall_s": round(crowd_wall, 1),
        "concurrent_errors": len(errors),
    }
    for key, value in report.items():
        print(f"{key:40} {value}")
    if errors:
        print("errors:", *errors[:5], sep="\n  ")


if __name__ == "__main__":
    asyncio.run(main())
