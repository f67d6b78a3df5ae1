"""`wallaby-agent run` and `wallaby-agent source ...`: the agent in the foreground, and the
operator's handle on a source's saved position."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

import wal
import wal.status
from agent.config import load_config
from agent.observability import configure_logging
from agent.runtime import run_agent
from agent.sources.postgres.lsn import parse_lsn
from agent.state import StateStore

ConfigPath = Annotated[
    Path,
    typer.Option("--config", "-c", help="The agent's TOML configuration file.", envvar="WALLABY_CONFIG"),
]


def run_command(
    config: ConfigPath,
    start_lsn: Annotated[
        str | None,
        typer.Option(
            "--start-lsn",
            help="Stream from this LSN (X/Y) instead of the slot's confirmed position; the slot must still hold it.",
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Stop by itself once the sources caught up with where PostgreSQL was at start and every destination has it.",
        ),
    ] = False,
) -> int:
    """Run the agent in the foreground until SIGINT or SIGTERM (or, with --once, until caught up)."""
    settings = load_config(config)
    if start_lsn is not None:
        try:
            parse_lsn(start_lsn)  # a bad value is a usage error before anything starts
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--start-lsn") from None
    configure_logging(settings.log_level, settings.log_format)
    run_agent(settings, start_lsn=start_lsn, once=once)  # raises AgentFailed when a source stopped the agent
    return 0


source_app = typer.Typer(
    help="A source's saved position in the data directory.", no_args_is_help=True, add_completion=False
)


@source_app.command("reset")
def reset_command(
    name: Annotated[str, typer.Argument(help="The source's name in the configuration file.")],
    config: ConfigPath,
) -> None:
    """Forget a source's saved position, so the next run starts from its slot as it is now.

    Use it after deliberately re-creating a dropped replication slot: changes between the old
    slot's position and the new one are not captured.
    """
    settings = load_config(config)
    if name not in {source.name for source in settings.sources}:
        raise typer.BadParameter(f"no source named {name!r} in {config}")
    data_dir = os.fspath(settings.data_dir)
    try:
        status = wal.status.read_status(data_dir)
    except wal.NotALog:
        last_seq = 0  # nothing captured yet
    else:
        if status.writer_pid is not None:
            raise typer.BadParameter(
                f"the agent (pid {status.writer_pid}) is running on {data_dir}: stop it first"
            )
        last_seq = status.last_seq or 0
    store = StateStore(data_dir)
    try:
        removed = store.forget_source(name, log_last_seq=last_seq)
    finally:
        store.close()
    typer.echo(f"source {name}: saved position {'removed' if removed else 'was not set'}")
