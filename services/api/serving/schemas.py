"""OpenAI's chat-completion and model shapes, as much of them as Fast Brain serves.

Parameters Fast Brain does not implement (several choices, tools, log-probabilities,
penalties, JSON mode) are refused with a 400 naming the parameter rather than ignored,
so a client never gets an answer it did not ask for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas.text import NoNulStrings

MAX_TOKENS_LIMIT = 4096
INT64 = 2**63


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `name`: accepted, not used

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="`developer` is OpenAI's newer name for `system` and is treated as one."
    )
    content: str | list[TextPart] = Field(description="Text, or a list of text parts (joined).")

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(NoNulStrings):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": True})

    model: str = Field(
        min_length=1,
        max_length=300,
        description="A skill id (its active version), `skill_id@v3` (a pinned version), or a base model id.",
        examples=["molasses-alchemist"],
    )
    messages: list[InputMessage] = Field(
        min_length=1,
        max_length=512,
        description="The conversation; without a system message the skill's system prompt is used.",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT, description="Default 256.")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT, description="Same as max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; 0 is greedy (deterministic).")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; the answer ends before the first.")
    seed: int | None = Field(None, ge=-INT64, lt=INT64, description="Same seed and parameters: same answer.")
    n: int | None = Field(None, ge=1, le=1, description="Only 1 is supported.")
    user: str | None = None
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported; only 0.")
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0, description="Not supported; only 0.")
    logprobs: bool | None = Field(None, description="Not supported; only false.")
    tools: list[Any] | None = Field(None, max_length=0, description="Not supported.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence cannot be empty")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("log-probabilities are not supported")
        return value

    @model_validator(mode="after")
    def _one_length(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; give one")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def token_limit(self) -> int:
        return self.max_tokens or self.max_completion_tokens or 256


class OutputMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: OutputMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str = Field(examples=["chatcmpl-3f2a"])
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Model(BaseModel):
    id: str = Field(examples=["molasses-alchemist@v2"])
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="The workspace for skills; `fastbrain` for base models.")
    kind: Literal["skill", "skill_version", "base"] = Field(description="Fast Brain: what the id names.")
    base_model: str
    skill_id: str | None = None
    version: int | None = None
    adapter_id: str | None = None
    active: bool | None = Field(None, description="For a version: whether it is the skill's active one.")
    eval_loss: float | None = Field(None, description="For a version: its held-out loss after training.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
