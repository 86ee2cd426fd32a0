"""Stream tickets: how a browser, which cannot set headers on a WebSocket, authenticates one.

`POST /api/stream-tickets` (with the key, as any request) returns a random ticket that
Redis keeps for `TTL_SECONDS`, bound to the key's id. The browser offers it as a
WebSocket subprotocol, `new WebSocket(url, ["fastbrain", "fastbrain.ticket." + ticket])`;
the server takes it once (GETDEL), checks the key is still live, and accepts the
socket with the subprotocol `fastbrain`. A ticket in a subprotocol never appears in an
access log or a proxy's URL log, as a query string would; it is stored only hashed.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import TYPE_CHECKING

from services.api.auth.protocol import PROTOCOL, TICKET_PROTOCOL
from shared.db.keys import Principal, live_principal

if TYPE_CHECKING:
    from services.api.deps import AppState

TTL_SECONDS = 60


def _redis_key(ticket: str) -> str:
    return f"fastbrain:stream-ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"


async def issue(state: AppState, principal: Principal) -> str:
    ticket = secrets.token_urlsafe(32)
    await state.redis.set(_redis_key(ticket), str(principal.key_id), ex=TTL_SECONDS)
    return ticket


def protocols(ticket: str) -> list[str]:
    """The subprotocols a browser offers with `ticket`: `new WebSocket(url, protocols(ticket))`."""
    return [PROTOCOL, TICKET_PROTOCOL + ticket]


async def redeem(state: AppState, ticket: str) -> Principal | None:
    key_id = await state.redis.getdel(_redis_key(ticket))
    if key_id is None:
        return None
    async with state.system_sessionmaker() as session, session.begin():
        return await live_principal(session, uuid.UUID(key_id.decode()))
