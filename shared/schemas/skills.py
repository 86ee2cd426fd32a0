"""Skill request and response bodies (the spec's HIVE215 format)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.schemas.text import NoNulStrings

SKILL_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_TEXT = 20_000
MAX_HISTORY = 200
# Characters per user or assistant turn: `Settings.max_turn_chars` (FASTBRAIN_MAX_TURN_CHARS). Read from the
# environment here, once, because the request schemas are built with it and `shared.schemas` ships to Modal
# without the settings; a test keeps the two equal.
MAX_TURN_CHARS = int(os.environ.get("FASTBRAIN_MAX_TURN_CHARS") or MAX_TEXT)
# Validation context for examples read back from the database: a limit lowered since they were stored
# must not make an existing skill unreadable (`Conversation.model_validate(row, context=STORED)`).
STORED: dict[str, Any] = {"stored": True}


class Exchange(NoNulStrings):
    """One user message and the answer the skill gives to it."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(
        min_length=1, json_schema_extra={"maxLength": MAX_TURN_CHARS}, examples=["What is blackstrap molasses?"]
    )
    assistant: str = Field(
        min_length=1, json_schema_extra={"maxLength": MAX_TURN_CHARS}, examples=["Blackstrap is the third boil..."]
    )

    @field_validator("user", "assistant")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if len(value) > MAX_TURN_CHARS and not (info.context or {}).get("stored"):
            raise ValueError(
                f"is {len(value)} characters; a turn may have at most {MAX_TURN_CHARS} (FASTBRAIN_MAX_TURN_CHARS)"
            )
        return value


class Conversation(Exchange):
    """One example: what a user says and what the skill answers (`user`, `assistant`).

    A multi-turn example keeps its final exchange in `user`/`assistant` and the
    earlier ones, in order, in `history`; the trainer learns every assistant turn.
    An empty `history` is left out of the JSON.
    """

    history: list[Exchange] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        exclude_if=lambda value: not value,
        description="Earlier exchanges of the same conversation, oldest first (multi-turn examples).",
    )


class SkillCreate(NoNulStrings):
    model_config = ConfigDict(extra="forbid")

    skill_id: str = Field(
        pattern=SKILL_ID_PATTERN,
        description="Lowercase letters, digits, '-' and '_', up to 63 characters.",
        examples=["molasses-master-expert"],
    )
    name: str = Field(min_length=1, max_length=200)
    system_prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    description: str | None = Field(None, max_length=2_000)
    knowledge_items: list[Any] = Field(default_factory=list)
    conversations: list[Conversation] = Field(
        default_factory=list, description="At most `FASTBRAIN_MAX_EXAMPLES_PER_SKILL` (50,000 by default); more: 422."
    )


class SkillUpdate(NoNulStrings):
    """Fields to change; `conversations`, when given, replaces all examples."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    description: str | None = Field(None, max_length=2_000)
    knowledge_items: list[Any] | None = None
    conversations: list[Conversation] | None = Field(
        None, description="At most `FASTBRAIN_MAX_EXAMPLES_PER_SKILL` (50,000 by default); more: 422."
    )


class ExamplesAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversations: list[Conversation] = Field(
        min_length=1, description="Added to the skill's; the total may be at most `FASTBRAIN_MAX_EXAMPLES_PER_SKILL`."
    )


class ExamplesAppended(BaseModel):
    skill_id: str
    added: int
    example_count: int


class ExamplesImported(ExamplesAppended):
    """The result of importing a training-data file (all of it, or nothing on error)."""

    format: str = Field(examples=["openai"], description="hive215, openai, sharegpt, alpaca or csv.")
    skipped_duplicates: int = Field(description="Exact duplicates (of existing or earlier examples) not added.")
    warnings: list[str] = Field(default_factory=list)


class SkillSummary(BaseModel):
    skill_id: str
    name: str
    description: str | None
    example_count: int
    active_adapter_version: int | None
    created_at: datetime
    updated_at: datetime


class SkillOut(SkillSummary):
    system_prompt: str
    knowledge_items: list[Any]
    conversations: list[Conversation]


class SkillList(BaseModel):
    skills: list[SkillSummary]
