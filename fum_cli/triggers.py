"""``fum trigger`` and ``fum execution``: triggers on events, durable coordinators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fum_client import Client

from .output import errors, out, print_json, table

trigger_app = typer.Typer(help="Triggers: events -> condition -> action (docs/DURABLE.md).")
execution_app = typer.Typer(help="Executions of durable coordinator functions.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")]


def _client(ctx: typer.Context) -> Client:
    from .main import client  # the CLI's client of this command (main imports this module)

    return client(ctx)


def _json_option(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=what) from None


def trigger_body(
    on: list[str],
    type_: str | None,
    join: int | None,
    join_all: bool,
    threshold: str | None,
    invoke: str | None,
    publish: str | None,
    terminate: bool,
    context: str | None,
    keep: bool,
) -> dict[str, Any]:
    """The body of ``PUT /v1/triggers/{id}`` from the command's options."""
    if not on:
        raise typer.BadParameter("give at least one --on SUBJECT", param_hint="--on")
    conditions = [join is not None, join_all, threshold is not None]
    if sum(conditions) > 1:
        raise typer.BadParameter("one of --join, --join-all, --threshold")
    actions = [invoke is not None, publish is not None, terminate]
    if sum(actions) > 1:
        raise typer.BadParameter("one of --invoke, --publish, --terminate")
    condition: dict[str, Any] = {"kind": "true"}
    if join is not None:
        condition = {"kind": "join", "count": join}
    elif join_all:
        condition = {"kind": "join", "subjects": on}
    elif threshold is not None:
        key, sep, value = threshold.rpartition("=")
        if not sep or not key or not value.isdigit():
            raise typer.BadParameter("KEY=N, e.g. ticks=3", param_hint="--threshold")
        condition = {"kind": "threshold", "key": key, "value": int(value)}
    action: dict[str, Any] = {"kind": "pass"}
    if invoke is not None:
        action = {"kind": "invoke", "function": invoke}
    elif publish is not None:
        subject, sep, kind = publish.partition("@")
        if not sep or not subject or not kind:
            raise typer.BadParameter("SUBJECT@TYPE, e.g. alarms@three", param_hint="--publish")
        action = {"kind": "publish", "event": {"subject": subject, "type": kind}}
    elif terminate:
        action = {"kind": "terminate"}
    body: dict[str, Any] = {
        "activation": [{"subject": s, **({"type": type_} if type_ else {})} for s in on],
        "condition": condition,
        "action": action,
        "transient": not keep,
    }
    if context is not None:
        body["context"] = _json_option(context, "--context")
    return body


@trigger_app.command("add")
def trigger_add(
    ctx: typer.Context,
    trigger_id: Annotated[str, typer.Argument(metavar="ID", help="The trigger's id")],
    on: Annotated[
        list[str] | None, typer.Option("--on", help="An activating subject (repeatable)")
    ] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only events of this type (default: any)")
    ] = None,
    join: Annotated[
        int | None, typer.Option(help="Condition: fire once N matching events arrived")
    ] = None,
    join_all: Annotated[
        bool, typer.Option("--join-all", help="Condition: fire once every --on subject sent one")
    ] = False,
    threshold: Annotated[
        str | None, typer.Option(help="Condition KEY=N: count in context[KEY], fire at N")
    ] = None,
    invoke: Annotated[
        str | None, typer.Option(help="Action: invoke this function with the events")
    ] = None,
    publish: Annotated[
        str | None, typer.Option(help="Action SUBJECT@TYPE: publish an event")
    ] = None,
    terminate: Annotated[bool, typer.Option(help="Action: stop the trigger")] = False,
    context: Annotated[str | None, typer.Option(help="The initial context (JSON object)")] = None,
    keep: Annotated[bool, typer.Option(help="Not transient: keep it after it fires")] = False,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="The whole trigger as a JSON file")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Create or replace a trigger. Without an action it only counts (pass)."""
    if file is not None:
        body = _json_option(file.read_text(), "--file")
    else:
        body = trigger_body(
            on or [], type_, join, join_all, threshold, invoke, publish, terminate, context, keep
        )
    with errors():
        trigger = _client(ctx).put_trigger(trigger_id, body)
    if json_:
        print_json(trigger)
        return
    out().print(f"trigger [bold]{escape(trigger['id'])}[/] saved")


def _describe(part: dict[str, Any]) -> str:
    if part["kind"] == "python":  # the pickled callable is no reading
        return f"python {part['call'].get('name', '?')} (on {part['function']})"
    rest = {k: v for k, v in part.items() if k != "kind"}
    return part["kind"] + (" " + json.dumps(rest) if rest else "")


@trigger_app.command("ls")
def trigger_ls(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(help="Only those this subject activates")] = None,
    active: Annotated[
        bool | None, typer.Option("--active/--inactive", help="Only active (or inactive) ones")
    ] = None,
    execution: Annotated[str | None, typer.Option(help="Only this execution's")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 100,
    json_: JsonOpt = False,
) -> None:
    """List triggers by id."""
    with errors():
        page = _client(ctx).list_triggers(active, subject, execution, limit)
    if json_:
        print_json(page)
        return
    table(
        ("id", "active", "fired", "on", "condition", "action"),
        [
            (
                escape(t["id"]),
                "yes" if t["active"] else "no",
                t["fired"],
                escape(", ".join(a["subject"] for a in t["activation"][:3]))
                + (", ..." if len(t["activation"]) > 3 else ""),
                escape(_describe(t["condition"])),
                escape(_describe(t["action"])),
            )
            for t in page["items"]
        ],
    )


@trigger_app.command("show")
def trigger_show(
    ctx: typer.Context,
    trigger_id: Annotated[str, typer.Argument(metavar="ID")],
    json_: JsonOpt = False,
) -> None:
    """Show a trigger: its context, what it joined so far, how many times it fired."""
    with errors():
        trigger = _client(ctx).get_trigger(trigger_id)
    if json_:
        print_json(trigger)
        return
    for key in ("id", "active", "fired", "transient", "context", "events", "createdAt"):
        value = trigger[key]
        shown = value if isinstance(value, str) else json.dumps(value)
        out().print(f"[bold]{key:<10}[/] {escape(shown)}")
    out().print(f"[bold]{'condition':<10}[/] {escape(_describe(trigger['condition']))}")
    out().print(f"[bold]{'action':<10}[/] {escape(_describe(trigger['action']))}")
    on = ", ".join(
        a["subject"] + (f" ({a['type']})" if a["type"] else "") for a in trigger["activation"]
    )
    out().print(f"[bold]{'on':<10}[/] {escape(on)}")


@trigger_app.command("rm")
def trigger_rm(
    ctx: typer.Context, trigger_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Delete a trigger."""
    with errors():
        _client(ctx).delete_trigger(trigger_id)
    out().print(f"trigger {escape(trigger_id)} deleted")


@execution_app.command("show")
def execution_show(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID")],
    json_: JsonOpt = False,
) -> None:
    """An execution: its status, how many times the coordinator ran, each step's calls."""
    with errors():
        x = _client(ctx).get_execution(execution_id)
    if json_:
        print_json(x)
        return
    out().print(
        f"execution [bold]{escape(x['id'])}[/] ({escape(x['name'])}): {x['status']}, "
        f"the coordinator ran {x['runs']} times (calls "
        + ", ".join(str(c["callNum"]) for c in x["runCalls"])
        + ")"
    )
    if x["error"]:
        out().print(f"[red]{escape(x['error'])}[/]")
    rows = []
    for step in x["steps"]:
        for index, call in enumerate(step["calls"]):
            rows.append(
                (
                    step["seq"] if index == 0 else "",
                    escape(step["identity"]) if index == 0 else "",
                    call["callNum"],
                    call["status"],
                    call.get("startedAt") or "",
                    call.get("finishedAt") or "",
                )
            )
    table(("step", "call of", "call", "status", "started", "finished"), rows)
