"""`fastbrain skills ls|create|import|report`: skills on a running API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.client import EXIT_USAGE, CliError
from services.cli.context import JsonOption, api
from services.cli.output import out, print_json, table

app = typer.Typer(help="List, create and import skills, and read their data report.", no_args_is_help=True)
# An import or a report waits on the server (a report on a worker's tokenizer and embedder).
SLOW_SECONDS = 300.0


@app.command("ls")
def list_skills(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List skills: id, name, examples, active adapter version."""
    skills = api(ctx).get("/api/skills")["skills"]
    if as_json:
        print_json(skills)
        return
    rows = [(s["skill_id"], s["name"], s["example_count"], s["active_adapter_version"]) for s in skills]
    table(("ID", "NAME", "EXAMPLES", "ACTIVE VERSION"), rows, "No skills yet (create one: fastbrain skills create).")


def _skill_body(file: Path | None, skill_id: str | None, fields: dict[str, str | None]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {file} as JSON: {exc}", exit_code=EXIT_USAGE) from exc
        if not isinstance(loaded, dict):
            raise CliError(f"{file} must hold one JSON object (a skill: skill_id, name, ...).", exit_code=EXIT_USAGE)
        body = loaded
    if skill_id:
        body["skill_id"] = skill_id
    body.update({name: value for name, value in fields.items() if value is not None})
    if not body.get("skill_id"):
        raise CliError("give the skill's id (SKILL_ID, or skill_id in --file).", exit_code=EXIT_USAGE)
    body.setdefault("name", body["skill_id"])
    if not body.get("system_prompt"):
        raise CliError("give a system prompt (--system-prompt, or system_prompt in --file).", exit_code=EXIT_USAGE)
    return body


@app.command("create")
def create(
    ctx: typer.Context,
    skill_id: Annotated[str | None, typer.Argument(help="Its id: lowercase letters, digits, '-' and '_'.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="A skill as JSON (HIVE215: skill_id, name, system_prompt, conversations).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name (default: the id).")] = None,
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", "-p")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a skill from a JSON file, from flags, or both (flags win)."""
    body = _skill_body(file, skill_id, {"name": name, "system_prompt": system_prompt, "description": description})
    skill = api(ctx).post("/api/skills", json=body)
    if as_json:
        print_json(skill)
        return
    count = skill["example_count"]
    out.print(f"Created skill '{skill['skill_id']}' with {count} example{'s' if count != 1 else ''}.", markup=False)


@app.command("import")
def import_examples(
    ctx: typer.Context,
    skill: Annotated[str, typer.Argument(metavar="SKILL", help="The skill id.")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The training-data file.")],
    api_url: Annotated[
        str | None,
        typer.Option("--api", help="The API's base URL (default: --url, $FASTBRAIN_URL or $FASTBRAIN_API_URL)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import examples from a file: HIVE215 JSON, OpenAI chat JSONL, ShareGPT, Alpaca or CSV.

    Appends every example of FILE to SKILL, or none if any line or row has a problem."""
    if not file.is_file():
        raise CliError(f"{file} is not a file", exit_code=EXIT_USAGE)
    client = api(ctx, url=api_url, timeout=SLOW_SECONDS)
    with file.open("rb") as handle:
        body = client.post(f"/api/skills/{skill}/examples/import", files={"file": (file.name, handle)})
    if as_json:
        print_json(body)
        return
    added = body["added"]
    out.print(
        f"Imported {added} example{'s' if added != 1 else ''} into '{body['skill_id']}' "
        f"(format: {body['format']}); the skill now has {body['example_count']}.",
        markup=False,
    )
    if body.get("skipped_duplicates"):
        out.print(f"Skipped {body['skipped_duplicates']} exact duplicates.", markup=False)
    for warning in body.get("warnings") or []:
        out.print(f"warning: {warning}", markup=False)


@app.command("report")
def report(
    ctx: typer.Context,
    skill: Annotated[str, typer.Argument(metavar="SKILL")],
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Count tokens with this model's tokenizer.")
    ] = None,
    max_seq_length: Annotated[int | None, typer.Option("--max-seq-length")] = None,
    as_json: JsonOption = False,
) -> None:
    """The data quality report: tokens, topics, duplicates, stars and recommendations."""
    params = {k: v for k, v in {"base_model": base_model, "max_seq_length": max_seq_length}.items() if v is not None}
    body = api(ctx, timeout=SLOW_SECONDS).get(f"/api/skills/{skill}/data-report", params=params)
    if as_json:
        print_json(body)
        return
    quality = body.get("quality") or {}
    tokens = body.get("tokens") or {}
    duplicates = body.get("duplicates") or {}
    stars = quality.get("stars")
    out.print(f"Data report for '{skill}' ({body.get('base_model')} tokens)", style="bold", markup=False)
    if isinstance(stars, int):
        out.print(f"  quality     {'★' * stars}{'☆' * (5 - stars)} {quality.get('label', '')}", markup=False)
    out.print(f"  examples    {body.get('example_count')}", markup=False)
    out.print(
        f"  tokens      average {tokens.get('average')}, median {tokens.get('median')}, max {tokens.get('max')}; "
        f"{tokens.get('over_max_seq_length', 0)} over max_seq_length {tokens.get('max_seq_length')}",
        markup=False,
    )
    out.print(f"  topics      {(body.get('topics') or {}).get('count')}", markup=False)
    exact = len(duplicates.get("exact") or [])
    out.print(f"  duplicates  {exact} exact, {duplicates.get('near_count', 0)} near", markup=False)
    for recommendation in body.get("recommendations") or []:
        text = recommendation if isinstance(recommendation, str) else json.dumps(recommendation)
        out.print(f"  → {text}", markup=False)
