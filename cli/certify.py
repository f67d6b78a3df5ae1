"""`wallaby-agent certify`: check that a destination's copy of a table equals the source's table.

Exit codes: 0 equal, 1 different (the differing keys are printed), 2 the comparison could not
run (bad arguments, an unknown destination, a database or table that cannot be read), always
as one `error: ...` line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import psycopg
import typer

from agent.certify import CertifyError, CertifyResult, certify_table
from agent.config import load_config
from agent.errors import ConfigError, first_line

EXIT_EQUAL = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2


class _Usage(Exception):
    """A problem with the arguments: one line, exit code 2."""


def certify_command(
    source_dsn: Annotated[
        str | None, typer.Option("--source-dsn", help="The source PostgreSQL DSN (default: from --config).")
    ] = None,
    dest_dsn: Annotated[
        str | None,
        typer.Option("--dest-dsn", help="The copy: a PostgreSQL DSN, or a DuckDB file path (duckdb:PATH)."),
    ] = None,
    table: Annotated[str, typer.Option("--table", help="The table to compare, e.g. public.orders.")] = "",
    sample_rate: Annotated[
        float | None, typer.Option("--sample-rate", help="Compare this share of keys (0 < R <= 1).")
    ] = None,
    sample_limit: Annotated[
        int | None, typer.Option("--sample-limit", help="Compare at most this many sampled keys.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The agent's TOML configuration file.")
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--destination", help="A postgres or duckdb destination of --config.")
    ] = None,
) -> None:
    """Compare a source table with its copy: row count and a hash of every (or sampled) row."""
    try:
        if not table.strip():
            raise _Usage("give --table, e.g. --table public.orders")
        source, dest, kind, schema = _targets(source_dsn, dest_dsn, config, destination)
        result = certify_table(
            source, dest, _qualify(table), sample_rate, sample_limit, dest_kind=kind, dest_schema=schema
        )
    except (_Usage, CertifyError, ConfigError) as exc:
        raise typer.Exit(_fail(str(exc))) from None
    except psycopg.Error as exc:
        raise typer.Exit(_fail(f"PostgreSQL: {first_line(exc)}")) from None
    except Exception as exc:  # duckdb's errors, without importing duckdb for PostgreSQL copies
        if type(exc).__module__.split(".")[0] not in ("duckdb", "_duckdb"):
            raise
        raise typer.Exit(_fail(f"DuckDB: {first_line(exc)}")) from None
    if json_output:
        typer.echo(orjson.dumps(result.to_dict(), default=str).decode())
    else:
        _report(result)
    raise typer.Exit(EXIT_EQUAL if result.equal else EXIT_DIFFERENT)


def _qualify(table: str) -> str:
    table = table.strip()
    return table if "." in table else f"public.{table}"


def _targets(
    source_dsn: str | None, dest_dsn: str | None, config: Path | None, destination: str | None
) -> tuple[str, str, Any, str | None]:
    """(source DSN, copy DSN or path, "postgres" or "duckdb", the copy's schema or None)."""
    kind, schema, dest = "postgres", None, dest_dsn
    if destination is not None and config is None:
        raise _Usage("--destination needs --config")
    if config is not None:
        settings = load_config(config)
        if source_dsn is None:
            sources = [s for s in settings.sources if s.type == "postgres"]
            if len(sources) != 1:
                raise _Usage("the configuration has several PostgreSQL sources (or none): give --source-dsn")
            source_dsn = sources[0].dsn
        if destination is not None and dest_dsn is None:
            found = [d for d in settings.destinations if d.name == destination]
            if not found:
                raise _Usage(f"no destination named {destination!r} in {config}")
            chosen = found[0]
            if chosen.type == "postgres":
                dest, schema = chosen.dsn, chosen.schema_name
            elif chosen.type == "duckdb":
                dest, kind = os.fspath(chosen.path), "duckdb"
            else:
                raise _Usage(
                    f"destination {destination!r} is of type {chosen.type}: only postgres and duckdb copies can be certified"
                )
    if source_dsn is None:
        raise _Usage("give --source-dsn, or --config with one PostgreSQL source")
    if dest is None:
        raise _Usage("give --dest-dsn, or --config with --destination")
    if dest_dsn is not None:
        dest, kind = _dest_kind(dest_dsn)
    return source_dsn, dest, kind, schema


def _dest_kind(dest: str) -> tuple[str, str]:
    """A PostgreSQL URI or key=value DSN is postgres; `duckdb:PATH` or an existing file is DuckDB."""
    if dest.startswith("duckdb:"):
        return dest.removeprefix("duckdb:"), "duckdb"
    if dest.startswith(("postgres://", "postgresql://")) or "=" in dest:
        return dest, "postgres"
    if os.path.isfile(dest):
        return dest, "duckdb"
    raise _Usage(f"--dest-dsn {dest!r} is neither a PostgreSQL DSN nor an existing DuckDB file")


def _report(result: CertifyResult) -> None:
    scope = f"{result.compared_rows} sampled rows" if result.sampled else f"{result.source_rows} rows"
    if result.equal:
        typer.echo(f"{result.table}: equal to {result.dest_table} ({scope}, hash {result.source_hash})")
        return
    typer.echo(
        f"{result.table}: DIFFERENT from {result.dest_table}: source {result.source_rows} rows,"
        f" copy {result.dest_rows} rows; {result.differences} differing keys in {scope}"
    )
    if result.missing_columns:
        typer.echo(f"columns missing in the copy: {', '.join(result.missing_columns)}")
    for label, keys in (
        ("missing", result.missing),
        ("extra", result.extra),
        ("different", result.different),
    ):
        for key in keys:
            typer.echo(f"{label} {orjson.dumps(key, default=str).decode()}")
    listed = len(result.missing) + len(result.extra) + len(result.different)
    if listed < result.differences:
        typer.echo(f"... and {result.differences - listed} more")


def _fail(message: str) -> int:
    # One line, whatever the message holds (server errors add detail lines).
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return EXIT_USAGE
