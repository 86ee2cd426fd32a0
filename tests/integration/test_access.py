"""Keys, scopes and workspaces on every route; per-key and per-workspace limits; GPU budgets.

The route-coverage test walks the app's own route table (`app_routes`), so a new route
is covered the moment it exists: without a key it must answer 401, with a key one scope
too small 403, and with another workspace's key every id of the first is a 404 (over
HTTP and over the WebSocket alike). A route that needs a request body to get that far
names one in `BODIES`; a missing entry fails the test instead of skipping the route.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.auth.access import PUBLIC_PATHS, app_routes, required_scope
from shared.db import keys
from shared.db.engine import create_sessionmaker
from shared.db.keys import Scope
from shared.db.models import (
    Adapter,
    Export,
    ExportEvent,
    FineTuningJob,
    Skill,
    TrainingJob,
    TrainingLog,
    UploadedFile,
)
from shared.settings import Settings
from tests.conftest import REPO_ROOT, Keys, Stack, auth, demo_conversations, make_key, service_env
from tests.integration.test_skills_api import assert_error_shape

# The route table, read without starting anything (create_app connects only in its lifespan).
ROUTES = [
    route
    for route in app_routes(create_app(Settings(database_url="postgresql+asyncpg://unused/x", redis_url="redis://x")))
    if route.path not in PUBLIC_PATHS
]
HTTP_ROUTES = [(method, route.path, route) for route in ROUTES for method in sorted(getattr(route, "methods", ()))]
WS_ROUTES = [route for route in ROUTES if not hasattr(route, "methods")]

# Bodies valid enough to get past validation to the workspace check (keyed by method and path).
CONVERSATION = {"user": "Hi", "assistant": "Hello there."}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/skills"): {"skill_id": "route-new", "name": "n", "system_prompt": "p"},
    ("PUT", "/api/skills/{skill_id}"): {"name": "renamed"},
    ("POST", "/api/skills/{skill_id}/examples"): {"conversations": [CONVERSATION]},
    ("POST", "/api/test-adapter/{skill_id}"): {"prompt": "Hello?", "max_new_tokens": 4},
    ("POST", "/v1/chat/completions"): {"model": "{skill_id}", "messages": [{"role": "user", "content": "Hi"}]},
    ("POST", "/v1/fine_tuning/jobs"): {"model": "tiny-random", "training_file": "{file_id}"},
    ("POST", "/api/adapters/{adapter_id}/exports"): {"format": "peft"},
}
MULTIPART: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/skills/{skill_id}/examples/import"): {"file": ("x.jsonl", b'{"messages": []}\n')},
    ("POST", "/v1/files"): {"file": ("x.jsonl", b'{"messages": []}\n'), "purpose": (None, "fine-tune")},
}
PLACEHOLDERS = ("{skill_id}", "{file_id}")  # a body naming one of A's rows
SMALLER = {Scope.TRAIN: Scope.READ, Scope.ADMIN: Scope.TRAIN}


@dataclass
class Tenant:
    """Workspace A's rows, and keys of each scope for A and for B."""

    workspace_a: str
    skill_id: str
    job_id: str
    open_job_id: str
    adapter_id: str
    file_id: str  # an OpenAI-API file (`file-...`) and fine-tuning job (`ftjob-...`) of A's
    fine_tuning_job_id: str
    export_id: str  # an export of A's adapter, queued, with one event (no worker takes it)
    keys_a: dict[Scope, str]
    key_b: str

    def path(self, template: str) -> str:
        return template.format(
            skill_id=self.skill_id,
            job_id=self.job_id,
            adapter_id=self.adapter_id,
            model=self.skill_id,
            file_id=self.file_id,
            fine_tuning_job_id=self.fine_tuning_job_id,
            export_id=self.export_id,
            name="model.gguf",
        )


@pytest.fixture(scope="module")
async def tenant(engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tenant]:
    suffix = uuid.uuid4().hex[:6]
    workspace_a, workspace_b = f"ws-a-{suffix}", f"ws-b-{suffix}"
    keys_a = {scope: await make_key(engine, workspace_a, scope) for scope in Scope}
    key_b = await make_key(engine, workspace_b, Scope.ADMIN)
    adapter_dir = tmp_path_factory.mktemp("tenant-adapter")
    async with create_sessionmaker(engine)() as session, session.begin():
        skill = Skill(
            id=f"a-skill-{suffix}",
            workspace_id=workspace_a,
            name="A",
            system_prompt="p",
            training_data=demo_conversations(12),
        )
        session.add(skill)
        await session.flush()
        job = TrainingJob(skill_id=skill.id, status="failed", error_details={"traceback_tail": "Traceback: secret"})
        session.add(job)
        await session.flush()
        session.add(TrainingLog(job_id=job.id, seq=1, event_type="status", data={"type": "status", "seq": 1}))
        adapter = Adapter(skill_id=skill.id, training_job_id=job.id, storage_path=str(adapter_dir), base_model="x")
        session.add(adapter)
        open_job = TrainingJob(skill_id=skill.id, status="queued")  # no worker takes it: its stream stays open
        session.add(open_job)
        await session.flush()
        session.add(TrainingLog(job_id=open_job.id, seq=1, event_type="status", data={"type": "status", "seq": 1}))
        upload = UploadedFile(
            workspace_id=workspace_a,
            filename="a.jsonl",
            purpose="fine-tune",
            bytes=1,
            format="openai",
            example_count=12,
            conversations=demo_conversations(12),
        )
        session.add(upload)
        fine_tuning = FineTuningJob(
            id=job.id,
            workspace_id=workspace_a,
            model="tiny-random",
            training_file="file-x",
            seed=42,
            hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0},
        )
        session.add(fine_tuning)
        export = Export(adapter_id=adapter.id, skill_id=skill.id, format="peft", status="queued", event_seq=1)
        session.add(export)
        await session.flush()
        session.add(ExportEvent(export_id=export.id, seq=1, event_type="status", data={"type": "status", "seq": 1}))
        await session.flush()
        tenant = Tenant(
            workspace_a,
            skill.id,
            str(job.id),
            str(open_job.id),
            str(adapter.id),
            f"file-{upload.id.hex}",
            f"ftjob-{job.id.hex}",
            str(export.id),
            keys_a,
            key_b,
        )
    yield tenant
    async with create_sessionmaker(engine)() as session, session.begin():
        doomed = await session.get(Skill, tenant.skill_id)  # its jobs, adapters and fine-tuning jobs go with it
        if doomed is not None:
            await session.delete(doomed)
        uploaded = await session.get(UploadedFile, uuid.UUID(tenant.file_id.removeprefix("file-")))
        if uploaded is not None:
            await session.delete(uploaded)


async def _call(http: httpx.AsyncClient, method: str, template: str, tenant: Tenant, key: str | None) -> httpx.Response:
    headers = auth(key) if key else {}
    body = BODIES.get((method, template))
    if body is not None:  # a body may name the tenant's skill or file, as a path does
        text = json.dumps(body).replace("{skill_id}", tenant.skill_id).replace("{file_id}", tenant.file_id)
        body = json.loads(text)
    files = MULTIPART.get((method, template))
    return await http.request(method, tenant.path(template), json=body, files=files, headers=headers)


def test_the_route_table_is_what_the_coverage_test_walks() -> None:
    """The public paths are exactly these; everything else (and every WebSocket) needs a key."""
    assert len(HTTP_ROUTES) >= 25 and len(WS_ROUTES) == 2  # the training and the export streams
    assert set(PUBLIC_PATHS) == {"/", "/favicon.svg", "/docs", "/api/health"}
    # Prometheus's scrape target is a route like any other (a mounted metrics app would skip `authorize`),
    # and it needs an admin key: its job counts span every workspace.
    metrics = [route for method, path, route in HTTP_ROUTES if (method, path) == ("GET", "/metrics")]
    assert len(metrics) == 1 and required_scope(metrics[0]) == Scope.ADMIN


@pytest.mark.parametrize(("method", "template", "route"), HTTP_ROUTES, ids=[f"{m} {p}" for m, p, _ in HTTP_ROUTES])
async def test_every_route_needs_a_key_the_scope_and_the_workspace(
    api_url: str, tenant: Tenant, method: str, template: str, route: Any
) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        assert_error_shape(await _call(http, method, template, tenant, None), 401, "unauthorized")
        assert_error_shape(await _call(http, method, template, tenant, "fb_" + "x" * 43), 401, "unauthorized")
        needed = required_scope(route)
        if needed in SMALLER:
            error = assert_error_shape(
                await _call(http, method, template, tenant, tenant.keys_a[SMALLER[needed]]), 403, "insufficient_scope"
            )
            if template.startswith("/v1/"):  # OpenAI's shape has no details: the message names both scopes
                assert error["type"] == "permission_error" and needed.value in str(error["message"])
            else:
                assert error["details"] == {"required_scope": needed.value, "key_scope": SMALLER[needed].value}
        body = json.dumps(BODIES.get((method, template)))
        if "{" in template or any(name in body for name in PLACEHOLDERS):  # names A's rows
            response = await _call(http, method, template, tenant, tenant.key_b)
            assert_error_shape(response, 404)
        else:
            response = await _call(http, method, template, tenant, tenant.key_b)
            assert response.status_code < 500, response.text
            for secret in (tenant.skill_id, tenant.job_id, tenant.adapter_id):
                assert secret not in response.text  # lists and figures hold nothing of workspace A


@pytest.mark.parametrize("route", WS_ROUTES, ids=[r.path for r in WS_ROUTES])
async def test_every_websocket_needs_a_key_and_the_workspace(api_url: str, tenant: Tenant, route: Any) -> None:
    url = api_url.replace("http://", "ws://") + tenant.path(route.path)

    async def refusal(headers: dict[str, str], subprotocols: list[str] | None = None) -> tuple[int, dict[str, Any]]:
        async with (
            asyncio.timeout(10),
            websockets.connect(
                url,
                additional_headers=headers,
                subprotocols=subprotocols,  # type: ignore[arg-type]
            ) as ws,
        ):
            message = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code is not None
            return ws.close_code, message

    code, message = await refusal({})
    assert code == 4401 and message["type"] == "error" and message["final"] is True
    code, message = await refusal({}, ["fastbrain", "fastbrain.ticket.not-a-ticket"])
    assert code == 4401 and message["category"] == "INVALID_TICKET"
    code, message = await refusal(auth(tenant.key_b))
    assert code == 4404 and message["category"] == "NOT_FOUND"
    async with asyncio.timeout(10), websockets.connect(url, additional_headers=auth(tenant.keys_a[Scope.READ])) as ws:
        assert json.loads(await ws.recv())["seq"] == 1  # the owner's read key streams it


async def test_a_stream_ticket_opens_one_socket_once(api_url: str, tenant: Tenant) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth(tenant.keys_a[Scope.READ])) as http:
        response = await http.post("/api/stream-tickets")
    assert response.status_code == 201, response.text
    protocols = response.json()["protocols"]
    url = api_url.replace("http://", "ws://") + f"/api/training-stream/{tenant.job_id}"
    async with asyncio.timeout(10), websockets.connect(url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "fastbrain"
        assert json.loads(await ws.recv())["seq"] == 1
    async with asyncio.timeout(10), websockets.connect(url, subprotocols=protocols) as ws:  # used up
        assert json.loads(await ws.recv())["category"] == "INVALID_TICKET"


async def test_a_stream_ends_when_its_key_is_revoked(api_url: str, tenant: Tenant, engine: AsyncEngine) -> None:
    key = await make_key(engine, tenant.workspace_a, Scope.READ, "to-revoke")
    url = api_url.replace("http://", "ws://") + f"/api/training-stream/{tenant.open_job_id}"
    async with asyncio.timeout(20), websockets.connect(url, additional_headers=auth(key)) as ws:
        assert json.loads(await ws.recv())["seq"] == 1  # streaming (the job is queued: it stays open)
        async with create_sessionmaker(engine)() as session, session.begin():
            assert await keys.revoke_key(session, key[: keys.SHOWN_CHARS]) is not None
        message = json.loads(await ws.recv())
        assert message["category"] == "UNAUTHORIZED" and message["final"] is True
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4401


async def test_a_key_in_the_query_string_is_not_accepted(api_url: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        response = await http.get("/api/skills", params={"api_key": Keys.admin, "key": Keys.admin})
    assert_error_shape(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_tracebacks_are_for_admin_keys_only(api_url: str, tenant: Tenant) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        status = await http.get(f"/api/training-status/{tenant.job_id}", headers=auth(tenant.keys_a[Scope.TRAIN]))
        assert status.status_code == 200 and "secret" not in status.text
        diagnostics = await http.get(
            f"/api/training-jobs/{tenant.job_id}/diagnostics", headers=auth(tenant.keys_a[Scope.ADMIN])
        )
    assert diagnostics.status_code == 200, diagnostics.text
    assert diagnostics.json()["error_details"]["traceback_tail"] == "Traceback: secret"


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO_ROOT,
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_keys_create_list_revoke(api_url: str, migrated: Settings) -> None:
    created = await asyncio.to_thread(_cli, migrated, "keys", "create", "--workspace", "cli-ws", "--scope", "read")
    assert created.returncode == 0, created.stderr
    secret = next(line.strip() for line in created.stdout.splitlines() if line.strip().startswith("fb_"))
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth(secret)) as http:
        me = (await http.get("/api/me")).json()
        assert (me["workspace_id"], me["scope"]) == ("cli-ws", "read")
        listing = await asyncio.to_thread(_cli, migrated, "keys", "list", "--workspace", "cli-ws")
        assert listing.returncode == 0 and secret[:10] in listing.stdout and secret not in listing.stdout
        revoked = await asyncio.to_thread(_cli, migrated, "keys", "revoke", me["key_id"])
        assert revoked.returncode == 0, revoked.stderr
        assert_error_shape(await http.get("/api/me"), 401, "unauthorized")  # at once: no cache to wait out
    again = await asyncio.to_thread(_cli, migrated, "keys", "revoke", me["key_id"])
    assert again.returncode != 0 and "no live key" in again.stderr
    bad = await asyncio.to_thread(_cli, migrated, "keys", "create", "--workspace", "Bad Name", "--scope", "read")
    assert bad.returncode != 0 and "workspace id" in bad.stderr


# -- limits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(migrated: Settings) -> Iterator[Stack]:
    """An API with tiny limits and no worker (queued jobs stay queued)."""
    stack = Stack(
        "limited",
        migrated,
        api_env={
            "FASTBRAIN_REQUESTS_PER_MINUTE_PER_KEY": "8",
            "FASTBRAIN_WEBSOCKETS_PER_KEY": "2",
            "FASTBRAIN_MAX_CONCURRENT_JOBS_PER_WORKSPACE": "1",
            "FASTBRAIN_LOCAL_PRICE_PER_HOUR": "3600",  # a dollar a second, so estimates cost something
        },
    )
    yield stack
    stack.stop()


async def test_requests_per_minute_per_key(limited: Stack, engine: AsyncEngine) -> None:
    key = await make_key(engine, "rate-ws", Scope.READ)
    other = await make_key(engine, "rate-ws", Scope.READ)
    async with limited.client(key=key) as http:
        answers = [(await http.get("/api/presets")).status_code for _ in range(8)]
        assert answers == [200] * 8
        error = assert_error_shape(await http.get("/api/presets"), 429, "rate_limited")
        assert error["details"]["limit_per_minute"] == 8
        assert 1 <= int((await http.get("/api/presets")).headers["retry-after"]) <= 60
    async with limited.client(key=other) as http:  # each key has its own allowance
        assert (await http.get("/api/presets")).status_code == 200


async def test_websockets_per_key(limited: Stack, tenant: Tenant) -> None:
    # Sockets on a job that has not ended stay open: hold them on workspace A's (failed
    # jobs close at once, so this one is a fresh queued job of A's).
    url = limited.url.replace("http://", "ws://") + f"/api/training-stream/{tenant.open_job_id}"
    key = tenant.keys_a[Scope.READ]
    first = await websockets.connect(url, additional_headers=auth(key))
    second = await websockets.connect(url, additional_headers=auth(key))
    try:
        async with asyncio.timeout(10), websockets.connect(url, additional_headers=auth(key)) as third:
            message = json.loads(await third.recv())
            assert message["category"] == "TOO_MANY_WEBSOCKETS"
            with pytest.raises(websockets.ConnectionClosed):
                await third.recv()
            assert third.close_code == 4429
        await first.close()
        await asyncio.sleep(0.2)
        async with asyncio.timeout(10), websockets.connect(url, additional_headers=auth(key)) as fourth:
            assert json.loads(await fourth.recv())["seq"] == 1  # a closed socket gives its slot back
    finally:
        await first.close()
        await second.close()


async def _skill(http: httpx.AsyncClient, skill_id: str) -> None:
    body = {"skill_id": skill_id, "name": skill_id, "system_prompt": "p", "conversations": demo_conversations(12)}
    response = await http.post("/api/skills", json=body)
    assert response.status_code == 201, response.text


async def test_concurrent_jobs_per_workspace(limited: Stack, engine: AsyncEngine) -> None:
    """Also: the API writes no job for a refused start, and B's count is its own."""
    suffix = uuid.uuid4().hex[:6]
    key_a, key_b = (
        await make_key(engine, f"jobs-a-{suffix}", Scope.TRAIN),
        await make_key(engine, f"jobs-b-{suffix}", Scope.TRAIN),
    )
    config = {"config": {"base_model": "tiny-random", "max_steps": 1}}
    async with limited.client(key=key_a) as a, limited.client(key=key_b) as b:
        for http, name in ((a, f"one-{suffix}"), (a, f"two-{suffix}"), (b, f"three-{suffix}")):
            await _skill(http, name)
        assert (await a.post(f"/api/train-skill/one-{suffix}", json=config)).status_code == 202
        error = assert_error_shape(await a.post(f"/api/train-skill/two-{suffix}", json=config), 429, "too_many_jobs")
        assert error["details"] == {"active_jobs": 1, "limit": 1}
        assert (await b.post(f"/api/train-skill/three-{suffix}", json=config)).status_code == 202  # B's own count
        jobs = (await a.get("/api/training-jobs")).json()
        assert [j["skill_id"] for j in jobs["jobs"]] == [f"one-{suffix}"]  # nothing was written for the refusal


async def test_a_training_over_the_monthly_budget_is_refused_with_the_numbers(
    limited: Stack, engine: AsyncEngine
) -> None:
    workspace = f"budget-{uuid.uuid4().hex[:6]}"
    key = await make_key(engine, workspace, Scope.TRAIN)
    async with create_sessionmaker(engine)() as session, session.begin():
        await keys.set_budget(session, workspace, 0.5)
    async with limited.client(key=key) as http:
        await _skill(http, f"{workspace}-skill")
        estimate = (await http.post(f"/api/skills/{workspace}-skill/estimate", json={})).json()
        assert estimate["cost_usd"] > 0.5  # at a dollar a second, any run costs more than the budget
        error = assert_error_shape(
            await http.post(f"/api/train-skill/{workspace}-skill", json={}), 429, "budget_exceeded"
        )
        details = error["details"]
        assert details["monthly_budget_usd"] == 0.5 and details["remaining_usd"] == 0.5
        assert details["estimated_cost_usd"] == pytest.approx(estimate["cost_usd"], rel=0.01)
        assert "$0.50 left" in str(error["message"])
        me = (await http.get("/api/me")).json()
        assert me["budget"]["monthly_usd"] == 0.5 and me["active_jobs"] == 0


async def test_a_body_without_any_key_is_refused_before_it_is_read(api_url: str) -> None:
    """A 5 MB upload without an Authorization header: 401 at once (FastAPI would otherwise parse it first)."""
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        response = await http.post("/api/skills/any/examples/import", files={"file": ("big.jsonl", b"x" * 5_000_000)})
        assert_error_shape(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_error_shape(await http.post("/api/skills", json={"skill_id": "x"}), 401, "unauthorized")
