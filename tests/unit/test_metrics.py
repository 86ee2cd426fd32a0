"""The metric pieces without services: HTTP labels, event lag, the scrape-time snapshot, the worker's endpoint.

Metrics live in prometheus_client's default registry (one per process), so these read differences
of its samples, never absolute values.
"""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from starlette.staticfiles import StaticFiles

from services.api.metrics.endpoints import Snapshot
from services.api.metrics.http import HttpMetrics
from services.api.serving.service import FirstToken
from services.worker import metrics as worker_metrics
from shared.event_hub import observe_lag
from shared.settings import Settings


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests(method: str, route: str, status: str) -> float:
    return value("fastbrain_http_requests_total", method=method, route=route, status=status)


def _app(static_dir: str) -> TestClient:
    router = APIRouter(prefix="/api")

    @router.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @router.get("/broken")
    async def broken() -> None:
        raise RuntimeError("boom")

    app = FastAPI()
    app.include_router(router)
    app.mount("/assets", StaticFiles(directory=static_dir), name="assets")
    app.add_middleware(HttpMetrics)
    return TestClient(app, raise_server_exceptions=False)


def test_requests_are_labelled_by_route_template_not_path(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text("x")
    client = _app(str(tmp_path))
    before = {
        "ok": requests("GET", "/api/things/{thing_id}", "200"),
        "wrong_method": requests("POST", "/api/things/{thing_id}", "405"),
        "missing": requests("GET", "unmatched", "404"),
        "asset": requests("GET", "/assets/{path}", "200"),
        "broken": requests("GET", "/api/broken", "500"),
        "other": requests("other", "unmatched", "404"),
        "durations": value(
            "fastbrain_http_request_duration_seconds_count", method="GET", route="/api/things/{thing_id}", status="200"
        ),
    }
    for thing_id in ("one", "two", "three"):
        assert client.get(f"/api/things/{thing_id}").status_code == 200
    assert client.post("/api/things/one").status_code == 405
    assert client.get("/nowhere/at/all").status_code == 404
    assert client.get("/assets/a.js").status_code == 200
    assert client.get("/api/broken").status_code == 500
    assert client.request("BREW", "/coffee").status_code == 404

    assert requests("GET", "/api/things/{thing_id}", "200") == before["ok"] + 3
    assert requests("POST", "/api/things/{thing_id}", "405") == before["wrong_method"] + 1
    assert requests("GET", "unmatched", "404") == before["missing"] + 1
    assert requests("GET", "/assets/{path}", "200") == before["asset"] + 1
    assert requests("GET", "/api/broken", "500") == before["broken"] + 1  # an exception still counts
    assert requests("other", "unmatched", "404") == before["other"] + 1  # methods are a fixed set
    assert (
        value(
            "fastbrain_http_request_duration_seconds_count", method="GET", route="/api/things/{thing_id}", status="200"
        )
        == before["durations"] + 3
    )
    assert value("fastbrain_http_requests_total", method="GET", route="/api/things/one", status="200") == 0


def test_event_lag_is_measured_from_the_event_timestamp() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    count = value("fastbrain_event_lag_seconds_count")
    assert observe_lag({"ts": (now - timedelta(seconds=0.25)).isoformat()}, now) == 0.25
    assert observe_lag({"ts": (now + timedelta(seconds=1)).isoformat()}, now) == 0.0  # clock skew: clamped
    assert observe_lag({"seq": 1}, now) is None
    assert observe_lag({"ts": "yesterday"}, now) is None
    assert observe_lag({"ts": "2026-12-02T12:00:00"}, now) is None  # no zone: not comparable
    assert value("fastbrain_event_lag_seconds_count") == count + 2


def test_the_snapshot_renders_what_it_read_and_leaves_out_what_it_could_not() -> None:
    def render(snapshot: Snapshot) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(snapshot)
        return generate_latest(registry).decode()

    jobs = {"pending": 0, "queued": 2, "running": 1, "completed": 5, "failed": 1, "cancelled": 0}
    text = render(Snapshot(jobs, 2, {"database": True, "redis": True}))
    assert 'fastbrain_jobs{status="completed"} 5.0' in text
    assert 'fastbrain_jobs{status="pending"} 0.0' in text
    assert "fastbrain_queue_depth 2.0" in text
    assert 'fastbrain_metrics_source_up{source="redis"} 1.0' in text

    text = render(Snapshot(None, 0, {"database": False, "redis": True}))
    assert "fastbrain_jobs{" not in text  # no stale numbers when PostgreSQL did not answer
    assert 'fastbrain_metrics_source_up{source="database"} 0.0' in text
    assert "fastbrain_queue_depth 0.0" in text


def test_first_token_is_observed_once_per_request() -> None:
    count = value("fastbrain_inference_first_token_seconds_count", base_model="unit-model")
    first = FirstToken("unit-model")
    for _ in range(5):
        first.token()
    assert value("fastbrain_inference_first_token_seconds_count", base_model="unit-model") == count + 1


def test_the_worker_endpoint_starts_once_and_a_taken_port_is_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker built by an earlier test in this process may have started one: start afresh (its thread stays).
    monkeypatch.setattr(worker_metrics, "_server_started", False)
    assert worker_metrics.serve(Settings(worker_metrics_port=0)) is False
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Settings(worker_metrics_port=taken.getsockname()[1])
        assert worker_metrics.serve(busy) is False  # logged; the worker trains without metrics
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert worker_metrics.serve(Settings(worker_metrics_port=port)) is True
    assert worker_metrics.serve(Settings(worker_metrics_port=port)) is True  # already serving: no second bind

    finished = value("fastbrain_jobs_finished_total", status="completed")
    worker_metrics.job_finished("completed", 12.5, {"tokens_per_second": 250.0, "device": "cpu"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f'fastbrain_jobs_finished_total{{status="completed"}} {finished + 1}' in text
    assert 'fastbrain_jobs_finished_total{status="failed"}' in text  # every final status, from the start
    assert 'fastbrain_training_tokens_per_second_count{device="cpu"}' in text
