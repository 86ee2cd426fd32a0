"""`fastbrain keys ...` and `fastbrain workspaces ...`: run on the server, against the database.

They need no running API and no key (whoever can reach the database owns the
installation anyway). The database is `FASTBRAIN_DATABASE_URL`, or, in development,
the embedded one `fastbrain dev` wrote to `<data dir>/dev.env`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import keys, spend
from shared.db.engine import create_engine, create_sessionmaker
from shared.settings import Settings

T = TypeVar("T")
DEV_ENV = "dev.env"


def dev_env_file(settings: Settings) -> Path:
    return settings.data_dir.resolve() / DEV_ENV


def write_dev_env(settings: Settings, database_url: str, redis_url: str) -> None:
    """What `fastbrain dev` started, for the CLI in another terminal (no secrets: socket and port)."""
    path = dev_env_file(settings)
    path.write_text(f"FASTBRAIN_DATABASE_URL={database_url}\nFASTBRAIN_REDIS_URL={redis_url}\n")


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    path = dev_env_file(settings)
    if path.is_file():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if name == "FASTBRAIN_DATABASE_URL" and value:
                return value
    sys.exit("error: set FASTBRAIN_DATABASE_URL, or start `fastbrain dev` (./run.sh) first.")


def local_api_key(settings: Settings | None = None) -> str | None:
    """FASTBRAIN_API_KEY, else the development admin key `fastbrain dev` keeps in <data dir>/admin-key."""
    key = os.environ.get("FASTBRAIN_API_KEY")
    if key:
        return key
    path = (settings or Settings()).admin_key_file
    return path.read_text().strip() if path.is_file() else None


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(database_url(Settings()), pool_size=1, application_name="fastbrain-cli")
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def keys_create(args: argparse.Namespace) -> None:
    if not keys.valid_workspace_id(args.workspace):
        sys.exit(f"error: '{args.workspace}' is not a workspace id: 1 to 63 of a-z, 0-9, '-', '_'.")
    created = _run(lambda s: keys.create_key(s, args.workspace, keys.Scope(args.scope), args.name))
    if args.quiet:
        print(created.secret)
        return
    print(f"Created a '{args.scope}' key for workspace '{args.workspace}' (id {created.key.id}).")
    print("The key, shown once (only its hash is stored):\n")
    print(f"  {created.secret}\n")
    print("Use it as `Authorization: Bearer <key>` (or FASTBRAIN_API_KEY for the CLI).")


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"  # type: ignore[attr-defined]


def keys_list(args: argparse.Namespace) -> None:
    rows = _run(lambda s: keys.list_keys(s, args.workspace))
    if not rows:
        print("No keys." if args.workspace is None else f"No keys in workspace '{args.workspace}'.")
        return
    header = ("ID", "PREFIX", "WORKSPACE", "SCOPE", "NAME", "CREATED", "LAST USED", "REVOKED")
    table = [
        (
            str(k.id),
            k.prefix + "…",
            k.workspace_id,
            k.scope,
            k.name,
            _when(k.created_at),
            _when(k.last_used_at),
            _when(k.revoked_at),
        )
        for k in rows
    ]
    widths = [max(len(str(row[i])) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def keys_revoke(args: argparse.Namespace) -> None:
    revoked = _run(lambda s: keys.revoke_key(s, args.key))
    if revoked is None:
        sys.exit(f"error: no live key with id or prefix '{args.key}' (see `fastbrain keys list`).")
    print(f"Revoked key {revoked.prefix}… ({revoked.id}) of workspace '{revoked.workspace_id}'; it stops working now.")


def workspaces_budget(args: argparse.Namespace) -> None:
    cap = None if args.none else args.monthly_usd
    if cap is None and not args.none:
        sys.exit("error: give --monthly-usd N or --none.")
    if cap is not None and cap < 0:
        sys.exit("error: --monthly-usd must be 0 or more.")

    async def work(session: AsyncSession) -> spend.Budget:
        await keys.set_budget(session, args.workspace, cap)
        return await spend.budget(session, args.workspace)

    budget = _run(work)
    shown = "no cap" if budget.monthly_usd is None else f"${budget.monthly_usd:.2f} a month"
    print(f"Workspace '{args.workspace}': GPU budget {shown}; ${budget.spent_usd:.2f} spent this month.")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys_parser = sub.add_parser("keys", help="Create, list and revoke API keys (on the server, no key needed).")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="Create a key; it is printed once.")
    create.add_argument("--workspace", required=True, help="Its workspace (created if new).")
    create.add_argument(
        "--scope",
        required=True,
        choices=[s.value for s in keys.Scope],
        help="read: look and chat; train: also change skills and train; admin: also tracebacks.",
    )
    create.add_argument("--name", default=os.environ.get("USER", "key"), help="A label for `keys list`.")
    create.add_argument("--quiet", action="store_true", help="Print only the key (for scripts).")
    create.set_defaults(handler=keys_create)
    listing = keys_sub.add_parser("list", help="List keys (never their secrets).")
    listing.add_argument("--workspace", help="Only this workspace's.")
    listing.set_defaults(handler=keys_list)
    revoke = keys_sub.add_parser("revoke", help="Revoke a key by its id or prefix; it stops working at once.")
    revoke.add_argument("key", metavar="ID_OR_PREFIX")
    revoke.set_defaults(handler=keys_revoke)

    workspaces = sub.add_parser("workspaces", help="Workspace settings (on the server).")
    workspaces_sub = workspaces.add_subparsers(dest="workspaces_command", required=True)
    budget = workspaces_sub.add_parser("budget", help="Set a workspace's monthly GPU budget in USD.")
    budget.add_argument("workspace")
    budget.add_argument("--monthly-usd", type=float)
    budget.add_argument("--none", action="store_true", help="Remove the cap.")
    budget.set_defaults(handler=workspaces_budget)
