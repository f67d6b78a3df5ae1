"""`wallaby-agent backfill`: re-read tables of a PostgreSQL source into the log."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import psycopg
import typer

import wal
from agent.backfill import missing_tables, run_backfill
from agent.config import load_config
from agent.errors import first_line
from agent.observability import configure_logging
from agent.state import BackfillQueue, StateStore

from .run import ConfigPath

_POLL_S = 0.5


def backfill_command(
    config: ConfigPath,
    tables: Annotated[
        str, typer.Option("--tables", help="Comma-separated tables, e.g. public.orders,public.customers.")
    ],
    source: Annotated[
        str | None,
        typer.Option("--source", help="The PostgreSQL source to read from (default: the only one)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="With a running agent: wait until it is done.")
    ] = True,
) -> None:
    """Backfill tables as snapshot rows: through the running agent, or directly when none runs."""
    settings = load_config(config)
    postgres = [s for s in settings.sources if s.type == "postgres"]
    if source is None:
        if len(postgres) != 1:
            raise typer.BadParameter(
                "name the source: the configuration has several (or none)", param_hint="--source"
            )
        chosen = postgres[0]
    else:
        matches = [s for s in postgres if s.name == source]
        if not matches:
            raise typer.BadParameter(f"no PostgreSQL source named {source!r}", param_hint="--source")
        chosen = matches[0]
    names = [_qualify(t) for t in tables.split(",") if t.strip()]
    if not names:
        raise typer.BadParameter("give at least one table", param_hint="--tables")
    try:
        missing = missing_tables(chosen, names)
    except psycopg.Error as exc:
        raise typer.Exit(_fail(f"source {chosen.name}: cannot connect: {first_line(exc)}")) from None
    if missing:
        raise typer.BadParameter(
            f"no such table in source {chosen.name}: {', '.join(missing)}", param_hint="--tables"
        )
    configure_logging("warning", settings.log_format)
    state = StateStore(settings.data_dir)
    try:
        request = BackfillQueue(state).add(chosen.name, names)
        try:
            log_ = wal.open(str(settings.data_dir), **settings.wal.log_options())
        except wal.LogLocked:
            typer.echo(f"backfill {request.id} queued for the running agent")
            if wait:
                _follow(BackfillQueue(state), request.id)
            return
        try:
            rows = run_backfill(request, chosen, log_, state, progress=_progress)
        except psycopg.Error as exc:
            _end_progress()
            raise typer.Exit(_fail(f"backfill {request.id} failed: {first_line(exc)}")) from None
        finally:
            log_.close()
        _end_progress()
        typer.echo(f"backfill {request.id}: {rows} rows from {len(names)} table(s) written to the log")
    finally:
        state.close()


def _qualify(table: str) -> str:
    table = table.strip()
    return table if "." in table else f"public.{table}"


def _progress(table: str, rows: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{table}: {rows} rows")
        sys.stderr.flush()


def _end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def _follow(queue: BackfillQueue, request_id: int) -> None:
    while True:
        request = queue.get(request_id)
        assert request is not None
        if request.status == "done":
            _end_progress()
            typer.echo(f"backfill {request_id}: done, {request.rows} rows")
            return
        if request.status == "failed":
            _end_progress()
            raise typer.Exit(_fail(f"backfill {request_id} failed: {request.error}"))
        _progress(",".join(request.tables), request.rows)
        time.sleep(_POLL_S)


def _fail(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return 1
