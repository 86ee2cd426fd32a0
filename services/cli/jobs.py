"""`fastbrain jobs ls|status|cancel|logs`: training jobs on a running API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from services.cli.client import Api
from services.cli.context import JsonOption, api
from services.cli.follow import event_line, follow, job_status, json_line
from services.cli.output import out, print_json, seconds_text, table, when
from services.cli.progress import held_out_line

app = typer.Typer(help="List, inspect, cancel and follow training jobs.", no_args_is_help=True)
JobArg = Annotated[str, typer.Argument(metavar="JOB_ID")]
PAGE = 500


@app.command("ls")
def list_jobs(
    ctx: typer.Context,
    skill: Annotated[str | None, typer.Option("--skill", help="Only this skill's.")] = None,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status (running, failed, ...).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Training history, newest first."""
    params: dict[str, Any] = {
        "limit": limit,
        **({"skill_id": skill} if skill else {}),
        **({"status": status} if status else {}),
    }
    jobs = api(ctx).get("/api/training-jobs", params=params)["jobs"]
    if as_json:
        print_json(jobs)
        return
    rows = [
        (
            j["job_id"],
            j["skill_id"],
            j["status"],
            f"{j['progress']:.0f}%",
            j["final_loss"],
            seconds_text(j["training_time_seconds"]),
            when(j["created_at"]),
        )
        for j in jobs
    ]
    table(("JOB", "SKILL", "STATUS", "PROGRESS", "FINAL LOSS", "TIME", "CREATED"), rows, "No training jobs.")


@app.command("status")
def status(ctx: typer.Context, job_id: JobArg, as_json: JsonOption = False) -> None:
    """A job's status: progress, losses, held-out change, cost, error."""
    body = job_status(api(ctx), job_id)
    if as_json:
        print_json(body)
        return
    steps = f"{body['current_step']}/{body['total_steps'] or '?'}"
    out.print(f"Job {body['job_id']} ({body['skill_id']}): {body['status']}", style="bold", markup=False)
    out.print(f"  progress  {body['progress']:.0f}%, step {steps}, loss {body['current_loss']}", markup=False)
    if body["status"] == "completed":
        out.print(f"  {held_out_line(body)}", markup=False)
        out.print(f"  adapter   v{body['adapter_version']} ({body['adapter_id']})", markup=False)
    if body.get("error_message"):
        out.print(f"  error     {body['error_message']}", style="red", markup=False)
    cost = body.get("cost_usd")
    out.print(
        f"  time      {seconds_text(body['training_time_seconds'])}, cost "
        + (f"${cost:.4f}" if isinstance(cost, int | float) else "-"),
        markup=False,
    )


@app.command("cancel")
def cancel(ctx: typer.Context, job_id: JobArg, as_json: JsonOption = False) -> None:
    """Cancel a queued or running job."""
    body = api(ctx).post(f"/api/training-jobs/{job_id}/cancel")
    if as_json:
        print_json(body)
        return
    out.print(f"Job {body['job_id']}: {body['status']}.", markup=False)


def _print_history(client: Api, job_id: str, as_json: bool) -> int:
    after = 0
    while True:
        page = client.get(f"/api/training-jobs/{job_id}/events", params={"after_seq": after, "limit": PAGE})
        for event in page["events"]:
            if as_json:
                json_line(event)
            else:
                out.print(event_line(event), markup=False)
        after = int(page["next_after_seq"])
        if not page["has_more"]:
            return after


@app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: JobArg,
    follow_job: Annotated[bool, typer.Option("--follow", "-F", help="Keep streaming until the job ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """A job's events; with --follow, live until it ends (exit code as for `train --follow`)."""
    client = api(ctx)
    if not follow_job:
        _print_history(client, job_id, as_json)
        return
    raise typer.Exit(follow(client, job_id, as_json=as_json, plain=True))
