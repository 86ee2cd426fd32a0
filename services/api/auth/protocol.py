"""The WebSocket subprotocols a browser offers: `fastbrain`, and its ticket as `fastbrain.ticket.<ticket>`."""

from __future__ import annotations

from starlette.requests import HTTPConnection

PROTOCOL = "fastbrain"
TICKET_PROTOCOL = "fastbrain.ticket."


def offered_ticket(connection: HTTPConnection) -> str | None:
    for protocol in connection.scope.get("subprotocols") or ():
        if isinstance(protocol, str) and protocol.startswith(TICKET_PROTOCOL) and len(protocol) < 200:
            return protocol[len(TICKET_PROTOCOL) :]
    return None


def accepted_subprotocol(connection: HTTPConnection) -> str | None:
    """What to answer the handshake with: `fastbrain` when the client offered it (a browser
    must get one of its offers back, or it drops the socket)."""
    return PROTOCOL if PROTOCOL in (connection.scope.get("subprotocols") or ()) else None
