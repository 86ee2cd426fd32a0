"""What the API asks the inference engine (`fastbrain serve`) and what the engine streams back.

The API resolves a model name to a base model and an adapter (a database question) and
sends one `GenerateRequest`; the engine answers with newline-delimited JSON events:
`start` (prompt token count), `delta` (text), then `done` (finish reason, token count)
or `error`. Both sides import this module; neither imports the other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class AdapterRef(BaseModel):
    """A trained adapter on the engine's storage: `name` is its stable key (the adapter id)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1, description="The adapter folder (adapters/{skill}/v{n}) under the data dir.")
    remote_ref: str | None = Field(
        None, description="Its copy on the Modal Volume (`{skill}/jobs/{job}-a{n}`), when it trained on Modal."
    )


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy (deterministic).")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str
    adapter: AdapterRef | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    sampling: Sampling = Field(default_factory=Sampling)
    queue_key: str = Field(description="Requests with the same key share one place in the fair rotation.")


class StartEvent(BaseModel):
    type: Literal["start"] = "start"
    prompt_tokens: int


class DeltaEvent(BaseModel):
    type: Literal["delta"] = "delta"
    text: str


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    finish_reason: FinishReason
    completion_tokens: int


class ErrorEvent(BaseModel):
    """A refusal before generation starts (its HTTP status is `status`) or a failure during it."""

    type: Literal["error"] = "error"
    status: int
    code: str
    message: str


EngineEvent = StartEvent | DeltaEvent | DoneEvent | ErrorEvent
