"""`fastbrain dev`: everything a user needs, in one process tree.

Starts embedded PostgreSQL and Redis when no URLs are configured, migrates,
loads the demo skill, then runs the API, one worker and the inference engine as
child processes and stops all of it cleanly on Ctrl-C. Their logs go to
`<data dir>/logs/dev.log`; the console shows a summary (services/dev/console.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from services.admin.commands import write_dev_env
from services.dev.console import DevConsole
from services.dev.embedded import start_embedded
from shared.db import keys, migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.keys import DEFAULT_WORKSPACE
from shared.db.models import Skill
from shared.demo import demo_skill
from shared.logging import configure_logging
from shared.settings import Settings

BUNDLED_MODEL = "smollm2-135m-instruct"


async def seed_demo(database_url: str) -> bool:
    """Insert the demo skill unless a skill with its id exists. True if inserted."""
    data = demo_skill()
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            if await session.get(Skill, data["skill_id"]) is not None:
                return False
            session.add(
                Skill(
                    id=data["skill_id"],
                    workspace_id=DEFAULT_WORKSPACE,
                    name=data["name"],
                    description=data.get("description"),
                    system_prompt=data["system_prompt"],
                    training_data=data["conversations"],
                )
            )
            return True
    finally:
        await engine.dispose()


async def ensure_admin_key(database_url: str, path: Path) -> str | None:
    """The development admin key: kept in `path` (mode 0600). A new one (returned, to be
    shown once) when the file is missing or its key no longer works (a fresh database)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            if path.is_file() and await keys.authenticate(session, path.read_text().strip()) is not None:
                return None
            created = await keys.create_key(session, DEFAULT_WORKSPACE, keys.Scope.ADMIN, "fastbrain dev")
    finally:
        await engine.dispose()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.secret + "\n")
    return created.secret


def _wait_http(url: str, timeout: float, processes: list[subprocess.Popen[bytes]]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except Exception:
            time.sleep(0.3)
    return False


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _exited(processes: dict[str, subprocess.Popen[bytes]], console: DevConsole) -> str:
    """Which process ended, with its last lines: what `fastbrain dev` says before stopping the rest."""
    name, process = next((n, p) for n, p in processes.items() if p.poll() is not None)
    lines = "\n".join(f"  {line}" for line in console.recent(name)[-15:])
    return (
        f"The {name} process exited (code {process.returncode}); stopping the rest. Its last lines:\n{lines}\n"
        f"The full log: {console.log_file}"
    )


def run_dev(host: str = "127.0.0.1", port: int = 8000, demo: bool = True) -> None:
    settings = Settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The quiet console: job state changes, warnings and errors here; everything in the log file.
    console = DevConsole(settings.dev_log_file)
    configure_logging(settings.log_level, json_lines=True, stream=console.writer("dev"))

    embedded = start_embedded(data_dir, need_postgres=not settings.database_url, need_redis=not settings.redis_url)
    database_url = settings.database_url or embedded.database_url
    redis_url = settings.redis_url or embedded.redis_url
    assert database_url and redis_url
    print(f"PostgreSQL: {'embedded under ' + str(data_dir / 'pg') if not settings.database_url else 'configured'}")
    print(f"Redis:      {'embedded (' + redis_url + ')' if not settings.redis_url else 'configured'}")

    migrate.upgrade(database_url)
    write_dev_env(settings, database_url, redis_url)
    if demo and asyncio.run(seed_demo(database_url)):
        print(f"Loaded the demo skill '{demo_skill()['skill_id']}'")
    key_file = settings.admin_key_file
    new_key = asyncio.run(ensure_admin_key(database_url, key_file))
    if new_key:
        print(
            f"\nCreated the admin key of workspace '{DEFAULT_WORKSPACE}'; it is shown this once and kept in {key_file}:"
        )
        print(f"  {new_key}\n")
    admin_key = key_file.read_text().strip()

    env = {
        **os.environ,
        "FASTBRAIN_DATABASE_URL": database_url,
        "FASTBRAIN_REDIS_URL": redis_url,
        "FASTBRAIN_DATA_DIR": str(data_dir),
        "FASTBRAIN_PREPARE_MODELS": os.environ.get("FASTBRAIN_PREPARE_MODELS", f'["{BUNDLED_MODEL}"]'),
        "FASTBRAIN_LOG_FORMAT": "json",  # the console reads them; the log file keeps them
        "PYTHONUNBUFFERED": "1",  # their lines reach the console as they are written
    }
    cli = [sys.executable, "-m", "services.cli"]
    cwd = str(Path(__file__).resolve().parents[2])
    engine = urlsplit(settings.engine_url)
    engine_args = ["serve", "--host", engine.hostname or "127.0.0.1", "--port", str(engine.port or 8100)]
    commands = {
        "worker": [*cli, "worker"],
        "engine": [*cli, *engine_args],
        "api": [*cli, "api", "--host", host, "--port", str(port)],
    }
    named: dict[str, subprocess.Popen[bytes]] = {}
    for name, command in commands.items():
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        console.follow(name, process.stdout)
        named[name] = process
    processes = list(named.values())
    # Ctrl-C reaches the whole foreground group; we still stop children
    # ourselves, and treat SIGTERM/SIGHUP (a closed terminal) the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        url = f"http://{host}:{port}"
        if not _wait_http(f"{url}/api/health", 60, processes):
            if any(p.poll() is not None for p in processes):
                raise SystemExit(_exited(named, console))
            raise SystemExit(f"The API did not start; see {console.log_file}.")
        # The key rides in the fragment: browsers never send it to the server, and the
        # dashboard moves it into its session storage and off the address bar at once.
        print(
            f"\nFast Brain is running: {url}\n"
            f"  Dashboard (logs you in): {url}/#key={admin_key}\n"
            f"  API docs: {url}/docs\n"
            f"  OpenAI-compatible chat: base_url={url}/v1, api_key=the key above (model: a skill id)\n"
            f'  Train the demo skill: curl -X POST -H "Authorization: Bearer $(cat {key_file})" '
            f"{url}/api/train-skill/molasses-master-expert\n"
            f"  Full logs (JSON lines): {console.log_file}\n"
            "This console shows job state changes, warnings and errors. Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        raise SystemExit(_exited(named, console))
    except KeyboardInterrupt:
        print("\nStopping Fast Brain...")
    finally:
        console.stopping()
        _stop(processes)
        console.close()
        embedded.stop()
