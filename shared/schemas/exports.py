"""Exports: what a client asks for, what it gets back, and the spec the exporter runs from."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

ExportFormat = Literal["peft", "merged", "gguf", "gguf-lora", "hub"]
FORMATS: tuple[str, ...] = ("peft", "merged", "gguf", "gguf-lora", "hub")
GgufType = Literal["f16", "q8_0"]
DEFAULT_GGUF_TYPES: tuple[GgufType, ...] = ("f16", "q8_0")

# Merged vs base + adapter, fp32, on every position of the held-out prompts: the largest |Δ logit| allowed.
MERGED_LOGITS_ATOL = 1e-3
# GGUF f16: this many greedy tokens must equal the merged PyTorch model's.
GGUF_GREEDY_TOKENS = 16


class ExportRequest(BaseModel):
    """`POST /api/adapters/{id}/exports`."""

    format: ExportFormat = Field(
        description="`peft`: the adapter files and fastbrain.json as .tar.gz. `merged`: base + LoRA merged into a "
        "full Hugging Face folder (safetensors, tokenizer, chat template, generation_config ending at the "
        "end-of-turn token), verified by logits. `gguf`: the merged model as GGUF (`quantizations`) with an "
        "Ollama Modelfile, verified in llama.cpp. `gguf-lora`: the LoRA alone as a GGUF adapter for llama.cpp's "
        "`--lora`, with the base model's f16 GGUF, verified: base + LoRA in llama.cpp answers as the merged GGUF. "
        "`hub`: push the PEFT adapter (or, `push: merged`, the verified merged model) to a Hugging Face Hub repository."
    )
    quantizations: list[GgufType] = Field(
        default_factory=lambda: list(DEFAULT_GGUF_TYPES),
        min_length=1,
        description="gguf only: the GGUF types to write. f16 is verified on 16 greedy tokens; q8_0 on the first.",
    )
    repo_id: str | None = Field(
        None, max_length=200, pattern=r"^[\w.-]+(/[\w.-]+)?$", description="hub only: the repository, `user/name`."
    )
    push: Literal["peft", "merged"] = Field("peft", description="hub only: what to push.")
    private: bool = Field(True, description="hub only: create the repository private (an existing one is kept).")
    endpoint: str | None = Field(
        None,
        max_length=500,
        description="hub only: the Hub's URL; default the workers' HF_ENDPOINT, else huggingface.co.",
    )
    token: str | None = Field(
        None,
        max_length=500,
        description="hub only: a Hub token with write access; default the workers' HF_TOKEN. Handed to the worker "
        "for this one export through Redis (expires in an hour, deleted when read); never written to the database, "
        "events or logs, and never answered back.",
    )
    prompt: str | None = Field(
        None,
        max_length=4000,
        description="The held-out prompt verification runs on; default: the first held-out prompt of the "
        "adapter's training evaluation.",
    )

    @model_validator(mode="after")
    def _hub_needs_a_repo(self) -> ExportRequest:
        if self.format == "hub" and not self.repo_id:
            raise ValueError("a hub export needs repo_id (user/name)")
        return self


class ExportFile(BaseModel):
    name: str
    size: int
    sha256: str
    url: str | None = None


class ExportOut(BaseModel):
    """An export job: its state, its files once verified, and what verification measured."""

    id: uuid.UUID
    adapter_id: uuid.UUID
    skill_id: str
    format: str
    options: dict[str, Any]
    status: str
    progress: float
    stage: str | None = None
    files: list[ExportFile] = []
    verification: dict[str, Any] | None = None
    error_message: str | None = None
    error_details: dict[str, Any] | None = None
    stream_url: str
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None


class ExportList(BaseModel):
    exports: list[ExportOut]


class ExportCancelled(BaseModel):
    export_id: uuid.UUID
    status: str | None
    message: str


class ExportSpec(BaseModel):
    """Everything the exporter subprocess needs (it reads no database): written by the worker as JSON."""

    export_id: str
    format: ExportFormat
    adapter_dir: str
    base_model: str
    models_dir: str
    output_dir: str  # a staging folder, renamed into place only once everything is verified
    name: str  # file stem: `<skill>-v<version>`
    system_prompt: str
    prompts: list[str]
    manifest: dict[str, Any] = {}
    quantizations: list[GgufType] = ["f16", "q8_0"]
    logits_atol: float = MERGED_LOGITS_ATOL
    greedy_tokens: int = GGUF_GREEDY_TOKENS
    hub: dict[str, Any] | None = None  # repo_id, push, private, endpoint: never the token
