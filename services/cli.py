"""`fastbrain`: run the whole service for development, or each part for production.

fastbrain dev                 API + worker (+ embedded PostgreSQL/Redis when unset), demo skill
fastbrain api --host H --port P
fastbrain worker
fastbrain serve --host H --port P   the inference engine (base models once, adapters hot-swapped)
fastbrain migrate [--revision R | --downgrade R]
fastbrain skills import SKILL FILE [--api URL]   (to a running API; default $FASTBRAIN_API_URL or :8000)
fastbrain keys create --workspace W --scope read|train|admin | keys list | keys revoke ID
fastbrain workspaces budget W --monthly-usd N | --none
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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


DEFAULT_API_URL = "http://127.0.0.1:8000"


def _auth_headers() -> dict[str, str]:
    from services.admin.commands import local_api_key

    key = local_api_key()
    if not key:
        sys.exit("error: set FASTBRAIN_API_KEY (create one with `fastbrain keys create`).")
    return {"Authorization": f"Bearer {key}"}


def _skills_import(args: argparse.Namespace) -> None:
    """Upload a training-data file to a running API; print the summary or every problem."""
    import httpx

    path = Path(args.file)
    if not path.is_file():
        sys.exit(f"error: {path} is not a file")
    url = f"{args.api.rstrip('/')}/api/skills/{args.skill}/examples/import"
    try:
        with path.open("rb") as handle:
            response = httpx.post(url, files={"file": (path.name, handle)}, headers=_auth_headers(), timeout=300)
    except httpx.HTTPError as exc:
        sys.exit(f"error: cannot reach the Fast Brain API at {args.api} ({exc}); is it running? (--api URL)")
    try:
        body = response.json()
    except ValueError:
        sys.exit(f"error: HTTP {response.status_code} from {url}: {response.text[:500]}")
    if response.status_code != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        print(f"error: {error.get('message') or f'HTTP {response.status_code}'}", file=sys.stderr)
        for problem in (error.get("details") or {}).get("problems") or []:
            print(f"  {problem.get('message')}", file=sys.stderr)
        sys.exit(1)
    print(
        f"Imported {body['added']} example{'s' if body['added'] != 1 else ''} into '{body['skill_id']}' "
        f"(format: {body['format']}); the skill now has {body['example_count']}."
    )
    if body.get("skipped_duplicates"):
        print(f"Skipped {body['skipped_duplicates']} exact duplicates.")
    for warning in body.get("warnings") or []:
        print(f"warning: {warning}")


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

    serve = sub.add_parser("serve", help="Run the inference engine the API's chat and /v1 routes use (internal).")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100)
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser("worker", help="Run a training worker.")
    worker.set_defaults(handler=_worker)

    mig = sub.add_parser("migrate", help="Apply database migrations.")
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="Downgrade to REVISION (e.g. base).")
    mig.set_defaults(handler=_migrate)

    skills = sub.add_parser("skills", help="Work with skills on a running API.")
    skills_sub = skills.add_subparsers(dest="skills_command", required=True)
    skills_import = skills_sub.add_parser(
        "import",
        help="Import examples from a file: HIVE215 JSON, OpenAI chat JSONL, ShareGPT, Alpaca or CSV.",
        description="Append every example of FILE to SKILL, or none if any line or row has a problem.",
    )
    skills_import.add_argument("skill", metavar="SKILL", help="The skill id.")
    skills_import.add_argument("file", metavar="FILE", help="The training-data file.")
    skills_import.add_argument(
        "--api",
        default=os.environ.get("FASTBRAIN_API_URL", DEFAULT_API_URL),
        help="The API's base URL (default: $FASTBRAIN_API_URL or %(default)s).",
    )
    skills_import.set_defaults(handler=_skills_import)

    from services.admin.commands import add_parsers

    add_parsers(sub)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
