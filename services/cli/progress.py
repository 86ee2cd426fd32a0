"""A followed training, drawn: a live bar on a terminal, log lines above it, a summary at the end.

Off a terminal (a pipe, CI logs) there is no bar to redraw: each progress event becomes
one plain line instead, so the output still says how far the job got.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn

from services.cli.output import err, out, seconds_text
from services.cli.stream import Event

LEVEL_STYLES = {"warning": "yellow", "error": "red", "debug": "dim"}


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


class TrainingView:
    """Feed it events with `show(event)` inside a `with` block."""

    def __init__(self, job_id: str) -> None:
        self.live = out.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step {task.completed:.0f}/{task.fields[total_steps]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            console=out,
            transient=False,
            disable=not self.live,
        )
        self.task: TaskID = self.progress.add_task(
            "training", total=None, total_steps="?", loss="-", eta="-", speed="-", start=False
        )
        self.job_id = job_id

    def __enter__(self) -> TrainingView:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def note(self, message: str, style: str = "dim") -> None:
        """A line above the bar (the bar is redrawn below it)."""
        self.progress.console.print(message, markup=False, style=style)

    def show(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "progress":
            self._progress(event)
        elif kind == "log":
            level = str(event.get("level") or "info")
            self.note(f"{level:<7} {event.get('message', '')}", LEVEL_STYLES.get(level, ""))
        elif kind == "status":
            message = f" ({event['message']})" if event.get("message") else ""
            self.note(f"status  {event.get('status')}{message}", "cyan")
        elif kind == "error":
            recovering = event.get("final") is False
            text = event.get("user_message") or event.get("message")
            self.note(f"{'retrying' if recovering else 'error':<7} {event.get('category')}: {text}", "yellow")
        elif kind == "complete" and self.live:
            # A run that stopped early ends before its planned total: the bar ends where training did.
            done = self.progress.tasks[0].completed
            self.progress.update(self.task, total=done or None, eta="-")

    def _progress(self, event: Event) -> None:
        total = event.get("total_steps")
        fields: dict[str, object] = {
            "total_steps": total if total is not None else "?",
            "loss": _number(event.get("loss"), ".4f"),
            "eta": seconds_text(event.get("eta_seconds")),
            "speed": _number(event.get("tokens_per_second"), ".0f"),
        }
        if not self.live:
            out.print(
                f"step {event.get('step')}/{fields['total_steps']}  loss {fields['loss']}  "
                f"ETA {fields['eta']}  {fields['speed']} tok/s",
                markup=False,
            )
            return
        self.progress.start_task(self.task)
        self.progress.update(
            self.task,
            total=total,
            completed=event.get("step") or 0,
            total_steps=fields["total_steps"],
            loss=fields["loss"],
            eta=fields["eta"],
            speed=fields["speed"],
        )


def summary(status: dict[str, Any], final_error: Event | None) -> None:
    """What the run came to, from the job's status (the source of truth) and its last error event."""
    state = status.get("status")
    if state == "completed":
        out.print(f"Training completed: skill '{status['skill_id']}'", style="bold green", markup=False)
        out.print(f"  {held_out_line(status)}", markup=False)
        steps = f"{status.get('current_step')}/{status.get('total_steps') or '?'}"
        cost = status.get("cost_usd")
        cost_text = f"${cost:.4f}" if isinstance(cost, int | float) else "-"
        out.print(
            f"  steps {steps} · training time {seconds_text(status.get('training_time_seconds'))} · cost {cost_text}",
            markup=False,
        )
        version = status.get("adapter_version")
        active = "active" if status.get("adapter_active") else "not active"
        reason = f": {status['not_activated_reason']}" if status.get("not_activated_reason") else ""
        out.print(f"  adapter v{version} ({active}{reason}), id {status.get('adapter_id')}", markup=False)
        return
    if state == "cancelled":
        err.print(f"Training cancelled (job {status.get('job_id')}).", style="yellow", markup=False)
        return
    error = final_error or {}
    details = status.get("error_details") or {}
    message = error.get("user_message") or details.get("user_message") or status.get("error_message") or state
    suggestions = error.get("suggestions") or details.get("suggestions") or []
    err.print(f"Training failed: {message}", style="bold red", markup=False)
    for suggestion in suggestions:
        err.print(f"  hint: {suggestion}", style="yellow", markup=False)


def held_out_line(status: dict[str, Any]) -> str:
    before, after = status.get("eval_loss_before"), status.get("eval_loss_after")
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "held-out loss: not measured (a held-out split needs 10 examples or more)"
    pct = status.get("improvement_pct")
    change = f" ({pct:+.2f}% improvement)" if isinstance(pct, int | float) else ""
    return f"held-out loss {before:.4f} → {after:.4f}{change}"
