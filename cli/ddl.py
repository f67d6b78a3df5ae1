"""`wallaby-agent ddl ...`: the captured DDL events and the operator's decisions on them."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agent.ddl import decide
from agent.state import DDL_STATUSES, StateStore

from .state_options import StateConfig, StateDataDir, resolve_data_dir

app = typer.Typer(help="Captured DDL events: list them, approve, apply or reject them.", no_args_is_help=True)

EventId = Annotated[int, typer.Option("--id", help="The event's id, as `ddl list` shows it.")]


@app.command("list")
def list_command(
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only events with this status: {', '.join(DDL_STATUSES)}.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
    config: StateConfig = None,
    data_dir: StateDataDir = None,
) -> None:
    """List DDL events, oldest first."""
    if status is not None and status not in DDL_STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(DDL_STATUSES)}", param_hint="--status")
    store = StateStore(resolve_data_dir(config, data_dir))
    try:
        events = store.ddl_events(status)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([event.to_dict() for event in events], indent=2))
        return
    if not events:
        typer.echo("no DDL events" + (f" with status {status}" if status else ""))
        return
    for event in events:
        statement = " ".join(event.statement.split())
        typer.echo(f"{event.id:>5}  {event.status:<9} {event.source:<12} {event.lsn:<14} {statement[:80]}")


def _decide(action: str, event_id: int, config: StateConfig, data_dir: StateDataDir) -> None:
    store = StateStore(resolve_data_dir(config, data_dir))
    try:
        event = decide(store, event_id, action)
        flow = store.flow()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--id") from None
    finally:
        store.close()
    typer.echo(
        f"DDL event {event.id}: {event.status}; flow {flow.state}"
        + (f" ({flow.reason})" if flow.reason else "")
    )


@app.command("approve")
def approve_command(event_id: EventId, config: StateConfig = None, data_dir: StateDataDir = None) -> None:
    """Approve a pending event (the flow resumes when none is left pending)."""
    _decide("approve", event_id, config, data_dir)


@app.command("apply")
def apply_command(event_id: EventId, config: StateConfig = None, data_dir: StateDataDir = None) -> None:
    """Mark an event applied (destinations that evolve tables apply it)."""
    _decide("apply", event_id, config, data_dir)


@app.command("reject")
def reject_command(event_id: EventId, config: StateConfig = None, data_dir: StateDataDir = None) -> None:
    """Reject an event: it stays in the log, marked rejected, and is not applied."""
    _decide("reject", event_id, config, data_dir)
