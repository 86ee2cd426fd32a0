"""`fastbrain train SKILL`: start a training run, and with --follow watch it to the end."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from services.cli.client import EXIT_USAGE, CliError
from services.cli.context import JsonOption, api
from services.cli.follow import follow
from services.cli.output import out, print_json
from shared.schemas.training import Preset


def _value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true, null), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_config(
    preset: Preset | None, base_model: str | None, overrides: dict[str, Any], sets: list[str]
) -> dict[str, Any]:
    config: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if preset is not None:
        config["preset"] = preset.value
    if base_model is not None:
        config["base_model"] = base_model
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--set takes NAME=VALUE (e.g. lora_r=32), not '{item}'.", exit_code=EXIT_USAGE)
        config[name.strip()] = _value(value)
    return config


def train(
    ctx: typer.Context,
    skill: Annotated[str, typer.Argument(metavar="SKILL", help="The skill id.")],
    preset: Annotated[Preset | None, typer.Option(help="Hyperparameter preset (server default: standard).")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="A model id from GET /api/models.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps.")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    max_seq_length: Annotated[int | None, typer.Option("--max-seq-length")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", metavar="NAME=VALUE", help="Any other config field (repeatable).")
    ] = None,
    follow_job: Annotated[bool, typer.Option("--follow", "-F", help="Watch it live to the end.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start training SKILL; the exit code with --follow says how it ended (0 completed, 1 failed or cancelled)."""
    overrides = {
        "max_steps": max_steps,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "max_seq_length": max_seq_length,
    }
    config = build_config(preset, base_model, overrides, sets or [])
    client = api(ctx)
    accepted = client.post(f"/api/train-skill/{skill}", json={"config": config})
    job_id = str(accepted["job_id"])
    if as_json and not follow_job:
        print_json(accepted)
        return
    if not as_json:
        minutes = accepted.get("estimated_time_minutes")
        out.print(
            f"Training '{skill}': job {job_id} {accepted.get('status')}, estimated {minutes} min, "
            f"${accepted.get('estimated_cost', 0):.4f}.",
            markup=False,
        )
        for warning in accepted.get("warnings") or []:
            out.print(f"warning: {warning}", style="yellow", markup=False)
        if not follow_job:
            out.print(f"Follow it: fastbrain jobs logs {job_id} --follow", markup=False)
            return
    raise typer.Exit(follow(client, job_id, as_json=as_json))
