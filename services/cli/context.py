"""What every client command shares: the server and key chosen by the global options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from services.cli.client import Api, default_url, resolve_key


@dataclass
class Target:
    url: str | None = None
    api_key: str | None = None


def api(ctx: typer.Context, url: str | None = None, timeout: float | None = None) -> Api:
    """An Api for this invocation: a command's own --url wins over the global one, then the environment."""
    target = ctx.find_object(Target) or Target()
    chosen = url or target.url or default_url()
    client = (
        Api(chosen, resolve_key(target.api_key))
        if timeout is None
        else Api(chosen, resolve_key(target.api_key), timeout)
    )
    ctx.call_on_close(client.close)
    return client


JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON (no colours, no tables).")]
