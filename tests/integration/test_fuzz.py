"""Bad input gets a 4xx in the JSON error shape, in seconds: never a 500, never a hang.

Targeted regressions first (a NUL character, which PostgreSQL text and jsonb cannot hold,
in a query string, a path, a JSON body and an imported file; integers past bigint;
near-duplicate checks that were quadratic), then a bounded schemathesis run against a real
`fastbrain api` process: zero server errors, responses that match the schema, and every
4xx in the `{"error": {...}}` shape. The API has no `/v1` routes yet; when it does, their
errors follow OpenAI's shape and `_error_shape` must tell them apart.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from shared.settings import Settings
from tests.conftest import Stack, auth, demo_conversations
from tests.integration.test_skills_api import assert_error_shape

BIG = 2**64  # past bigint (and int4)
SKILL = {"skill_id": "fuzzed", "name": "Fuzzed", "system_prompt": "You answer briefly."}
# Seconds any one fuzzed request may take: bad input is answered at once.
REQUEST_SECONDS = 10.0
# Cases per operation and generation mode in the schemathesis run (the whole run: well under a minute).
MAX_EXAMPLES = 25


async def _skill_count(client: httpx.AsyncClient) -> int:
    response = await client.get("/api/skills")
    assert response.status_code == 200, response.text
    return len(response.json()["skills"])


@pytest.mark.parametrize(
    "url",
    [
        "/api/training-jobs?skill_id=a%00b",
        "/api/adapters?skill_id=%00",
        "/api/skills/fuzzed/data-report?base_model=x%00",
        "/api/training-jobs?x%00=1",  # an unknown parameter, its name holding the NUL
        "/api/skills/a%00b",  # a path
    ],
)
async def test_nul_in_url_is_a_422(client: httpx.AsyncClient, url: str) -> None:
    error = assert_error_shape(await client.get(url), 422, "validation_error")
    assert "NUL" in str(error["message"])


async def test_nul_in_query_string_writes_nothing(client: httpx.AsyncClient) -> None:
    assert_error_shape(await client.post("/api/skills?note=%00", json=SKILL), 422, "validation_error")
    assert await _skill_count(client) == 0


@pytest.mark.parametrize(
    "body",
    [
        {**SKILL, "system_prompt": "You\x00 answer."},
        {**SKILL, "name": "\x00"},
        {**SKILL, "knowledge_items": [{"fact": ["deep \x00 inside"]}]},
        {**SKILL, "knowledge_items": [{"key\x00": 1}]},
        {
            **SKILL,
            "conversations": [{"user": "Hi", "assistant": "Hello", "history": [{"user": "\x00", "assistant": "a"}]}],
        },
    ],
)
async def test_nul_in_json_body_is_a_422_and_writes_nothing(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    error = assert_error_shape(await client.post("/api/skills", json=body), 422, "validation_error")
    assert "NUL" in str(error["message"])
    assert await _skill_count(client) == 0


async def test_nul_in_appended_examples_and_training_config(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/api/skills", json={**SKILL, "conversations": demo_conversations(10)})
    ).status_code == 201
    bad = {"conversations": [{"user": "a\x00", "assistant": "b"}]}
    assert_error_shape(await client.post("/api/skills/fuzzed/examples", json=bad), 422, "validation_error")
    assert_error_shape(await client.put("/api/skills/fuzzed", json={"description": "\x00"}), 422, "validation_error")
    train = {"config": {"base_model": "tiny\x00"}}
    assert_error_shape(await client.post("/api/train-skill/fuzzed", json=train), 422, "validation_error")
    skill = (await client.get("/api/skills/fuzzed")).json()
    assert skill["example_count"] == 10 and skill["description"] is None
    assert (await client.get("/api/training-jobs")).json()["total"] == 0


async def test_nul_in_imported_file_adds_nothing(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/skills", json=SKILL)).status_code == 201
    files = {
        "nul.jsonl": b'{"user": "a\\u0000b", "assistant": "c"}\n',
        "nul.csv": b"user,assistant\na\x00b,c\n",
    }
    for name, content in files.items():
        response = await client.post("/api/skills/fuzzed/examples/import", files={"file": (name, content)})
        assert_error_shape(response, 422, "invalid_training_file")
    assert (await client.get("/api/skills/fuzzed")).json()["example_count"] == 0


@pytest.mark.parametrize(
    "url",
    [
        f"/api/training-jobs?offset={BIG}",
        f"/api/training-jobs?offset={-BIG}",
        f"/api/training-jobs?limit={BIG}",
        f"/api/training-jobs/00000000-0000-0000-0000-000000000000/events?after_seq={BIG}",
        f"/api/training-jobs/00000000-0000-0000-0000-000000000000/events?limit={BIG}",
        f"/api/training-status/00000000-0000-0000-0000-000000000000?metrics_limit={BIG}",
    ],
)
async def test_integers_past_bigint_are_a_422(client: httpx.AsyncClient, url: str) -> None:
    assert_error_shape(await client.get(url), 422, "validation_error")


async def test_largest_offset_is_an_empty_page(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/training-jobs?offset={2**63 - 1}")
    assert response.status_code == 200, response.text
    assert response.json()["jobs"] == []


async def test_a_seed_past_the_trainers_range_is_a_422(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/api/skills", json={**SKILL, "conversations": demo_conversations(10)})
    ).status_code == 201
    response = await client.post("/api/train-skill/fuzzed", json={"config": {"seed": BIG}})
    assert_error_shape(response, 422, "validation_error")
    assert (await client.get("/api/training-jobs")).json()["total"] == 0


async def test_near_duplicate_check_of_long_repetitive_examples_is_bounded(client: httpx.AsyncClient) -> None:
    """Same word sets, different order, 10,000 characters a turn: difflib was quadratic here
    (about 10 s a pair, the skill's row locked all along)."""
    assert (await client.post("/api/skills", json=SKILL)).status_code == 201
    turn = "a " * 5_000
    examples = [{"user": f"{'b ' * n}{turn}", "assistant": f"{turn}{'b ' * n}"} for n in range(1, 9)]
    started = time.monotonic()
    response = await client.post("/api/skills/fuzzed/examples", json={"conversations": examples})
    assert response.status_code == 200, response.text
    # The same words again in another order: near duplicates of those and of each other.
    reordered = [{"user": f"{turn}{'b ' * n}", "assistant": f"{'b ' * n}{turn}"} for n in range(1, 9)]
    import_file = "\n".join(json.dumps(e) for e in reordered)
    response = await client.post(
        "/api/skills/fuzzed/examples/import", files={"file": ("long.jsonl", import_file.encode())}
    )
    assert response.status_code == 200, response.text
    assert "near duplicates" in " ".join(response.json()["warnings"])
    train = await client.post("/api/train-skill/fuzzed", json={"config": {"base_model": "tiny-random"}})
    assert train.status_code in (202, 422), train.text
    assert time.monotonic() - started < 20


# The bounded schemathesis run. GET /api/skills/{skill_id}/data-report is left out: it waits
# for a worker's answer, and without one it can only time out (a 504 after
# FASTBRAIN_GENERATION_TIMEOUT_SECONDS). POST /api/test-adapter needs a trained adapter, so
# without one it answers 404 at once and stays in.
NEEDS_WORKER = r"/data-report$"


@pytest.fixture(scope="module")
def fuzz_stack(migrated: Settings) -> Iterator[Stack]:
    # The run makes thousands of requests a minute with one key: the rate limit would answer most of them.
    env = {"FASTBRAIN_GENERATION_TIMEOUT_SECONDS": "5", "FASTBRAIN_REQUESTS_PER_MINUTE_PER_KEY": "1000000"}
    stack = Stack("fuzz", migrated, api_env=env)
    yield stack
    stack.stop()


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx is `{"error": {"code", "message", "details", "suggestions"}}` (OpenAI's shape on /v1, if any)."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"{response.status_code}: {response.text[:300]}"
    error = body["error"]
    if case.path.startswith("/v1/"):
        assert {"message", "type"} <= set(error), response.text[:300]
    else:
        assert set(error) == {"code", "message", "details", "suggestions"}, response.text[:300]
        assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    return None


STATUSES: Counter[int] = Counter()


def _check(case: Any) -> None:
    started = time.monotonic()
    case.headers = {**(case.headers or {}), **auth()}  # a valid admin key: the fuzz reaches every handler
    response = case.call_and_validate(
        checks=[not_a_server_error, response_schema_conformance, error_shape], timeout=REQUEST_SECONDS
    )
    STATUSES[response.status_code] += 1
    elapsed = time.monotonic() - started
    assert elapsed < REQUEST_SECONDS, f"{case.method} {case.formatted_path} took {elapsed:.1f} s"


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error(fuzz_stack: Stack) -> None:
    """Every operation, MAX_EXAMPLES schema-valid and MAX_EXAMPLES schema-invalid cases each,
    with the session's admin key (tests/integration/test_access.py covers requests without one).

    Driven through schemathesis' strategies and hypothesis directly: its pytest plugin
    (`schemathesis.pytest.from_fixture`) does not run on pytest 9.2.
    """
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json").exclude(path_regex=NEEDS_WORKER)
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported as is
            )(given(case=operation.as_strategy(generation_mode=mode))(_check))
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters or body; a free-form path string)
                assert mode is GenerationMode.NEGATIVE, operation.path
            except Exception as exc:  # a failed check: note it and go on with the other operations
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"[:2000])
            tested += 1
    print(
        f"schemathesis: {tested} operation runs, {sum(STATUSES.values())} requests, statuses {sorted(STATUSES.items())}"
    )
    assert tested >= 40, tested
    assert not failures, "\n\n".join(failures)
    assert STATUSES[401] == 0 and sum(n for code, n in STATUSES.items() if code < 300) > 100  # the key worked
