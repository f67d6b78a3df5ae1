"""`wallaby-agent flow pause|resume|show`: hold the sources back, or let them go on."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.state import StateStore

from .state_options import StateConfig, StateDataDir, resolve_data_dir

app = typer.Typer(
    help="The flow of changes from the sources into the log: pause, resume, show.", no_args_is_help=True
)


def _show(store: StateStore) -> str:
    flow = store.flow()
    return f"flow {flow.state}" + (f" ({flow.reason})" if flow.reason else "")


@app.command("pause")
def pause_command(
    reason: Annotated[str, typer.Option("--reason", help="Why, for status pages and logs.")] = "operator",
    config: StateConfig = None,
    data_dir: StateDataDir = None,
) -> None:
    """Pause the sources: they stop reading once their current transaction is durable."""
    store = StateStore(resolve_data_dir(config, data_dir))
    try:
        store.set_flow("paused", reason)
        typer.echo(_show(store))
    finally:
        store.close()


@app.command("resume")
def resume_command(config: StateConfig = None, data_dir: StateDataDir = None) -> None:
    """Resume the sources, whatever paused them."""
    store = StateStore(resolve_data_dir(config, data_dir))
    try:
        store.set_flow("running")
        typer.echo(_show(store))
    finally:
        store.close()


@app.command("show")
def show_command(config: StateConfig = None, data_dir: StateDataDir = None) -> None:
    """Print the flow state."""
    store = StateStore(resolve_data_dir(config, data_dir))
    try:
        typer.echo(_show(store))
    finally:
        store.close()
