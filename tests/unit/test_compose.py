"""The deployment files parse and wire every service (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_names_services_ports_and_healthchecks() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "serve"}
    for name in ("postgres", "redis", "api", "worker", "serve"):
        assert "healthcheck" in services[name], name
    assert services["api"]["ports"] == ["${FASTBRAIN_API_BIND:-127.0.0.1}:8000:8000"]
    assert services["migrate"]["command"] == ["fastbrain", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["command"] == ["fastbrain", "worker"]
    assert services["serve"]["command"][:2] == ["fastbrain", "serve"] and "ports" not in services["serve"]
    assert services["api"]["environment"]["FASTBRAIN_ENGINE_URL"] == "http://serve:8100"
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["FASTBRAIN_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["FASTBRAIN_REDIS_URL"].startswith("redis://redis:")
        assert (REPO / services[name]["build"]["dockerfile"]).is_file()
    assert {"pgdata", "redisdata", "adapters"} <= set(compose["volumes"])
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert services["api"]["healthcheck"]["test"][-1].endswith("/api/health')")
    worker_env = services["worker"]["environment"]
    assert worker_env["FASTBRAIN_GPU_BACKEND"] == "${FASTBRAIN_GPU_BACKEND:-local}"
    assert {"MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "FASTBRAIN_MODAL_GPU"} <= set(worker_env)


def test_worker_image_has_the_modal_client() -> None:
    dockerfile = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert '-e ".[modal]"' in dockerfile


def test_api_image_has_no_torch() -> None:
    dockerfile = (REPO / "docker" / "api.Dockerfile").read_text()
    assert "torch" not in dockerfile.split("no torch")[-1]


def test_published_ports_bind_to_loopback_unless_configured() -> None:
    """Every published port names its host address, loopback by default: none is on all interfaces."""
    for path in sorted(REPO.glob("docker-compose*.yml")) + sorted(REPO.glob("compose*.yml")):
        services = yaml.safe_load(path.read_text())["services"]
        for name, service in services.items():
            for port in service.get("ports", []):
                host = str(port).rsplit(":", 2)[0] if str(port).count(":") >= 2 else ""
                where = f"{path.name}: {name} publishes {port}"
                assert host in ("127.0.0.1", "${FASTBRAIN_API_BIND:-127.0.0.1}"), where
