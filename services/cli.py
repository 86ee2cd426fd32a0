"""`fastbrain`: run the whole service for development, or each part for production.

fastbrain dev                 API + worker (+ embedded PostgreSQL/Redis when unset), demo skill
fastbrain api --host H --port P
fastbrain worker
fastbrain migrate [--revision R | --downgrade R]
"""

from __future__ import annotations

import argparse
import sys

from shared.logging import configure_logging
from shared.settings import Settings


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from services.api.app import create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower())


def _worker(_: argparse.Namespace) -> None:
    from services.worker.main import run_worker

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    run_worker(settings)


def _migrate(args: argparse.Namespace) -> None:
    from shared.db import migrate

    database_url = Settings().database_url
    if not database_url:
        sys.exit("FASTBRAIN_DATABASE_URL must be set to run migrations.")
    if args.downgrade:
        migrate.downgrade(database_url, args.downgrade)
        print(f"Downgraded to {args.downgrade}")
    else:
        migrate.upgrade(database_url, args.revision)
        print(f"Migrated to {args.revision}")


def _dev(args: argparse.Namespace) -> None:
    from services.dev import run_dev

    run_dev(host=args.host, port=args.port, demo=not args.no_demo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fastbrain", description="Fast Brain: one-click LoRA training for skills.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="Run everything for development (embedded services when none configured).")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--no-demo", action="store_true", help="Do not load the demo skill.")
    dev.set_defaults(handler=_dev)

    api = sub.add_parser("api", help="Run the HTTP/WebSocket API.")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(handler=_api)

    worker = sub.add_parser("worker", help="Run a training worker.")
    worker.set_defaults(handler=_worker)

    mig = sub.add_parser("migrate", help="Apply database migrations.")
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="Downgrade to REVISION (e.g. base).")
    mig.set_defaults(handler=_migrate)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
