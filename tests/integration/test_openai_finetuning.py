"""The official `openai` SDK's fine-tuning calls against a running Fast Brain: API, worker and inference
engine as real processes (the fixtures of tests/conftest.py that test_openai_serving.py uses too).

A chat-format file is uploaded, a job on tiny-random is polled to `succeeded`, its events and
checkpoints are listed, and its `fine_tuned_model` answers through `chat.completions.create`;
another job is cancelled; bad files, purposes, ids and parameters get OpenAI-shaped 4xx errors and
leave nothing behind. Each module run uses a workspace of its own, so its lists hold only its objects.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.keys import Scope
from tests.conftest import REPO_ROOT, ServiceProcess, auth, demo_conversations, make_key

pytestmark = pytest.mark.timeout(420)
SYSTEM = "You are a syrup expert."
DEADLINE_SECONDS = 300.0


def chat_jsonl(n: int, system: str | None = SYSTEM) -> bytes:
    lines = []
    for example in demo_conversations(n):
        messages = [{"role": "system", "content": system}] if system else []
        messages += [
            {"role": "user", "content": example["user"]},
            {"role": "assistant", "content": example["assistant"]},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Client:
    sdk: openai.OpenAI
    http: httpx.Client  # the same key, for the /api side of the mapping
    workspace: str


@pytest.fixture(scope="module")
async def client(api_url: str, engine: AsyncEngine) -> AsyncIterator[Client]:
    workspace = f"ft-{uuid.uuid4().hex[:8]}"
    key = await make_key(engine, workspace, Scope.TRAIN)
    sdk = openai.OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0, timeout=60)
    http = httpx.Client(base_url=api_url, headers=auth(key), timeout=60)
    yield Client(sdk, http, workspace)
    for skill in http.get("/api/skills").json()["skills"]:
        http.delete(f"/api/skills/{skill['skill_id']}")
    for file in sdk.files.list():
        sdk.files.delete(file.id)
    sdk.close()
    http.close()


@pytest.fixture(scope="module")
def training_file(client: Client) -> str:
    return client.sdk.files.create(file=("syrups.jsonl", chat_jsonl(12)), purpose="fine-tune").id


def wait_for(sdk: openai.OpenAI, job_id: str, statuses: set[str]) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    job = sdk.fine_tuning.jobs.retrieve(job_id)
    while job.status not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} never reached {statuses}; last: {job}"
        time.sleep(0.5)
        job = sdk.fine_tuning.jobs.retrieve(job_id)
    return job


def _error(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = caught.value.body
    assert isinstance(body, dict) and {"message", "type", "param", "code"} <= set(body), body
    return body


# -- files -----------------------------------------------------------------------------


def test_files_upload_list_page_retrieve_delete(client: Client) -> None:
    sdk = client.sdk
    content = chat_jsonl(11)
    first = sdk.files.create(file=("first.jsonl", content), purpose="fine-tune")
    assert first.object == "file" and first.id.startswith("file-") and first.purpose == "fine-tune"
    assert first.bytes == len(content) and first.filename == "first.jsonl" and first.status == "processed"
    assert abs(first.created_at - time.time()) < 60
    second = sdk.files.create(file=("second.jsonl", chat_jsonl(3, system=None)), purpose="fine-tune")
    assert second.status_details and "at least 10" in second.status_details  # few examples: a warning, not a refusal

    page = sdk.files.list(limit=1)
    assert [f.id for f in page.data] == [second.id] and page.has_more  # newest first
    rest = sdk.files.list(limit=1, after=second.id)
    assert rest.data[0].id == first.id
    assert {second.id, first.id} <= {f.id for f in sdk.files.list()}  # the SDK's own paging
    assert sdk.files.retrieve(first.id).model_dump() == first.model_dump()

    deleted = sdk.files.delete(second.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (second.id, "file", True)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.files.retrieve(second.id)
    assert _error(caught)["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(second.id)
    sdk.files.delete(first.id)


def test_a_bad_file_is_refused_with_its_line_and_nothing_is_stored(client: Client) -> None:
    before = {f.id for f in client.sdk.files.list()}
    good = chat_jsonl(6).decode().splitlines()
    wrong_order = {"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hello"}]}
    lines = [*good[:4], "", "", json.dumps(wrong_order), *good[4:]]  # blank lines count: it is line 7
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.files.create(file=("bad.jsonl", "\n".join(lines).encode()), purpose="fine-tune")
    error = _error(caught)
    assert error["param"] == "file" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("line 7: wrong role order"), error["message"]

    broken = (
        b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n{"messages": [\n'
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.files.create(file=("broken.jsonl", broken), purpose="fine-tune")
    assert _error(caught)["message"].startswith("line 2: invalid JSON")

    pairs = b'{"user": "Hi", "assistant": "Hello"}\n'  # a format the importer knows, but not OpenAI's
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.files.create(file=("pairs.jsonl", pairs), purpose="fine-tune")
    assert _error(caught)["message"].startswith("line 1: not the OpenAI chat format")
    assert {f.id for f in client.sdk.files.list()} == before


def test_a_purpose_other_than_fine_tune_is_a_400(client: Client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.files.create(file=("x.jsonl", chat_jsonl(10)), purpose="assistants")
    error = _error(caught)
    assert error["param"] == "purpose" and error["code"] == "invalid_purpose"


def test_unknown_ids_are_404s(client: Client) -> None:
    unknown = f"file-{uuid.uuid4().hex}"
    for bad in (unknown, "file-nope", "not-an-id"):
        with pytest.raises(openai.NotFoundError):
            client.sdk.files.retrieve(bad)
    with pytest.raises(openai.NotFoundError) as caught:
        client.sdk.fine_tuning.jobs.create(model="tiny-random", training_file=unknown)
    assert _error(caught)["param"] == "training_file"
    for bad in (f"ftjob-{uuid.uuid4().hex}", "ftjob-x"):
        with pytest.raises(openai.NotFoundError):
            client.sdk.fine_tuning.jobs.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            client.sdk.fine_tuning.jobs.list_events(bad)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"model": "gpt-4o-mini"}, "model"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": 1000}}, "hyperparameters.learning_rate_multiplier"),
        ({"method": {"type": "dpo", "dpo": {}}}, "method"),
        ({"seed": 2**40}, "seed"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
    ],
)
def test_bad_job_parameters_are_400s_that_leave_nothing_behind(
    client: Client, training_file: str, params: dict[str, Any], param: str
) -> None:
    skills = client.http.get("/api/skills").json()["skills"]
    jobs = client.http.get("/api/training-jobs").json()["total"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.fine_tuning.jobs.create(**{"model": "tiny-random", "training_file": training_file, **params})
    assert _error(caught)["param"] == param
    assert client.http.get("/api/skills").json()["skills"] == skills
    assert client.http.get("/api/training-jobs").json()["total"] == jobs


def test_a_file_of_too_few_conversations_cannot_train(client: Client) -> None:
    skills = client.http.get("/api/skills").json()["skills"]
    few = client.sdk.files.create(file=("few.jsonl", chat_jsonl(4)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.fine_tuning.jobs.create(model="tiny-random", training_file=few.id)
    error = _error(caught)
    assert (error["param"], error["code"]) == ("training_file", "too_few_examples")
    assert "at least 10" in error["message"]
    assert client.http.get("/api/skills").json()["skills"] == skills


def test_nul_characters_and_huge_numbers_are_400s(client: Client, training_file: str) -> None:
    """What PostgreSQL cannot store or compare never reaches it: a 400 in OpenAI's shape, never a 500."""
    big = 2**64
    http = client.http
    for url in (
        "/v1/files?after=%00",
        f"/v1/files?limit={big}",
        "/v1/files/file-%00",
        f"/v1/fine_tuning/jobs?limit={big}",
        "/v1/fine_tuning/jobs?after=ftjob-%00",
        f"/v1/fine_tuning/jobs/ftjob-{uuid.uuid4().hex}/events?limit={big}",
        f"/v1/fine_tuning/jobs/ftjob-{uuid.uuid4().hex}/checkpoints?limit=-{big}",
    ):
        response = http.get(url)
        assert response.status_code == 400, (url, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    bodies: list[dict[str, Any]] = [
        {"suffix": "a\x00b"},
        {"metadata": {"k\x00": "v"}},
        {"seed": big},
        {"hyperparameters": {"n_epochs": big}},
        {"hyperparameters": {"batch_size": -big}},
    ]
    for extra in bodies:
        response = http.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny-random", "training_file": training_file, **extra}
        )
        assert response.status_code == 400, (extra, response.text)
    nul_content = chat_jsonl(10).replace(b"syrup expert", b"syrup\\u0000expert")
    response = http.post("/v1/files", files={"file": ("nul.jsonl", nul_content)}, data={"purpose": "fine-tune"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file", response.text
    boundary = "fb-boundary"  # by hand: httpx would percent-encode the NUL of the filename
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + chat_jsonl(10)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    named = http.post("/v1/files", content=multipart, headers=headers)
    assert named.status_code == 200 and "\x00" not in named.json()["filename"], named.text
    assert http.delete(f"/v1/files/{named.json()['id']}").status_code == 200


# -- jobs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jobs(client: Client, training_file: str, worker: ServiceProcess, serve: str) -> Iterator[dict[str, str]]:
    """Two jobs started at once: one trains to the end, the other (50 epochs) is cancelled by the next test."""
    trained = client.sdk.fine_tuning.jobs.create(
        model="tiny-random",
        training_file=training_file,
        validation_file=training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
        suffix="Syrup Bot",
        seed=7,
        metadata={"team": "voice"},
    )
    doomed = client.sdk.fine_tuning.jobs.create(
        model="tiny-random", training_file=training_file, hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    yield {"trained": trained.id, "cancelled": doomed.id}


def test_a_job_is_cancelled(client: Client, jobs: dict[str, str]) -> None:
    cancelled = client.sdk.fine_tuning.jobs.cancel(jobs["cancelled"])
    assert cancelled.id == jobs["cancelled"] and cancelled.status in ("cancelled", "running")
    job = wait_for(client.sdk, jobs["cancelled"], {"succeeded", "failed", "cancelled"})
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.error is None
    assert client.sdk.fine_tuning.jobs.checkpoints.list(jobs["cancelled"]).data == []
    with pytest.raises(openai.ConflictError):
        client.sdk.fine_tuning.jobs.cancel(jobs["cancelled"])


def test_a_job_trains_to_succeeded_and_its_model_answers(
    client: Client, training_file: str, jobs: dict[str, str]
) -> None:
    sdk = client.sdk
    created = sdk.fine_tuning.jobs.retrieve(jobs["trained"])
    assert created.object == "fine_tuning.job" and created.model == "tiny-random"
    assert created.training_file == training_file and created.validation_file == training_file
    assert created.seed == 7 and created.metadata == {"team": "voice"} and created.organization_id == client.workspace
    assert created.hyperparameters.n_epochs == 1 and created.hyperparameters.batch_size == 2
    assert created.method is not None and created.method.type == "supervised"
    assert created.skill_id.startswith("ft-syrup-bot-")  # type: ignore[attr-defined]
    skill = client.http.get(f"/api/skills/{created.skill_id}").json()  # type: ignore[attr-defined]
    assert skill["system_prompt"] == SYSTEM and skill["example_count"] == 12

    job = wait_for(sdk, jobs["trained"], {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job
    assert job.error is None and job.fine_tuned_model == f"{created.skill_id}@v1"  # type: ignore[attr-defined]
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.finished_at is not None and job.finished_at >= job.created_at and job.estimated_finish is None

    events = sdk.fine_tuning.jobs.list_events(jobs["trained"], limit=1000).data
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in events]
    assert seqs == sorted(seqs, reverse=True) and seqs[-1] == 1  # newest first, down to the first
    assert all(e.object == "fine_tuning.job.event" and e.level in ("info", "warn", "error") for e in events)
    assert any(e.type == "metrics" and e.data["train_loss"] is not None for e in events)  # type: ignore[index]
    assert "recorded, not trained on" in " ".join(e.message for e in events)  # what validation_file does
    first_two = sdk.fine_tuning.jobs.list_events(jobs["trained"], limit=2)
    assert [e.id for e in first_two.data] == [e.id for e in events[:2]] and first_two.has_more
    after = sdk.fine_tuning.jobs.list_events(jobs["trained"], limit=2, after=first_two.data[-1].id)
    assert [e.id for e in after.data] == [e.id for e in events[2:4]]
    assert [e.id for e in sdk.fine_tuning.jobs.list_events(jobs["trained"])] == [e.id for e in events]  # auto-paging

    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(jobs["trained"]).data
    assert len(checkpoints) == 1
    checkpoint = checkpoints[0]
    assert checkpoint.object == "fine_tuning.job.checkpoint" and checkpoint.fine_tuning_job_id == jobs["trained"]
    assert checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model and checkpoint.step_number >= 1
    assert checkpoint.metrics.train_loss is not None

    answer = sdk.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Tell me about honey"}], max_tokens=8
    )
    assert answer.model == job.fine_tuned_model and answer.choices[0].message.content
    assert job.fine_tuned_model in {m.id for m in sdk.models.list()}


def test_jobs_list_pages_newest_first(client: Client, jobs: dict[str, str]) -> None:
    sdk = client.sdk
    page = sdk.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [jobs["cancelled"]] and page.has_more
    rest = sdk.fine_tuning.jobs.list(limit=1, after=jobs["cancelled"])
    assert [j.id for j in rest.data] == [jobs["trained"]] and not rest.has_more
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1)] == [jobs["cancelled"], jobs["trained"]]  # auto-paging
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.list(after="ftjob-unknown")
    assert _error(caught)["param"] == "after"
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.list(limit=2**64)


def test_a_refusal_after_the_skill_was_made_leaves_nothing_behind(client: Client, jobs: dict[str, str]) -> None:
    """After the jobs above (tiny-random's tokenizer is cached by then, so the API's chat-template check
    runs): an answer longer than max_seq_length is refused by the training service, after the job's skill
    was written in the same transaction; the skill goes with the refusal."""
    wait_for(client.sdk, jobs["trained"], {"succeeded", "failed", "cancelled"})
    lines = chat_jsonl(10).decode().splitlines()
    long_answer = " ".join(f"syrup{n}" for n in range(1500))
    lines[3] = json.dumps(
        {"messages": [{"role": "user", "content": "Go on"}, {"role": "assistant", "content": long_answer}]}
    )
    upload = client.sdk.files.create(file=("long.jsonl", "\n".join(lines).encode()), purpose="fine-tune")
    skills = client.http.get("/api/skills").json()["skills"]
    listed = [j.id for j in client.sdk.fine_tuning.jobs.list()]
    with pytest.raises(openai.BadRequestError) as caught:
        client.sdk.fine_tuning.jobs.create(model="tiny-random", training_file=upload.id)
    error = _error(caught)
    assert (error["param"], error["code"]) == ("training_file", "template_check_failed"), error
    assert "max_seq_length" in error["message"]
    assert client.http.get("/api/skills").json()["skills"] == skills
    assert [j.id for j in client.sdk.fine_tuning.jobs.list()] == listed


def test_the_docs_sdk_script_runs_unchanged_but_for_url_and_key(
    client: Client,
    jobs: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The script of docs/openai-fine-tuning.md, its BASE_URL and API_KEY lines set to this server's (and
    MODEL to tiny-random, for time). Last: it adds a job to the workspace the list test counts."""
    text = (REPO_ROOT / "docs" / "openai-fine-tuning.md").read_text()
    script = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert script is not None
    source = script[1]
    replaced = {
        "BASE_URL": repr(str(client.sdk.base_url).rstrip("/")),
        "API_KEY": repr(client.sdk.api_key),
        "MODEL": repr("tiny-random"),
    }
    for name, value in replaced.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, count=1, flags=re.MULTILINE)
        assert count == 1, name
    monkeypatch.chdir(tmp_path)
    exec(compile(source, "docs/openai-fine-tuning.md", "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    done = [
        n for n, line in enumerate(lines) if re.fullmatch(r"succeeded ft-syrups-[0-9a-f]{12}@v1 [0-9]+ tokens", line)
    ]
    assert done and lines[done[0] + 1 :], printed  # then the fine-tuned model's answer
