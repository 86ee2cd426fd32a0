"""The server-side commands, on argparse as they always were (run.sh, compose and the tests call them).

fastbrain dev                 API + worker (+ embedded PostgreSQL/Redis when unset), demo skill
fastbrain api --host H --port P
fastbrain worker
fastbrain serve --host H --port P   the inference engine (base models once, adapters hot-swapped)
fastbrain migrate [--revision R | --downgrade R]
fastbrain keys create --workspace W --scope read|train|admin | keys list | keys revoke ID
fastbrain workspaces budget W --monthly-usd N | --none

They run on the server (processes, or the database directly); the HTTP client commands
(skills, train, jobs, adapters, chat) live beside this module and talk to a running API.
"""

from __future__ import annotations

import argparse
import sys

from shared.logging import configure_logging
from shared.settings import Settings


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from services.api.app import WS_PING_INTERVAL_SECONDS, WS_PING_TIMEOUT_SECONDS, create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers propagate to ours, whose handler masks secrets (shared/logging.py)
        ws_ping_interval=WS_PING_INTERVAL_SECONDS,  # a silent WebSocket peer is dropped within 5 s
        ws_ping_timeout=WS_PING_TIMEOUT_SECONDS,
    )


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from services.gpu.serving.server import EngineConfig, create_engine_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    config = EngineConfig(
        models_dir=settings.models_dir,
        adapters_dir=settings.adapters_dir,
        device=settings.engine_device,
        max_adapters=settings.engine_max_adapters,
        max_active=settings.engine_max_active,
        max_queue=settings.engine_max_queue,
        preload=tuple(settings.prepare_models),
        backend=settings.serve_backend,
        modal_app_name=settings.modal_app_name,
    )
    uvicorn.run(
        create_engine_app(config),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,  # one line per token stream says nothing the API's log does not
    )


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
    from services.dev.command import run_dev

    run_dev(host=args.host, port=args.port, demo=not args.no_demo)


# The commands `main` handles; services/cli/__init__.py sends them here untouched.
COMMANDS = {
    "dev": "Run everything for development (embedded services when none configured).",
    "api": "Run the HTTP/WebSocket API.",
    "serve": "Run the inference engine the API's chat and /v1 routes use (internal).",
    "worker": "Run a training worker.",
    "migrate": "Apply database migrations.",
    "keys": "Create, list and revoke API keys (on the server, no key needed).",
    "workspaces": "Workspace settings (on the server).",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fastbrain", description="Fast Brain: one-click LoRA training for skills.")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help=COMMANDS["dev"])
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--no-demo", action="store_true", help="Do not load the demo skill.")
    dev.set_defaults(handler=_dev)

    api = sub.add_parser("api", help=COMMANDS["api"])
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(handler=_api)

    serve = sub.add_parser("serve", help=COMMANDS["serve"])
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser("worker", help=COMMANDS["worker"])
    worker.set_defaults(handler=_worker)

    mig = sub.add_parser("migrate", help=COMMANDS["migrate"])
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="Downgrade to REVISION (e.g. base).")
    mig.set_defaults(handler=_migrate)

    from services.admin.commands import add_parsers

    add_parsers(sub)

    args = parser.parse_args(argv)
    args.handler(args)
