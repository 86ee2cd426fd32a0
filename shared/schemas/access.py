"""Response bodies of the access endpoints: the caller's workspace and stream tickets."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class WorkspaceLimits(BaseModel):
    requests_per_minute_per_key: int
    websockets_per_key: int
    max_concurrent_jobs: int
    max_examples_per_skill: int
    max_request_body_bytes: int


class WorkspaceBudget(BaseModel):
    monthly_usd: float | None = Field(description="The workspace's monthly GPU spend cap; null: none.")
    spent_usd: float = Field(description="Billed GPU spend this calendar month (UTC), failed tries included.")
    remaining_usd: float | None
    resets_at: datetime


class Me(BaseModel):
    workspace_id: str
    scope: Literal["read", "train", "admin"]
    key_id: str
    active_jobs: int
    budget: WorkspaceBudget
    limits: WorkspaceLimits


class StreamTicket(BaseModel):
    ticket: str = Field(description="One use, within `expires_in` seconds.")
    expires_in: int
    protocols: list[str] = Field(
        description="Pass as the WebSocket's subprotocols: `new WebSocket(url, protocols)`.",
        examples=[["fastbrain", "fastbrain.ticket.<ticket>"]],
    )
