"""`fastbrain`: the service's commands, and a client of a running API.

Server side, unchanged (argparse, services/cli/server.py): dev, api, serve, worker,
migrate, keys, workspaces. Client side (typer + rich, over HTTP/WebSocket): skills,
train, jobs, adapters, chat. The server, `--url` / FASTBRAIN_URL (default
http://127.0.0.1:8000); the key, `--api-key` / FASTBRAIN_API_KEY, else the admin key
`fastbrain dev` keeps under the data dir.

Exit codes: 0 done; 1 the server refused the request, or the job failed or was
cancelled; 2 usage; 3 the server cannot be reached or refuses the key.
"""

from __future__ import annotations

import sys

from services.cli import server


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in server.COMMANDS:
        server.main(args)  # their flags, output and errors stay exactly argparse's
        return
    from services.cli.app import run  # typer, rich and httpx only load for client commands

    run(args)
