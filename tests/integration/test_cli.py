"""The `fastbrain` client commands against a real API and worker (subprocesses), training tiny-random.

The trained job is made once for the module (`trained`): skill created with the CLI, trained
with `train --follow` in a pseudo-terminal, so the live bar is really drawn. The tests here
never truncate the database between them (no `client` fixture), so they share that job.
Every subprocess has a timeout: a hung CLI fails its test instead of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import REPO_ROOT, Keys, ServiceProcess, demo_conversations

SKILL_ID = "cli-skill"
TRAIN_ARGS = [
    "--preset", "quick", "--base-model", "tiny-random", "--max-steps", "6", "--batch-size", "2",
    "--max-seq-length", "128", "--set", "gradient_accumulation_steps=1",
]  # fmt: skip
CLI_TIMEOUT = 60
TABLES = "fb_training_logs, fb_adapters, fb_training_jobs, fb_skills, fb_gpu_spend"
TRAIN_TIMEOUT = 600


def cli_env(api_url: str, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTBRAIN_API_URL", "FASTBRAIN_API_KEY")}
    return {**env, "FASTBRAIN_URL": api_url, "FASTBRAIN_API_KEY": key or Keys.admin, "NO_COLOR": "1"}


def cli(
    api_url: str, *args: str, key: str | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO_ROOT,
        env=cli_env(api_url, key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(api_url: str, *args: str) -> Any:
    done = cli(api_url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def in_pty(api_url: str, *args: str, timeout: float) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its stdout/stderr (rich draws its live bar); its exit code and output."""
    master, slave = pty.openpty()
    env = {**cli_env(api_url), "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}
    env.pop("NO_COLOR")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args], cwd=REPO_ROOT, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        else:
            process.kill()
            pytest.fail(f"the CLI did not end within {timeout}s:\n{b''.join(chunks).decode(errors='replace')[-3000:]}")
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@dataclass
class Trained:
    job_id: str
    code: int
    output: str


@pytest.fixture(scope="module")
async def trained(
    api_url: str, worker: ServiceProcess, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    async with engine.begin() as conn:  # start from no skills and jobs, once for the module
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    skill_file = tmp_path_factory.mktemp("cli") / "skill.json"
    skill = {
        "skill_id": SKILL_ID,
        "name": "CLI skill",
        "system_prompt": "You are terse.",
        "conversations": demo_conversations(12),
    }
    skill_file.write_text(json.dumps(skill))
    created = cli(api_url, "skills", "create", "--file", str(skill_file))
    assert created.returncode == 0, created.stderr
    assert f"Created skill '{SKILL_ID}' with 12 examples." in created.stdout
    code, output = await asyncio.to_thread(
        in_pty, api_url, "train", SKILL_ID, *TRAIN_ARGS, "--follow", timeout=TRAIN_TIMEOUT
    )
    jobs = cli_json(api_url, "jobs", "ls", "--skill", SKILL_ID)
    assert len(jobs) == 1, (jobs, output)
    return Trained(job_id=jobs[0]["job_id"], code=code, output=output)


def test_skills_ls_json(api_url: str, trained: Trained) -> None:
    skills = cli_json(api_url, "skills", "ls")
    assert [(s["skill_id"], s["name"], s["example_count"], s["active_adapter_version"]) for s in skills] == [
        (SKILL_ID, "CLI skill", 12, 1)
    ]
    table = cli(api_url, "skills", "ls")
    assert table.returncode == 0 and SKILL_ID in table.stdout and "ACTIVE VERSION" in table.stdout


def test_train_follow_draws_the_bar_and_ends_with_the_summary(trained: Trained) -> None:
    assert trained.code == 0, trained.output[-3000:]
    output = trained.output
    assert "step 6/6" in output and "loss " in output and "tok/s" in output and "ETA" in output, output[-3000:]
    assert "━" in output, "rich's bar was drawn"
    assert "Training completed: skill 'cli-skill'" in output
    assert "held-out loss " in output and " → " in output and "% improvement" in output, output[-2000:]
    assert "steps 6/6" in output and "adapter v1 (active" in output
    assert "status  " in output and "info " in output, "status and log events are printed above the bar"


def test_jobs_status_and_adapters_ls_json(api_url: str, trained: Trained) -> None:
    status = cli_json(api_url, "jobs", "status", trained.job_id)
    assert status["status"] == "completed" and status["current_step"] == 6 and status["adapter_version"] == 1
    assert status["eval_loss_before"] is not None and status["eval_loss_after"] is not None
    adapters = cli_json(api_url, "adapters", "ls")
    assert [(a["skill_id"], a["version"], a["is_active"]) for a in adapters] == [(SKILL_ID, 1, True)]
    assert adapters[0]["id"] == status["adapter_id"]


def test_adapters_export(api_url: str, trained: Trained, tmp_path: Path) -> None:
    target = tmp_path / "out.tar.gz"
    done = cli(api_url, "adapters", "export", f"{SKILL_ID}@v1", "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert target.stat().st_size > 0 and not (tmp_path / "out.tar.gz.part").exists()


class DroppingProxy:
    """A TCP proxy to the API that cuts the first WebSocket connection once it has relayed `cut_after` bytes."""

    def __init__(self, port: int, cut_after: int = 1500) -> None:
        self.upstream = ("127.0.0.1", port)
        self.cut_after = cut_after
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=30)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        relayed, websocket = 0, False
        try:
            while data := source.recv(256):  # small reads: the cut lands in the middle of the history
                websocket = websocket or (downstream and b"101 Switching Protocols" in data)
                sink.sendall(data)
                relayed += len(data)
                if websocket and self.cuts == 0 and relayed > self.cut_after:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(api_url: str) -> Iterator[DroppingProxy]:
    dropping = DroppingProxy(int(api_url.rsplit(":", 1)[1]))
    yield dropping
    dropping.close()


def test_logs_follow_resumes_after_a_dropped_connection(api_url: str, trained: Trained, proxy: DroppingProxy) -> None:
    stored = [json.loads(line) for line in cli(api_url, "jobs", "logs", trained.job_id, "--json").stdout.splitlines()]
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1)) and stored[-1]["type"] == "complete"
    followed = cli(proxy.url, "jobs", "logs", trained.job_id, "--follow", "--json")
    assert followed.returncode == 0, followed.stderr
    assert proxy.cuts == 1, "the proxy cut the stream"
    assert "resuming after event" in followed.stderr or "retrying" in followed.stderr, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert events == stored, "every event once, in order, across the reconnect"


def test_chat_message(api_url: str, trained: Trained, serve: str) -> None:
    done = cli(api_url, "chat", SKILL_ID, "--message", "Hello?", "--max-tokens", "8", "--temperature", "0", timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n")


def test_a_bad_key_is_exit_3_with_the_servers_message(api_url: str) -> None:
    done = cli(api_url, "skills", "ls", key="fb_not-a-real-key")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "error: A valid API key is required." in done.stderr and "hint:" in done.stderr


def test_an_unreachable_server_is_exit_3(api_url: str) -> None:
    done = cli("http://127.0.0.1:9", "jobs", "ls")
    assert done.returncode == 3 and "cannot reach the Fast Brain API" in done.stderr


def test_an_unknown_skill_is_exit_1_with_the_404_message(api_url: str) -> None:
    done = cli(api_url, "train", "no-such-skill", "--preset", "quick", "--follow")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "error: Skill 'no-such-skill' not found." in done.stderr


def test_usage_errors_are_exit_2(api_url: str) -> None:
    assert cli(api_url, "train", SKILL_ID, "--preset", "bogus").returncode == 2
    assert cli(api_url, "train", SKILL_ID, "--set", "no-equals-sign").returncode == 2
