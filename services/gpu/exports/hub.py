"""`hub`: push the PEFT adapter, or the merged model once verified, to a Hugging Face Hub repository.

`huggingface_hub`'s `create_repo` + `upload_folder` (one commit). The token comes from the exporter's
environment only (`HF_TOKEN`: the worker's own, or the request's handed over for this one run), never
from its spec file, and is never printed; the endpoint is the request's or `HF_ENDPOINT`. Nothing stays
on this server: the folder pushed is built in the export's staging folder and removed with it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from services.gpu.exports import merged as merging
from services.gpu.exports.merged import Emit
from shared.schemas.exports import ExportSpec


def build(spec: ExportSpec, out: Path, emit: Emit) -> dict[str, Any]:
    from huggingface_hub import HfApi

    hub = spec.hub
    if hub is None or not hub.get("repo_id"):
        raise ValueError("a hub export needs `repo_id`")
    work = out / ".push"
    verification: dict[str, Any] = {}
    if hub.get("push", "peft") == "merged":
        verification = merging.build(spec, work, emit).verification
    else:
        emit(stage="prepare", progress=20, message="Collecting the adapter files")
        shutil.copytree(spec.adapter_dir, work)
        (work / "fastbrain.json").write_text(json.dumps(spec.manifest, indent=2, default=str) + "\n")
    from huggingface_hub import constants

    # The exporter loads models offline (services/gpu/models.py sets HF_HUB_OFFLINE); the push is the one
    # deliberate request to a Hub, so it alone is let through.
    constants.HF_HUB_OFFLINE = False
    endpoint = hub.get("endpoint") or os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    emit(stage="upload", progress=70, message=f"Pushing to {hub['repo_id']} on {endpoint or 'huggingface.co'}")
    repo = api.create_repo(hub["repo_id"], private=bool(hub.get("private", True)), exist_ok=True)
    commit = api.upload_folder(
        repo_id=hub["repo_id"],
        folder_path=str(work),
        commit_message=f"Fast Brain export: {spec.name} ({hub.get('push', 'peft')})",
    )
    pushed = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    shutil.rmtree(work, ignore_errors=True)
    verification["hub"] = {
        "repo_id": hub["repo_id"],
        "repo_url": str(repo),
        "push": hub.get("push", "peft"),
        "commit_url": commit.commit_url,
        "commit_oid": commit.oid,
        "files": pushed,
        "passed": True,
    }
    return verification
