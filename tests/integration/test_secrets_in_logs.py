"""A full run's logs hold no secret: not the API key, not a stream ticket, not the database
password, not a Modal token, whatever the log level.

A real stack (API and worker processes, DEBUG logs) with a password in its database URL
(the test machines' PostgreSQL trusts local connections, so any password is accepted and
the URL is still real) and Modal tokens in its environment trains a tiny model through the
API with a key; one training completes, and another fails on purpose (a network fault with
no retries left), so the trainer's traceback reaches the worker's log too. Then every log
line of the run is searched.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator

import pytest
import websockets
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.keys import Scope
from shared.settings import Settings
from tests.conftest import Stack, auth, create_skill, make_key, wait_for_status

PASSWORD = "pw-" + secrets.token_hex(12)
MODAL_TOKEN_ID = "ak-" + secrets.token_hex(12)
MODAL_TOKEN_SECRET = "as-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def noisy_stack(migrated: Settings) -> Iterator[Stack]:
    url = make_url(str(migrated.database_url)).set(password=PASSWORD)
    env = {
        "FASTBRAIN_DATABASE_URL": url.render_as_string(hide_password=False),
        "FASTBRAIN_LOG_LEVEL": "DEBUG",
        "MODAL_TOKEN_ID": MODAL_TOKEN_ID,
        "MODAL_TOKEN_SECRET": MODAL_TOKEN_SECRET,
    }
    stack = Stack("secrets", migrated, env=env)
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.mark.slow
async def test_no_secret_reaches_the_logs(noisy_stack: Stack, clean_db: AsyncEngine) -> None:
    key = await make_key(clean_db, "secrets-ws", Scope.TRAIN)
    async with noisy_stack.client(key=key) as http:
        await create_skill(http, "secret-skill")
        response = await http.post("/api/train-skill/secret-skill", json={"config": {"base_model": "tiny-random"}})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        ticket = (await http.post("/api/stream-tickets")).json()
        url = noisy_stack.url.replace("http://", "ws://") + f"/api/training-stream/{job_id}"
        async with asyncio.timeout(300), websockets.connect(url, subprotocols=ticket["protocols"]) as ws:
            events = [json.loads(message) async for message in ws]
        assert events[-1]["type"] == "complete", events[-1]
        await wait_for_status(http, job_id, {"completed"})

        # A worker whose trainers all hit a network fault, with no retries: the failure's traceback is logged.
        noisy_stack.workers[0].stop()
        noisy_stack.env.update({"FASTBRAIN_TEST_NETWORK_FAILURES": "9", "FASTBRAIN_NETWORK_MAX_RETRIES": "0"})
        noisy_stack.start_worker()
        await create_skill(http, "secret-skill-2")
        failing = await http.post("/api/train-skill/secret-skill-2", json={"config": {"base_model": "tiny-random"}})
        assert failing.status_code == 202, failing.text
        await wait_for_status(http, failing.json()["job_id"], {"failed"})
        # A wrong key and a key-shaped query string are refused, and logged without their values.
        assert (await http.get("/api/me", headers=auth(key[:-4] + "AAAA"))).status_code == 401
        assert (await http.get(f"/api/skills?api_key={key}", headers={"Authorization": ""})).status_code == 401

    noisy_stack.stop()  # flush and close the logs
    logs = {p.log_path.name: p.log_path.read_text(errors="replace") for p in (noisy_stack.api, *noisy_stack.workers)}
    assert "trainer_started" in logs["secrets-worker1.log"] and "traceback_tail=" in logs["secrets-worker2.log"]
    assert "GET /api/skills?api_key=fb_*** HTTP/1.1" in logs["secrets-api.log"]  # logged, and masked
    for name, text in logs.items():
        for label, secret in {
            "the API key": key,
            "the stream ticket": ticket["ticket"],
            "the database password": PASSWORD,
            "the Modal token id": MODAL_TOKEN_ID,
            "the Modal token secret": MODAL_TOKEN_SECRET,
        }.items():
            assert secret not in text, f"{label} is in {name}"
