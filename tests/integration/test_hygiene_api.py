"""What a client receives carries no traceback (the database keeps it), and every response is
served with the security headers: the dashboard's Content-Security-Policy, nosniff, no-referrer,
and no CORS grant.

Jobs and events are written straight to the database, as the worker writes them: nothing trains.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.security import DASHBOARD_CSP
from shared.db import job_state
from shared.db.models import Skill, TrainingJob, TrainingLog
from shared.errors import describe
from tests.conftest import demo_conversations
from tests.integration.test_training_e2e import collect_stream, ws_url

pytestmark = pytest.mark.timeout(60)


async def _failed_job(sessionmaker: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    """A job failed as `completion.fail` leaves one: error details and a final error event with a traceback."""
    try:
        raise ConnectionRefusedError("connect call failed ('127.0.0.1', 9)")
    except ConnectionRefusedError as exc:
        described = describe(exc)
    assert "Traceback" in str(described["traceback_tail"])
    attempts = [{"category": "NETWORK_ERROR", "error": described["message"], "action": "give_up", "succeeded": False}]
    details = {**described, "attempts": attempts}
    skill_id = f"hygiene-{uuid.uuid4().hex[:8]}"
    async with sessionmaker() as session, session.begin():
        session.add(
            Skill(id=skill_id, workspace_id="default", name="s", system_prompt="p", training_data=demo_conversations(1))
        )
        await session.flush()
        job = TrainingJob(
            skill_id=skill_id,
            status="failed",
            config={"base_model": "tiny-random"},
            error_message=f"{details['user_message']} ({details['message']})",
            error_details=details,
            recovery_attempts=attempts,
        )
        session.add(job)
        await session.flush()
        await job_state.append(session, job.id, {"type": "log", "level": "info", "message": "started"})
        await job_state.append(session, job.id, {**details, "type": "error", "final": True})
        return job.id


async def test_clients_see_no_traceback_the_database_keeps_it(
    client: httpx.AsyncClient, api_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await _failed_job(sessionmaker)

    status = (await client.get(f"/api/training-status/{job_id}")).json()
    page = (await client.get(f"/api/training-jobs/{job_id}/events")).json()
    streamed = await collect_stream(ws_url(api_url, str(job_id)))
    for what, received in (("status", status), ("events", page), ("stream", streamed)):
        text = json.dumps(received)
        assert "traceback_tail" not in text and "exception_type" not in text and "Traceback" not in text, what

    details = status["error_details"]
    assert details["category"] == "NETWORK_ERROR" and details["user_message"] and details["suggestions"]
    assert details["message"].startswith("ConnectionRefusedError") and details["attempts"][0]["action"] == "give_up"
    assert status["recovery_attempts"][0]["action"] == "give_up"
    assert [e["type"] for e in page["events"]] == [e["type"] for e in streamed] == ["log", "error"]
    assert streamed[-1]["final"] is True and streamed[-1]["category"] == "NETWORK_ERROR"
    assert streamed[-1]["suggestions"] == details["suggestions"]

    async with sessionmaker() as session:  # operators still have it all
        stored = await session.get(TrainingJob, job_id)
        assert stored is not None and stored.error_details is not None
        assert "Traceback" in stored.error_details["traceback_tail"]
        assert stored.error_details["exception_type"] == "ConnectionRefusedError"
        event = await session.scalar(
            select(TrainingLog.data).where(TrainingLog.job_id == job_id, TrainingLog.event_type == "error")
        )
        assert event is not None and "Traceback" in event["traceback_tail"]


async def test_security_headers_on_dashboard_assets_and_api(client: httpx.AsyncClient) -> None:
    index = await client.get("/")
    assert index.status_code == 200
    asset = re.search(r'src="(/assets/[^"]+\.js)"', index.text)
    assert asset, index.text
    for path in ("/", asset.group(1), "/favicon.svg", "/api/health", "/openapi.json", "/api/skills"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == DASHBOARD_CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    missing = await client.get("/api/skills/no-such-skill")
    assert missing.status_code == 404 and missing.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in DASHBOARD_CSP and "'unsafe-inline'" not in DASHBOARD_CSP


async def test_dashboard_html_has_nothing_inline_that_the_policy_blocks(client: httpx.AsyncClient) -> None:
    html = (await client.get("/")).text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "an inline style"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"


async def test_docs_page_allows_exactly_its_inline_script(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert policy == DASHBOARD_CSP.replace("script-src 'self'", f"script-src 'self' 'sha256-{digest}'")
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_cors_is_off(client: httpx.AsyncClient) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = await client.options(
        "/api/train-skill/demo", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-methods" not in preflight.headers
    simple = await client.get("/api/skills", headers=origin)
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
