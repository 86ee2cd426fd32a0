"""The typer application: global options, the client command groups, and how errors end a run."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli import adapters, jobs, server, skills
from services.cli.chat import chat
from services.cli.client import CliError
from services.cli.context import Target
from services.cli.output import print_error
from services.cli.train import train

app = typer.Typer(
    name="fastbrain",
    help="Fast Brain: one-click LoRA training for skills.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="The API (default: $FASTBRAIN_URL, else http://127.0.0.1:8000).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="The key (default: $FASTBRAIN_API_KEY, else the dev admin key).", show_default=False
        ),
    ] = None,
) -> None:
    ctx.obj = Target(url=url, api_key=api_key)


app.add_typer(skills.app, name="skills")
app.command("train")(train)
app.add_typer(jobs.app, name="jobs")
app.add_typer(adapters.app, name="adapters")
app.command("chat")(chat)


def _server_command(name: str) -> None:
    """Listed in `fastbrain --help`; `main` hands these to argparse before typer sees them."""

    def handler(ctx: typer.Context) -> None:
        server.main([name, *ctx.args])

    app.command(
        name,
        help=server.COMMANDS[name],
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(handler)


for _name in server.COMMANDS:
    _server_command(_name)


def run(args: list[str]) -> None:
    try:
        app(args=args, prog_name="fastbrain")
    except CliError as error:
        print_error(error)
        raise SystemExit(error.exit_code) from None
