"""How the CLI prints: rich tables for people, JSON for scripts, errors on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fum_client import FumError
from fum_client.models import Call

STATUS_STYLE = {
    "PENDING": "yellow",
    "RUNNING": "cyan",
    "DONE": "green",
    "ERROR": "red",
    "TIMEOUT": "magenta",
    "WAITING": "blue",
    "CANCELLED": "magenta",
}


def out() -> Console:
    """A console on the current stdout (wide when it is not a terminal: no cut columns)."""
    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if tty else 200, highlight=False)


def err() -> Console:
    return Console(file=sys.stderr, highlight=False, width=None if sys.stderr.isatty() else 200)


def print_json(data: Any) -> None:
    """JSON on stdout: indented on a terminal, one line otherwise."""
    indent = 2 if sys.stdout.isatty() else None
    typer.echo(json.dumps(data, indent=indent, ensure_ascii=False))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``fum: error: message`` on stderr; the Exit to raise."""
    err().print(f"[bold red]fum: error:[/] {escape(message)}")
    return typer.Exit(code)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn the SDK's errors into a message on stderr and exit status 1."""
    try:
        yield
    except FumError as exc:
        raise fail(str(exc)) from None


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    t = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for column in columns:  # one line per row: a narrow terminal cuts cells, with "…"
        t.add_column(column, no_wrap=True, overflow="ellipsis")
    for row in rows:
        t.add_row(*("" if v is None else v if isinstance(v, str) else str(v) for v in row))
    out().print(t)


def status_text(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def short_json(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def call_row(call: Call) -> list[str]:
    outcome = call.error.splitlines()[0] if call.error else ""
    if call.status == "DONE":
        outcome = short_json(call.result)
    return [
        str(call.call_num),
        escape(call.func_name),
        status_text(call.status),
        "" if call.node_id is None else str(call.node_id),
        call.start or "",
        ms(call.duration_ms),
        (call.created_at or "")[:23].replace("T", " "),
        escape(outcome),
    ]


CALL_COLUMNS = ("call", "function", "status", "node", "start", "duration", "created", "result")
