"""`wallaby-agent wal replay`: re-send what is on disk to destinations, without moving cursors."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

import wal
from agent.config import load_config
from agent.destinations import build_destination
from agent.dlq import DeadLetters
from agent.replay import ReplayTarget, records_from_files, replay
from agent.state import StateStore
from wal.status import read_status

from .times import parse_utc_time


def _since_ms(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        moment = parse_utc_time(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    return int(moment.timestamp() * 1000)


class _Progress:
    """A one-line progress bar on standard error (a terminal only)."""

    WIDTH = 30

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        if self.total:
            share = min(self.done / self.total, 1.0)
            filled = int(share * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"[{bar}] {share:4.0%}  {self.done:,}/{self.total:,} records  {rate:,.0f}/s"
        else:
            line = f"{self.done:,} records  {rate:,.0f}/s"
        typer.echo(f"\r{line}", nl=False, err=True)

    def finish(self) -> None:
        typer.echo("", err=True)


def replay_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Segment or archive files to replay (instead of --all).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="WALLABY_CONFIG", help="The agent's configuration."),
    ] = None,
    all_records: Annotated[
        bool, typer.Option("--all", help="Everything still on disk: archives, then live segments.")
    ] = False,
    to: Annotated[
        str | None, typer.Option("--to", help="Only this destination (default: every one).")
    ] = None,
    from_seq: Annotated[int, typer.Option("--from-seq", min=1, help="Start at this sequence number.")] = 1,
    since: Annotated[
        str | None, typer.Option("--since", help="Only records appended at or after this time (ISO 8601).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be sent; send nothing.")
    ] = False,
) -> None:
    """Re-send records still on disk to destinations, in order, without moving their cursors."""
    if config is None:
        raise typer.BadParameter(
            "replay needs the agent's configuration (--config) to know the destinations",
            param_hint="--config",
        )
    if bool(paths) == all_records:
        raise typer.BadParameter(
            "give either --all or segment files to replay, not both", param_hint="PATH / --all"
        )
    settings = load_config(config)
    chosen = [d for d in settings.destinations if to is None or d.name == to]
    if not chosen:
        where = f"destination {to!r} is not" if to else "no destinations are"
        raise typer.BadParameter(f"{where} configured in {config}", param_hint="--to")
    since_ms = _since_ms(since)
    data_dir = os.fspath(settings.data_dir)
    if paths:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise typer.BadParameter(f"no such file: {missing[0]}", param_hint="PATH")
        records = (r for r in records_from_files([os.fspath(p) for p in paths]) if r.seq >= from_seq)
    else:
        records = wal.read_log(data_dir, from_seq)
    state = StateStore(data_dir)
    dead_letters = DeadLetters(data_dir)
    try:
        targets = [ReplayTarget(build_destination(d, state), d.retry, frozenset(d.tables)) for d in chosen]
        total = None
        if not paths:
            status = read_status(data_dir)
            if status.last_seq is not None:
                total = max(0, status.last_seq - max(from_seq, status.first_seq or 1) + 1)
        bar = _Progress(total) if sys.stderr.isatty() else None
        summary = replay(
            records,
            targets,
            dead_letters,
            since_ms=since_ms,
            dry_run=dry_run,
            progress=bar.advance if bar is not None else None,
        )
        if bar is not None:
            bar.finish()
    finally:
        dead_letters.close()
        state.close()
    verb = "would send" if dry_run else "sent"
    span = f"seq {summary.first_seq}..{summary.last_seq}" if summary.first_seq is not None else "nothing"
    typer.echo(
        f"read {summary.read:,} records ({span}) in {summary.seconds:.1f} s; skipped {summary.skipped:,}"
    )
    for name, count in summary.sent.items():
        dead = summary.dead_lettered.get(name, 0)
        typer.echo(f"  {name}: {verb} {count:,}" + (f", dead-lettered {dead:,}" if dead else ""))
    if any(summary.dead_lettered.values()):
        raise typer.Exit(1)
