"""Alembic environment: async engine, URL from the caller or FASTBRAIN_DATABASE_URL."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Connection

from alembic import context
from shared.db.engine import create_engine
from shared.db.models import Base
from shared.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or Settings().database_url
    if not url:
        raise RuntimeError("Set FASTBRAIN_DATABASE_URL to run migrations.")
    return str(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_engine(_url(), pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
