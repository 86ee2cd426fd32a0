"""How the CLI prints: rich tables for people, plain JSON for scripts, errors on stderr.

Server text (skill names, messages, model answers) is printed with markup off, so a
`[bold]` in someone's data is shown, not interpreted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli.client import CliError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable: plain `json`, never rich (no colour codes, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_error(error: CliError) -> None:
    err.print(f"error: {error.message}", markup=False, style="red")
    for problem in error.problems:
        err.print(f"  {problem}", markup=False)
    for suggestion in error.suggestions:
        err.print(f"  hint: {suggestion}", markup=False, style="yellow")


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> None:
    if not rows:
        out.print(empty, markup=False)
        return
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(Text(cell_text(cell)) for cell in row))
    out.print(grid)


def cell_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def when(value: str | None) -> str:
    """An ISO timestamp from the API as `YYYY-MM-DD HH:MM`."""
    return value[:16].replace("T", " ") if value else "-"
