"""API keys and workspaces: create, look up, list, revoke.

A key is `fb_` plus 43 URL-safe characters (256 random bits). Only its SHA-256 is
stored: a key that random cannot be guessed from its hash, so a slow password hash
would only cost every request time. Revocation is a timestamp; lookups ignore revoked
keys, and every request looks its key up, so a revoked key stops working at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import TextClause, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import ApiKey, Workspace

KEY_PREFIX = "fb_"
KEY_BYTES = 32
SHOWN_CHARS = 10  # `fb_` and 7 more: enough to tell keys apart in a list, far too few to use
DEFAULT_WORKSPACE = "default"
WORKSPACE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Scope(StrEnum):
    """Each scope includes the ones before it: admin ⊃ train ⊃ read."""

    READ = "read"
    TRAIN = "train"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Scope).index(self)

    def allows(self, needed: Scope) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never its secret), its workspace and its scope."""

    key_id: uuid.UUID
    workspace_id: str
    scope: Scope


@dataclass(frozen=True)
class CreatedKey:
    secret: str  # shown once
    key: ApiKey


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX) and 40 <= len(secret) <= 64 and secret.isascii()


def valid_workspace_id(workspace_id: str) -> bool:
    return bool(WORKSPACE_ID.match(workspace_id))


async def ensure_workspace(session: AsyncSession, workspace_id: str) -> Workspace:
    if not valid_workspace_id(workspace_id):
        raise ValueError(
            f"workspace '{workspace_id}': use 1 to 63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    workspace = await session.get(Workspace, workspace_id)
    if workspace is None:
        workspace = Workspace(id=workspace_id)
        session.add(workspace)
        await session.flush()
    return workspace


async def create_key(session: AsyncSession, workspace_id: str, scope: Scope, name: str) -> CreatedKey:
    await ensure_workspace(session, workspace_id)
    secret = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    key = ApiKey(
        workspace_id=workspace_id,
        name=name,
        scope=scope.value,
        prefix=secret[:SHOWN_CHARS],
        secret_hash=hash_secret(secret),
    )
    session.add(key)
    await session.flush()
    await session.refresh(key)
    return CreatedKey(secret=secret, key=key)


# One round trip per request: find the live key and, at most once a minute, note its use
# (a write per request would churn the row for a figure `keys list` shows to the minute).
def _live_key_query(match: str) -> TextClause:
    return text(
        f"""
    WITH k AS (
        SELECT id, workspace_id, scope, last_used_at FROM fb_api_keys
        WHERE {match} AND revoked_at IS NULL
    ), used AS (
        UPDATE fb_api_keys SET last_used_at = now() FROM k
        WHERE fb_api_keys.id = k.id AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
    )
    SELECT id, workspace_id, scope FROM k
    """
    )


_BY_SECRET = _live_key_query("secret_hash = :value")
_BY_ID = _live_key_query("id = :value")


async def _live_key(session: AsyncSession, query: TextClause, value: object) -> Principal | None:
    row = (await session.execute(query, {"value": value})).one_or_none()
    if row is None:
        return None
    return Principal(key_id=row.id, workspace_id=row.workspace_id, scope=Scope(row.scope))


async def authenticate(session: AsyncSession, secret: str) -> Principal | None:
    """The live key with this secret, or None (unknown, malformed or revoked: the caller can't tell which)."""
    if not looks_like_key(secret):
        return None
    return await _live_key(session, _BY_SECRET, hash_secret(secret))


async def live_principal(session: AsyncSession, key_id: uuid.UUID) -> Principal | None:
    """The key with this id as it is now (a stream ticket's key may have been revoked since)."""
    return await _live_key(session, _BY_ID, key_id)


async def list_keys(session: AsyncSession, workspace_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.workspace_id, ApiKey.created_at)
    if workspace_id is not None:
        query = query.where(ApiKey.workspace_id == workspace_id)
    return list(await session.scalars(query))


async def revoke_key(session: AsyncSession, ident: str) -> ApiKey | None:
    """Revoke by id or by the shown prefix (when it names exactly one live key)."""
    try:
        condition = ApiKey.id == uuid.UUID(ident)
    except ValueError:
        condition = ApiKey.prefix == ident
    keys = list(await session.scalars(select(ApiKey).where(condition, ApiKey.revoked_at.is_(None))))
    if len(keys) != 1:
        return None
    await session.execute(update(ApiKey).where(ApiKey.id == keys[0].id).values(revoked_at=func.now()))
    await session.refresh(keys[0])
    return keys[0]


async def set_budget(session: AsyncSession, workspace_id: str, monthly_usd: float | None) -> Workspace:
    workspace = await ensure_workspace(session, workspace_id)
    workspace.monthly_budget_usd = monthly_usd
    await session.flush()
    return workspace
