"""Exports end to end: a real tiny-random training, then export jobs through the API and a real worker.

Real API server, worker process, PostgreSQL and Redis; the exporter runs PEFT's merge, transformers
and (for GGUF) llama.cpp's own converter and llama-cpp-python. Each format's happy path, a corrupted
adapter failing verification with nothing left behind, cancel, resumable download with its sha256,
workspace isolation, removal with the adapter.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import keys
from shared.settings import Settings
from tests.conftest import ServiceProcess, auth, create_skill, make_key, wait_for_status

TINY = {
    "preset": "quick",
    "base_model": "tiny-random",
    "max_steps": 4,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 128,
    # tiny-random's LoRA starts at B = 0 and moves little in a few steps at the preset's rate; a larger one
    # gives the adapter an effect on the logits that verification can tell from the base's.
    "learning_rate": 0.01,
}
SYSTEM_PROMPT = "You are a terse sweetener expert."


async def trained_adapter(
    client: httpx.AsyncClient, skill_id: str, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    await create_skill(client, skill_id, system_prompt=SYSTEM_PROMPT)
    started = await client.post(f"/api/train-skill/{skill_id}", json={"config": config or TINY})
    assert started.status_code == 202, started.text
    status = await wait_for_status(client, started.json()["job_id"], {"completed", "failed"}, timeout=600)
    assert status["status"] == "completed", status
    adapters = (await client.get("/api/adapters", params={"skill_id": skill_id})).json()["adapters"]
    return dict(adapters[0])


async def wait_export(
    client: httpx.AsyncClient, export_id: str, statuses: set[str], timeout: float = 600
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await client.get(f"/api/exports/{export_id}")).json()
        if body.get("status") in statuses:
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"export {export_id} never reached {statuses}; last: {body}")


async def stream(api_url: str, path: str, after_seq: int = 0) -> list[dict[str, Any]]:
    url = api_url.replace("http://", "ws://") + f"{path}?after_seq={after_seq}"
    events = []
    async with asyncio.timeout(600), websockets.connect(url, additional_headers=auth()) as ws:
        async for message in ws:
            events.append(json.loads(message))
    return events


def leftovers(settings: Settings, skill_id: str, export_id: str) -> list[Path]:
    root = settings.adapters_dir / skill_id
    return [*root.glob(f".staging/export-{export_id}*"), *root.glob(f"exports/{export_id}")]


async def test_merged_and_peft_exports_verified_downloadable_and_scoped(
    client: httpx.AsyncClient, api_url: str, worker: ServiceProcess, migrated: Settings, engine: AsyncEngine
) -> None:
    adapter = await trained_adapter(client, "export-merged")
    posted = await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "merged"})
    assert posted.status_code == 202, posted.text
    export = posted.json()
    assert export["status"] == "queued" and export["files"] == []
    events = await stream(api_url, export["stream_url"])
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "the training stream's contract: no gaps, no duplicates"
    types = [e["type"] for e in events]
    assert types[0] == "status" and types[-1] == "complete" and "progress" in types, types
    assert {e["job_id"] for e in events} == {export["id"]}

    done = await wait_export(client, export["id"], {"completed"}, timeout=30)
    merged = done["verification"]["merged"]
    assert merged["passed"] and merged["max_abs_logit_diff"] <= merged["atol"] == 1e-3
    assert merged["adapter_effect_max_abs_logit"] > merged["atol"]  # the LoRA is in there, not just the base
    names = {f["name"] for f in done["files"]}
    expected = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"}
    assert expected <= names, names
    files = {f["name"]: f for f in done["files"]}

    generation = (await client.get(files["generation_config.json"]["url"])).json()
    tokenizer = json.loads((await client.get(files["tokenizer.json"]["url"])).content)
    im_end = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|im_end|>")
    eos = generation["eos_token_id"]
    assert (eos if isinstance(eos, int) else eos[0]) == im_end, "generation stops at the template's end of turn"

    # Download with its checksum, then resume it from the middle with a Range request.
    entry = files["model.safetensors"]
    full = await client.get(entry["url"])
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(full.content).hexdigest() == entry["sha256"] == full.headers["x-checksum-sha256"]
    assert full.headers["repr-digest"].startswith("sha-256=:") and len(full.content) == entry["size"]
    half = entry["size"] // 2
    rest = await client.get(entry["url"], headers={"Range": f"bytes={half}-", "If-Range": full.headers["etag"]})
    assert (
        rest.status_code == 206 and rest.headers["content-range"] == f"bytes {half}-{entry['size'] - 1}/{entry['size']}"
    )
    assert hashlib.sha256(full.content[:half] + rest.content).hexdigest() == entry["sha256"]
    past = await client.get(entry["url"], headers={"Range": f"bytes={entry['size'] + 10}-"})
    assert past.status_code == 416
    assert (await client.get(f"/api/exports/{export['id']}/files/..%2F..%2Fadapter_config.json")).status_code == 404

    # peft: the archive of today, as an export job.
    peft = (await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "peft"})).json()
    peft_done = await wait_export(client, peft["id"], {"completed", "failed"}, timeout=120)
    assert peft_done["status"] == "completed", peft_done
    archive = await client.get(peft_done["files"][0]["url"])
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        members = set(tar.getnames())
    stem = "export-merged-v1"
    assert {f"{stem}/adapter_config.json", f"{stem}/adapter_model.safetensors", f"{stem}/fastbrain.json"} <= members

    # Another workspace sees none of it.
    other = await make_key(engine, "export-other-ws", keys.Scope.ADMIN)
    async with httpx.AsyncClient(base_url=api_url, headers=auth(other), timeout=30) as stranger:
        assert (await stranger.get(f"/api/exports/{export['id']}")).status_code == 404
        assert (await stranger.get(entry["url"])).status_code == 404
        assert (await stranger.get("/api/exports")).json()["exports"] == []
        assert (
            await stranger.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "peft"})
        ).status_code == 404
    listed = (await client.get("/api/exports", params={"adapter_id": adapter["id"]})).json()["exports"]
    assert {e["id"] for e in listed} == {export["id"], peft["id"]}

    # Deleting the adapter removes its exports, rows and files.
    folder = migrated.adapters_dir / "export-merged" / "exports" / export["id"]
    assert folder.is_dir()
    assert (await client.delete(f"/api/adapters/{adapter['id']}")).status_code == 200
    assert (await client.get(f"/api/exports/{export['id']}")).status_code == 404
    assert not folder.exists()


async def test_cancel_and_a_corrupted_adapter_leave_nothing_behind(
    client: httpx.AsyncClient, worker: ServiceProcess, migrated: Settings
) -> None:
    skill_id = "export-broken"
    adapter = await trained_adapter(client, skill_id)

    running = (await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "merged"})).json()
    await wait_export(client, running["id"], {"running"}, timeout=60)
    cancel = await client.post(f"/api/exports/{running['id']}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] in {"running", "cancelled"}, cancel.text
    cancelled = await wait_export(client, running["id"], {"cancelled", "completed", "failed"}, timeout=60)
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["files"] == [] and leftovers(migrated, skill_id, running["id"]) == []
    again = await client.post(f"/api/exports/{running['id']}/cancel")
    assert again.json()["message"] == "The export had already ended"

    # Bit rot in the adapter: NaN in one LoRA matrix. It loads, but verification refuses what it gives.
    from safetensors.torch import load_file, save_file

    weights_path = Path(adapter["storage_path"]) / "adapter_model.safetensors"
    weights = load_file(weights_path)
    name = sorted(weights)[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, weights_path)
    broken = (await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "merged"})).json()
    failed = await wait_export(client, broken["id"], {"completed", "failed", "cancelled"}, timeout=300)
    assert failed["status"] == "failed", failed
    assert failed["error_details"]["code"] == "EXPORT_VERIFICATION_FAILED", failed["error_details"]
    assert "Verification failed" in failed["error_message"]
    assert failed["files"] == [] and leftovers(migrated, skill_id, broken["id"]) == []

    # A file that is not safetensors at all: the export fails at loading, again leaving nothing.
    weights_path.write_bytes(b"not a safetensors file")
    garbage = (await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "merged"})).json()
    failed = await wait_export(client, garbage["id"], {"completed", "failed"}, timeout=300)
    assert failed["status"] == "failed" and failed["error_message"]
    assert leftovers(migrated, skill_id, garbage["id"]) == []


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_gguf_export_matches_the_merged_model_in_llama_cpp(
    client: httpx.AsyncClient, api_url: str, worker: ServiceProcess, migrated: Settings
) -> None:
    pytest.importorskip("llama_cpp", reason="the export extra (llama-cpp-python) is installed by scripts/bootstrap.sh")
    skill_id = "export-gguf"
    adapter = await trained_adapter(client, skill_id)
    posted = await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "gguf"})
    assert posted.status_code == 202, posted.text
    done = await wait_export(client, posted.json()["id"], {"completed", "failed"}, timeout=1200)
    assert done["status"] == "completed", done.get("error_details")
    verification = done["verification"]
    f16 = verification["gguf_f16"]
    assert f16["passed"] and f16["prompt_rendering"] == "identical"
    assert (
        f16["eot_token_id"] == f16["training_end_of_turn_id"] or f16["eos_token_id"] == f16["training_end_of_turn_id"]
    )
    for sample in f16["samples"]:
        assert sample["llama_cpp_tokens"] == sample["pytorch_tokens"]
        assert sample["tokens_compared"] == 16 or sample["pytorch_tokens"] == sample["llama_cpp_tokens"]
    assert verification["gguf_q8_0"]["passed"]
    files = {f["name"]: f for f in done["files"]}
    assert {"export-gguf-v1-f16.gguf", "export-gguf-v1-q8_0.gguf", "Modelfile"} <= set(files), files
    modelfile = (await client.get(files["Modelfile"]["url"])).text
    assert modelfile.startswith("FROM ./export-gguf-v1-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in modelfile
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' in modelfile
    gguf = await client.get(files["export-gguf-v1-q8_0.gguf"]["url"])
    assert hashlib.sha256(gguf.content).hexdigest() == files["export-gguf-v1-q8_0.gguf"]["sha256"]
    assert gguf.content[:4] == b"GGUF"

    # gguf-lora: the LoRA alone for llama.cpp's --lora, with the base GGUF it was verified on.
    posted = await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "gguf-lora"})
    assert posted.status_code == 202, posted.text
    lora = await wait_export(client, posted.json()["id"], {"completed", "failed"}, timeout=1200)
    assert lora["status"] == "completed", lora.get("error_details")
    checked = lora["verification"]["gguf_lora"]
    assert checked["passed"] and checked["lora"] == "export-gguf-v1-lora-f16.gguf"
    for sample in checked["samples"]:
        assert sample["base_plus_lora_tokens"] == sample["merged_gguf_tokens"] and sample["merged_gguf_tokens"]
    assert {f["name"] for f in lora["files"]} == {"tiny-random-f16.gguf", "export-gguf-v1-lora-f16.gguf"}


class FakeHub:
    """A stand-in for the Hugging Face Hub, which these machines cannot reach: a local HTTP server that
    answers the three calls `huggingface_hub` makes to push a folder (create the repo, preupload, commit)
    and records each (path, Authorization header, the files committed with their sha256). It is not the
    Hub: it accepts every file as a regular (non-LFS) upload and checks nothing; the real Hub is documented
    in docs/exports.md, not tested."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.calls: list[dict[str, Any]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call: dict[str, Any] = {"path": self.path, "authorization": self.headers.get("Authorization")}
                hub.calls.append(call)
                if self.path.startswith("/api/repos/create"):
                    data = json.loads(body)
                    answer: dict[str, Any] = {"url": f"{hub.url}/{data.get('organization')}/{data['name']}"}
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    answer = {
                        "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    }
                elif "/commit/" in self.path:
                    import base64

                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    call["files"] = {
                        line["value"]["path"]: hashlib.sha256(base64.b64decode(line["value"]["content"])).hexdigest()
                        for line in lines
                        if line["key"] == "file"
                    }
                    repo = self.path.removeprefix("/api/models/").split("/commit/")[0]
                    answer = {"commitUrl": f"{hub.url}/{repo}/commit/1234", "commitOid": "1234" * 10, "success": True}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                payload = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_hub_export_pushes_the_adapter_and_never_keeps_the_token(
    client: httpx.AsyncClient, worker: ServiceProcess, engine: AsyncEngine
) -> None:
    from sqlalchemy import text

    hub = FakeHub()
    adapter = await trained_adapter(client, "export-hub")
    token = "hf_" + "s3cr3t" * 6
    body = {"format": "hub", "repo_id": "someone/export-hub", "endpoint": hub.url, "token": token}
    posted = await client.post(f"/api/adapters/{adapter['id']}/exports", json=body)
    assert posted.status_code == 202, posted.text
    assert token not in posted.text
    done = await wait_export(client, posted.json()["id"], {"completed", "failed"}, timeout=300)
    assert done["status"] == "completed", done
    pushed = done["verification"]["hub"]
    assert pushed["repo_id"] == "someone/export-hub" and pushed["commit_oid"] == "1234" * 10
    paths = [c["path"] for c in hub.calls]
    assert paths[0] == "/api/repos/create" and any("/preupload/main" in p for p in paths), paths
    assert paths[-1] == "/api/models/someone/export-hub/commit/main", paths
    assert {c["authorization"] for c in hub.calls} == {f"Bearer {token}"}
    committed = hub.calls[-1]["files"]
    local = Path(adapter["storage_path"]) / "adapter_model.safetensors"
    assert committed["adapter_model.safetensors"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert {"adapter_config.json", "fastbrain.json"} <= set(committed)
    # The token is nowhere in the database, the events or the worker's log.
    async with engine.connect() as conn:
        for table in ("fb_exports", "fb_export_events"):
            rows = (await conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t"))).scalars().all()
            assert rows and not any(token in row for row in rows), table
    assert token not in worker.tail(10_000)
    # Without repo_id a hub export is refused before anything is queued.
    refused = await client.post(f"/api/adapters/{adapter['id']}/exports", json={"format": "hub"})
    assert refused.status_code == 422
