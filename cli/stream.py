"""`wallaby-agent stream pull|ack|replay`: consume a pgstream destination's stream from the shell.

The database is `--dsn`, or `--config FILE --destination NAME` (a pgstream destination of the
agent's configuration, which also gives the stream when --stream is left out). Every problem
(bad ids or time, an unknown destination, a database that cannot be reached) is one
`error: ...` line on stderr and exit code 2. `ack` exits 1 when some ids were unknown.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
import typer

from agent import pgstream
from agent.config import load_config
from agent.errors import ConfigError, first_line

from .times import parse_utc_time

EXIT_OK = 0
EXIT_UNKNOWN_IDS = 1
EXIT_USAGE = 2

app = typer.Typer(help="Consume a pgstream destination: pull, ack, replay.", no_args_is_help=True)

Dsn = Annotated[str | None, typer.Option("--dsn", help="The database holding the stream.")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="The agent's configuration (with --destination).")
]
DestinationName = Annotated[
    str | None, typer.Option("--destination", "-d", help="A pgstream destination of --config.")
]
Stream = Annotated[
    str | None, typer.Option("--stream", help="The stream (default: the destination's stream).")
]
Group = Annotated[str, typer.Option("--group", help="The consumer group.")]

T = TypeVar("T")


class _Usage(Exception):
    """A problem with the arguments: one line, exit code 2."""


@app.command("pull")
def pull_command(
    group: Group,
    max_entries: Annotated[int, typer.Option("--max", help="The most entries to take.")] = 10,
    visibility: Annotated[
        float, typer.Option("--visibility", help="Seconds the entries stay hidden unless acked.")
    ] = 30.0,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    stream: Stream = None,
    dsn: Dsn = None,
    config: ConfigFile = None,
    destination: DestinationName = None,
) -> None:
    """Take the oldest visible entries not acked by the group, hiding them for --visibility seconds."""
    if max_entries < 1:
        raise typer.Exit(_fail("--max must be at least 1"))
    if not visibility >= 0:
        raise typer.Exit(_fail("--visibility must be 0 seconds or more"))
    entries = _run(
        dsn,
        config,
        destination,
        stream,
        lambda conn, name: pgstream.pull(conn, name, group, max_entries, visibility),
    )
    for entry in entries:
        if json_output:
            typer.echo(orjson.dumps(_entry_dict(entry)).decode())
        else:
            body = orjson.dumps(entry.envelope).decode()
            typer.echo(
                f"id={entry.id} seq={entry.seq} table={entry.table_name or '-'} op={entry.op}"
                f" deliveries={entry.delivery_count} {body}"
            )
    if not entries and not json_output:
        typer.echo("no entries", err=True)  # stderr: stdout stays parseable (empty)


@app.command("ack")
def ack_command(
    group: Group,
    ids: Annotated[str, typer.Option("--ids", help="Comma-separated entry ids, e.g. 1,2,3.")],
    stream: Stream = None,
    dsn: Dsn = None,
    config: ConfigFile = None,
    destination: DestinationName = None,
) -> None:
    """Mark pulled entries done for the group; they are not delivered to it again."""
    try:
        wanted = _parse_ids(ids)
    except _Usage as exc:
        raise typer.Exit(_fail(str(exc))) from None
    result = _run(
        dsn, config, destination, stream, lambda conn, name: pgstream.ack_ids(conn, name, group, wanted)
    )
    typer.echo(f"acked {len(result.acked)} entr{'y' if len(result.acked) == 1 else 'ies'}")
    if result.already_acked:
        typer.echo(f"already acked: {_id_list(result.already_acked)}")
    if result.unknown:
        typer.echo(
            f"error: unknown to group {group} (not in the stream, or never pulled by the group):"
            f" {_id_list(result.unknown)}",
            err=True,
        )
        raise typer.Exit(EXIT_UNKNOWN_IDS)


@app.command("replay")
def replay_command(
    group: Group,
    since: Annotated[
        str, typer.Option("--since", help="ISO 8601 time, e.g. 2026-01-31T12:00:00Z (no zone: UTC).")
    ],
    stream: Stream = None,
    dsn: Dsn = None,
    config: ConfigFile = None,
    destination: DestinationName = None,
) -> None:
    """Deliver the group's entries created at or after --since again (un-ack them)."""
    try:
        when = _parse_time(since)
    except _Usage as exc:
        raise typer.Exit(_fail(str(exc))) from None
    count = _run(
        dsn, config, destination, stream, lambda conn, name: pgstream.replay(conn, name, group, when)
    )
    typer.echo(f"replayed {count} entr{'y' if count == 1 else 'ies'} for group {group}")


def _run(
    dsn: str | None,
    config: Path | None,
    destination: str | None,
    stream: str | None,
    action: Callable[[psycopg.Connection, str], T],
) -> T:
    """Resolve the target, connect, run `action(conn, stream)`; every failure ends as one line, exit 2."""
    try:
        dsn, stream = _target(dsn, config, destination, stream)
        with _connect(dsn) as conn:
            return action(conn, stream)
    except (_Usage, ConfigError, ValueError) as exc:
        raise typer.Exit(_fail(str(exc))) from None
    except psycopg.errors.UndefinedTable:
        raise typer.Exit(
            _fail(f"the database has no {pgstream.SCHEMA} tables: no pgstream destination has written there")
        ) from None
    except psycopg.Error as exc:
        raise typer.Exit(_fail(f"PostgreSQL: {first_line(exc)}")) from None


def _target(
    dsn: str | None, config: Path | None, destination: str | None, stream: str | None
) -> tuple[str, str]:
    """(dsn, stream) from the options, the configured destination filling in what is missing."""
    if (config is None) != (destination is None):
        raise _Usage("--config and --destination go together")
    if config is not None:
        settings = load_config(config)
        found = [d for d in settings.destinations if d.name == destination]
        if not found:
            raise _Usage(f"no destination named {destination!r} in {config}")
        chosen: Any = found[0]
        if chosen.type != "pgstream":
            raise _Usage(f"destination {destination!r} is of type {chosen.type}, not pgstream")
        dsn = dsn or chosen.dsn
        stream = stream or chosen.stream
    if not dsn:
        raise _Usage("give --dsn, or --config with --destination")
    if not stream:
        raise _Usage("give --stream (or --config with --destination to use its stream)")
    return dsn, stream


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection]:
    # Autocommit: each store function commits on its own, and pull's two steps are separate
    # transactions, so other consumers of the group are not held up.
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="wallaby-agent:stream")
    try:
        yield conn
    finally:
        conn.close()


def _parse_ids(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise _Usage("--ids needs at least one entry id, e.g. --ids 1,2,3")
    ids = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise _Usage(f"--ids: {part!r} is not an entry id (a positive whole number)")
        ids.append(int(part))
    return ids


def _parse_time(text: str) -> datetime.datetime:
    try:
        return parse_utc_time(text)
    except ValueError as exc:
        raise _Usage(f"--since: {exc}") from None


def _entry_dict(entry: pgstream.Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "seq": entry.seq,
        "table": entry.table_name,
        "op": entry.op,
        "delivery_count": entry.delivery_count,
        "created_at": entry.created_at.isoformat(),
        "visible_at": entry.visible_at.isoformat(),
        "envelope": entry.envelope,
    }


def _id_list(ids: list[int]) -> str:
    return ",".join(map(str, ids))


def _fail(message: str) -> int:
    # One line, whatever the message holds (server errors add detail lines).
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return EXIT_USAGE
