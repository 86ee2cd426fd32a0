"""Importing training-data files through the real API server (and the CLI) into real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.skills.importers import MAX_IMPORT_BYTES
from shared.settings import Settings
from tests.conftest import REPO_ROOT, Keys, demo_conversations
from tests.integration.test_skills_api import assert_error_shape

SKILL_ID = "importer"


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


def openai(conversation: dict[str, str]) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are sweet."},
            {"role": "user", "content": conversation["user"]},
            {"role": "assistant", "content": conversation["assistant"]},
        ]
    }


EXAMPLES = demo_conversations(6)
FILES: dict[str, tuple[str, bytes]] = {
    "hive215": (
        "skill.json",
        json.dumps(
            {"skill_id": SKILL_ID, "system_prompt": "You are sweet.", "conversations": EXAMPLES}, indent=2
        ).encode(),
    ),
    "openai": ("chat.jsonl", jsonl([openai(c) for c in EXAMPLES])),
    "sharegpt": (
        "sharegpt.json",
        json.dumps(
            [
                {"conversations": [{"from": "human", "value": c["user"]}, {"from": "gpt", "value": c["assistant"]}]}
                for c in EXAMPLES
            ],
            indent=2,
        ).encode(),
    ),
    "alpaca": (
        "alpaca.jsonl",
        jsonl([{"instruction": c["user"], "input": "", "output": c["assistant"]} for c in EXAMPLES]),
    ),
    "csv": (
        "data.csv",
        ("user,assistant\n" + "".join(f'"{c["user"]}","{c["assistant"]}"\n' for c in EXAMPLES)).encode(),
    ),
}


async def create_skill(http: httpx.AsyncClient, n: int = 0) -> None:
    body = {"skill_id": SKILL_ID, "name": "Importer", "system_prompt": "You are sweet."}
    response = await http.post("/api/skills", json={**body, "conversations": demo_conversations(n)})
    assert response.status_code == 201, response.text


async def upload(http: httpx.AsyncClient, filename: str, content: bytes, skill_id: str = SKILL_ID) -> httpx.Response:
    return await http.post(f"/api/skills/{skill_id}/examples/import", files={"file": (filename, content)})


async def example_count(http: httpx.AsyncClient) -> int:
    return int((await http.get(f"/api/skills/{SKILL_ID}")).json()["example_count"])


@pytest.mark.parametrize("fmt", list(FILES))
async def test_each_format_is_imported(client: httpx.AsyncClient, fmt: str) -> None:
    await create_skill(client)
    filename, content = FILES[fmt]
    response = await upload(client, filename, content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["format"] == fmt
    assert body["added"] == len(EXAMPLES) and body["example_count"] == len(EXAMPLES)
    assert body["skipped_duplicates"] == 0 and body["warnings"] == []
    stored = (await client.get(f"/api/skills/{SKILL_ID}")).json()["conversations"]
    assert stored == EXAMPLES


async def test_multi_turn_import_is_stored_with_history(client: httpx.AsyncClient) -> None:
    await create_skill(client)
    record = {
        "conversations": [
            {"from": "human", "value": "Hello"},
            {"from": "gpt", "value": "Hi, I'm the syrup expert."},
            {"from": "human", "value": "Which syrup is darkest?"},
            {"from": "gpt", "value": "Blackstrap molasses."},
        ]
    }
    response = await upload(client, "multi.jsonl", jsonl([record]))
    assert response.status_code == 200, response.text
    stored = (await client.get(f"/api/skills/{SKILL_ID}")).json()["conversations"]
    assert stored == [
        {
            "user": "Which syrup is darkest?",
            "assistant": "Blackstrap molasses.",
            "history": [{"user": "Hello", "assistant": "Hi, I'm the syrup expert."}],
        }
    ]


@pytest.mark.parametrize(
    ("filename", "content", "where"),
    [
        (
            "chat.jsonl",
            jsonl([openai(c) for c in EXAMPLES[:2]]) + b'{"messages": [broken\n' + jsonl([openai(EXAMPLES[3])]),
            {"line": 3},
        ),
        ("data.csv", b"user,assistant\nq1,a1\nq2,a2\nq3\n", {"row": 4}),
        ("data.csv", b"user,assistant\nq1,a1\nq2,bad \xff\n", {"line": 3}),
        (
            "chat.jsonl",
            jsonl(
                [
                    openai(EXAMPLES[0]),
                    {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
                ]
            ),
            {"line": 2},
        ),
    ],
    ids=["bad-json-line-3", "csv-missing-field-row-4", "invalid-utf8-line-3", "role-order-line-2"],
)
async def test_broken_file_is_refused_whole(
    client: httpx.AsyncClient, filename: str, content: bytes, where: dict[str, int]
) -> None:
    await create_skill(client, n=3)
    error = assert_error_shape(await upload(client, filename, content), 422, "invalid_training_file")
    problems = error["details"]["problems"]  # type: ignore[index]
    assert problems[0].items() >= where.items(), problems
    location = " ".join(f"{k} {v}" for k, v in where.items())
    assert location in problems[0]["message"] and location in str(error["message"])
    assert await example_count(client) == 3, "nothing was added"


async def test_exact_duplicates_are_skipped_and_near_duplicates_reported(client: httpx.AsyncClient) -> None:
    await create_skill(client, n=2)
    existing = demo_conversations(2)
    rows = [
        existing[0],  # already in the skill
        {"user": "Do you sell gift boxes?", "assistant": "Yes, we ship gift boxes all year round."},
        {"user": "Do you sell gift boxes?", "assistant": "Yes, we ship gift boxes all year round."},  # in-file copy
        {"user": "do you sell gift boxes", "assistant": "Yes we ship gift boxes all year round!"},  # near
    ]
    content = ("user,assistant\n" + "".join(f'"{r["user"]}","{r["assistant"]}"\n' for r in rows)).encode()
    response = await upload(client, "dups.csv", content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["added"] == 2 and body["skipped_duplicates"] == 2 and body["example_count"] == 4
    warnings = " | ".join(body["warnings"])
    assert "row 2 (= existing example 1)" in warnings and "row 4 (= row 3)" in warnings
    assert "near duplicates" in warnings and "row 5 ~ row 3" in warnings

    again = (await upload(client, "dups.csv", content)).json()
    assert again["added"] == 0 and again["skipped_duplicates"] == 4 and again["example_count"] == 4


async def test_import_errors_without_a_file(client: httpx.AsyncClient) -> None:
    await create_skill(client)
    assert_error_shape(await upload(client, "x.csv", b"user,assistant\nq,a\n", skill_id="nope"), 404, "skill_not_found")
    assert_error_shape(await client.post(f"/api/skills/{SKILL_ID}/examples/import"), 422, "validation_error")
    empty = assert_error_shape(await upload(client, "empty.jsonl", b"\n"), 422, "invalid_training_file")
    assert "empty" in str(empty["message"])
    too_big = await upload(client, "big.csv", b"user,assistant\n" + b"q,a\n" * (MAX_IMPORT_BYTES // 4 + 1))
    assert_error_shape(too_big, 413, "file_too_large")
    assert await example_count(client) == 0


async def test_training_needs_ten_examples_and_warns_under_fifty(client: httpx.AsyncClient, migrated: Settings) -> None:
    await create_skill(client, n=4)
    config = {"config": {"base_model": "tiny-random", "preset": "quick", "max_seq_length": 32}}
    refused = assert_error_shape(
        await client.post(f"/api/train-skill/{SKILL_ID}", json=config), 422, "too_few_examples"
    )
    assert "add 6 more" in str(refused["message"])
    assert refused["details"] == {"example_count": 4, "minimum": 10, "missing": 6}
    assert (await client.get("/api/training-jobs")).json()["total"] == 0

    more = demo_conversations(12)[4:]
    assert (await upload(client, "more.jsonl", jsonl(more))).json()["example_count"] == 12
    if (migrated.models_dir / "tiny-random" / "tokenizer.json").is_file():  # the API's chat-template pre-check
        cut = assert_error_shape(
            await client.post(f"/api/train-skill/{SKILL_ID}", json=config), 422, "template_check_failed"
        )
        assert "12 of 12 examples have an assistant answer cut by max_seq_length=32" in str(cut["message"])
        assert (await client.get("/api/training-jobs")).json()["total"] == 0
        config["config"]["max_seq_length"] = 128
    accepted = await client.post(f"/api/train-skill/{SKILL_ID}", json=config)
    assert accepted.status_code == 202, accepted.text
    warnings = accepted.json()["warnings"]
    assert any("only 12 examples" in w and "50" in w for w in warnings), warnings
    # No worker here: cancel so no later worker picks the job up.
    cancelled = await client.post(f"/api/training-jobs/{accepted.json()['job_id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"


def run_cli(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "skills", "import", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "FASTBRAIN_API_URL": api_url, "FASTBRAIN_API_KEY": Keys.admin},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_import(client: httpx.AsyncClient, api_url: str, tmp_path: Path) -> None:
    await create_skill(client)
    good = tmp_path / "chat.jsonl"
    good.write_bytes(FILES["openai"][1])
    done = run_cli(api_url, SKILL_ID, str(good))
    assert done.returncode == 0, done.stderr
    assert f"Imported 6 examples into '{SKILL_ID}' (format: openai); the skill now has 6." in done.stdout

    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"user,assistant\nq1,a1\nq2,a2\nq3\n")
    failed = run_cli(api_url, SKILL_ID, str(bad))
    assert failed.returncode == 1
    assert "row 4: missing field 'assistant'" in failed.stderr
    assert await example_count(client) == 6

    unreachable = run_cli("http://127.0.0.1:9", SKILL_ID, str(good))
    assert unreachable.returncode != 0 and "cannot reach" in unreachable.stderr
