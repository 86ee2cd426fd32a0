"""`fastbrain adapters ls|activate|export|rm`: trained adapter versions on a running API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from services.cli.client import EXIT_USAGE, Api, CliError, error_from_response
from services.cli.context import JsonOption, api
from services.cli.output import out, print_json, table, when

app = typer.Typer(help="List, activate, export and delete adapters.", no_args_is_help=True)
AdapterArg = Annotated[str, typer.Argument(metavar="ADAPTER", help="An adapter id, or SKILL@vN.")]
VERSIONED = re.compile(r"^(?P<skill>[a-z0-9][a-z0-9_-]*)@v(?P<version>\d+)$")
EXPORT_SECONDS = 600.0


def resolve(client: Api, ref: str) -> str:
    """An adapter id for `ref`: an id as it is, `skill@v3` looked up among the skill's versions."""
    match = VERSIONED.match(ref)
    if match is None:
        return ref
    adapters = client.get("/api/adapters", params={"skill_id": match["skill"]})["adapters"]
    for adapter in adapters:
        if adapter["version"] == int(match["version"]):
            return str(adapter["id"])
    raise CliError(
        f"Skill '{match['skill']}' has no adapter v{match['version']}.", suggestions=["fastbrain adapters ls"]
    )


@app.command("ls")
def list_adapters(
    ctx: typer.Context,
    skill: Annotated[str | None, typer.Option("--skill", help="Only this skill's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Trained adapters: id, skill, version, active, held-out loss, stars."""
    adapters: list[dict[str, Any]] = api(ctx).get("/api/adapters", params={"skill_id": skill} if skill else None)[
        "adapters"
    ]
    if as_json:
        print_json(adapters)
        return
    rows = [
        (
            a["id"],
            a["skill_id"],
            f"v{a['version']}",
            "yes" if a["is_active"] else "",
            a["eval_loss"],
            (a.get("quality") or {}).get("stars"),
            a["base_model"],
            when(a["created_at"]),
        )
        for a in adapters
    ]
    table(("ID", "SKILL", "VERSION", "ACTIVE", "EVAL LOSS", "STARS", "BASE MODEL", "CREATED"), rows, "No adapters.")


@app.command("activate")
def activate(ctx: typer.Context, adapter: AdapterArg, as_json: JsonOption = False) -> None:
    """Make this version its skill's active adapter."""
    client = api(ctx)
    body = client.post(f"/api/adapters/{resolve(client, adapter)}/activate")
    if as_json:
        print_json(body)
        return
    out.print(f"Adapter v{body['version']} of '{body['skill_id']}' is now active.", markup=False)


@app.command("export")
def export(
    ctx: typer.Context,
    adapter: AdapterArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The .tar.gz to write (default: the server's name).")
    ] = None,
) -> None:
    """Download an adapter as .tar.gz (PEFT files and fastbrain.json)."""
    client = api(ctx, timeout=EXPORT_SECONDS)
    adapter_id = resolve(client, adapter)
    try:
        with client.http.stream("GET", f"/api/adapters/{adapter_id}/export") as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            target = output or Path(_filename(response) or f"{adapter_id}.tar.gz")
            if target.is_dir():
                target = target / (_filename(response) or f"{adapter_id}.tar.gz")
            partial = target.with_name(target.name + ".part")  # no half-written archive under the real name
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
            partial.replace(target)
    except httpx.HTTPError as exc:
        raise client.unreachable(exc) from exc
    except OSError as exc:
        raise CliError(f"cannot write the archive: {exc}", exit_code=EXIT_USAGE) from exc
    out.print(f"Wrote {target} ({target.stat().st_size} bytes).", markup=False)


def _filename(response: httpx.Response) -> str | None:
    match = re.search(r'filename="?([^";]+)"?', response.headers.get("content-disposition", ""))
    return Path(match[1]).name if match else None


@app.command("rm")
def remove(
    ctx: typer.Context,
    adapter: AdapterArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete an adapter: its row and its files."""
    client = api(ctx)
    adapter_id = resolve(client, adapter)
    if not yes and not typer.confirm(f"Delete adapter {adapter} and its files?"):
        raise typer.Exit(1)
    body = client.json("DELETE", f"/api/adapters/{adapter_id}")
    out.print(f"{body['message']}: {adapter}.", markup=False)
