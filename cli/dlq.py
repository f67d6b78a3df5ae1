"""`wallaby-agent dlq list|show|replay|purge`: the records destinations refused for good."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Annotated

import orjson
import typer

from agent.change import ChangeFormatError, decode_change
from agent.config import load_config
from agent.delivery import Delivery
from agent.destinations import DestinationError, build_destination
from agent.dlq import DeadLetter, DeadLetters
from agent.state import StateStore
from wal.units import parse_duration

from .state_options import StateConfig, StateDataDir, resolve_data_dir

app = typer.Typer(help="Dead letters: records a destination refused for good.", no_args_is_help=True)

DestinationOption = Annotated[str | None, typer.Option("--destination", "-d", help="Only this destination.")]


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command("list")
def list_command(
    destination: DestinationOption = None,
    all_letters: Annotated[bool, typer.Option("--all", help="Include replayed dead letters.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    config: StateConfig = None,
    data_dir: StateDataDir = None,
) -> None:
    """List dead letters, oldest first."""
    store = DeadLetters(resolve_data_dir(config, data_dir))
    try:
        letters = store.list(destination, include_replayed=all_letters)
    finally:
        store.close()
    if json_output:
        for letter in letters:
            typer.echo(orjson.dumps(_summary(letter)).decode())
        return
    if not letters:
        typer.echo("no dead letters")
        return
    typer.echo(f"{'ID':>6}  {'DESTINATION':<16} {'SEQ':>10}  {'FAILED AT':<20}  {'TRIES':>5}  ERROR")
    for letter in letters:
        replayed = " (replayed)" if letter.replayed_at else ""
        typer.echo(
            f"{letter.id:>6}  {letter.destination:<16} {letter.seq:>10}  {_when(letter.failed_at):<20}  "
            f"{letter.attempts:>5}  {letter.error[:80]}{replayed}"
        )


@app.command("show")
def show_command(
    letter_id: Annotated[int, typer.Argument(metavar="ID", help="The dead letter's id (from dlq list).")],
    config: StateConfig = None,
    data_dir: StateDataDir = None,
) -> None:
    """Show one dead letter: the error and the record as it was in the log."""
    store = DeadLetters(resolve_data_dir(config, data_dir))
    try:
        letter = store.get(letter_id)
    finally:
        store.close()
    if letter is None:
        raise typer.BadParameter(f"no dead letter with id {letter_id}", param_hint="ID")
    summary = _summary(letter)
    try:
        summary["record"] = decode_change(letter.payload).to_dict()
    except ChangeFormatError:
        summary["record"] = letter.payload.decode("utf-8", errors="replace")
    typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


@app.command("replay")
def replay_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", envvar="WALLABY_CONFIG", help="The agent's configuration.")
    ],
    destination: DestinationOption = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Comma-separated ids (default: all).")] = None,
) -> None:
    """Send dead letters to their destination again; those delivered are marked replayed."""
    settings = load_config(config)
    data_dir = os.fspath(settings.data_dir)
    wanted = None if ids is None else {int(part) for part in ids.split(",") if part.strip()}
    store = DeadLetters(data_dir)
    state = StateStore(data_dir)
    delivered = failed = 0
    try:
        letters = [letter for letter in store.list(destination) if wanted is None or letter.id in wanted]
        configs = {d.name: d for d in settings.destinations}
        for name in sorted({letter.destination for letter in letters}):
            if name not in configs:
                typer.echo(f"skipped: destination {name} is not in {config}", err=True)
                failed += sum(1 for letter in letters if letter.destination == name)
                continue
            target = build_destination(configs[name], state)
            target.open()
            try:
                for letter in (x for x in letters if x.destination == name):
                    try:
                        change = decode_change(letter.payload)
                        target.write(
                            [Delivery(letter.seq, change, letter.idempotency_key, 0, len(letter.payload))]
                        )
                    except (DestinationError, ChangeFormatError) as exc:
                        failed += 1
                        typer.echo(f"dead letter {letter.id}: still refused: {exc}", err=True)
                        continue
                    store.mark_replayed([letter.id])
                    delivered += 1
            finally:
                target.close()
    finally:
        state.close()
        store.close()
    typer.echo(f"replayed {delivered} dead letter(s), {failed} still failing")
    if failed:
        raise typer.Exit(1)


@app.command("purge")
def purge_command(
    older_than: Annotated[str, typer.Option("--older-than", help="Age, e.g. 30d, 12h.")],
    destination: DestinationOption = None,
    config: StateConfig = None,
    data_dir: StateDataDir = None,
) -> None:
    """Delete dead letters that failed longer ago than --older-than."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    store = DeadLetters(resolve_data_dir(config, data_dir))
    try:
        removed = store.purge(seconds, destination)
    finally:
        store.close()
    typer.echo(f"purged {removed} dead letter(s)")


def _summary(letter: DeadLetter) -> dict[str, object]:
    return letter.summary(_when)
