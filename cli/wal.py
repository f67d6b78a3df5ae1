"""`wallaby-agent wal ...`: inspect, hexdump, verify and salvage segments; archive, clean up, stats.

Each command parses its arguments, calls one library function of `wal`, and renders the result as
plain text or, with --json, as one JSON object on stdout. Errors are left to the handler in
`cli.main`, which turns them into one line on stderr.
"""

import base64
import json
import os
from collections.abc import Iterator
from typing import Annotated, Any

import typer

import wal
from agent.change import ChangeFormatError, decode_change, is_change_payload
from wal import inspect as wal_inspect
from wal.archive import apply_retention
from wal.errors import NotALog
from wal.format import RECORD_OVERHEAD
from wal.fs import OS_FS
from wal.layout import is_log_dir
from wal.scan import DEFAULT_MAX_RECORD_BYTES
from wal.status import read_status
from wal.units import format_size, parse_duration, parse_size

DEFAULT_DATA_DIR = "~/.wallaby"
DATA_DIR_ENV = "WALLABY_DATA_DIR"
EXIT_CORRUPT = 1
_PREVIEW_CHARS = 60  # payload characters shown per record in text output

app = typer.Typer(
    help="Look after the write-ahead log: inspect, hexdump, verify, salvage, archive, cleanup, stats.",
    no_args_is_help=True,
)

DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        envvar=DATA_DIR_ENV,
        show_default=DEFAULT_DATA_DIR,
        help=(
            "The log directory. Commands without a PATH act on it, and a relative PATH that does "
            "not exist is also looked for in its wal/ and archive/ folders."
        ),
    ),
]
MaxRecordBytes = Annotated[
    int,
    typer.Option(
        "--max-record-bytes",
        min=RECORD_OVERHEAD,
        help="Largest plausible record, framing included; a longer length field counts as corruption.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def render_payload(payload: bytes) -> dict[str, Any]:
    """How a record's payload is shown: the one place that teaches the CLI to decode change records.

    A change record is `{"change": {...}}` (or, when it does not decode, its base64 and a
    `decode_error`); any other payload is `{"payload_text": ...}` when it is UTF-8, else
    `{"payload_base64": ...}`.
    """
    if is_change_payload(payload):
        try:
            return {"change": decode_change(payload).to_dict()}
        except ChangeFormatError as exc:
            return {"payload_base64": base64.b64encode(payload).decode("ascii"), "decode_error": str(exc)}
    try:
        return {"payload_text": payload.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_base64": base64.b64encode(payload).decode("ascii")}


# --- inspect ----------------------------------------------------------------------------------


@app.command("inspect")
def inspect_command(
    path: Annotated[
        str | None,
        typer.Argument(help="A .wal segment, a .wal.zst archive, or a log directory (default: --data-dir)."),
    ] = None,
    records: Annotated[
        bool, typer.Option("--records", help="Also list every intact record with its payload.")
    ] = False,
    as_json: AsJson = False,
    max_record_bytes: MaxRecordBytes = DEFAULT_MAX_RECORD_BYTES,
    data_dir: DataDir = None,
) -> None:
    """Show what a segment, an archive or a whole log holds: records, sequence and time ranges, sizes, corruption.

    Exits 0 whenever it can show a report, corrupt or not (use `verify` to test for corruption),
    and 2 when PATH cannot be read or is not a segment or log at all.
    """
    root = _data_dir(data_dir)
    target = _locate(path, root) if path is not None else root
    report: wal_inspect.FileReport | wal_inspect.LogReport
    if os.path.isdir(target):
        report = wal_inspect.inspect_log(target, max_record_bytes=max_record_bytes, with_records=records)
    else:
        report = wal_inspect.inspect_file(target, max_record_bytes=max_record_bytes, with_records=records)
        if not report.header_ok and report.record_count == 0:
            raise NotALog(f"{target}: not an ARWAL001 segment: {report.damages[0].reason}")
    if as_json:
        _echo_json(_inspect_json(report))
        return
    lines = _describe_log(report) if isinstance(report, wal_inspect.LogReport) else _describe_file(report)
    for line in lines:
        typer.echo(line)
    if records:
        for line in _describe_records(report):
            typer.echo(line)


def _inspect_json(report: wal_inspect.FileReport | wal_inspect.LogReport) -> dict[str, Any]:
    data = report.to_dict(render_payload)
    if (
        isinstance(report, wal_inspect.LogReport)
        and report.segments
        and report.segments[0].records is not None
    ):
        # One list for the whole log rather than one per segment.
        data["record_list"] = [
            record for segment in data["segments"] for record in segment.pop("record_list")
        ]
    return data


def _describe_file(report: wal_inspect.FileReport) -> Iterator[str]:
    yield f"file          {report.path}"
    if report.header_ok:
        yield f"header        ARWAL001 version {report.version}"
    else:
        yield f"header        BAD ({report.damages[0].reason})"
    if report.archived:
        uncompressed = "unknown" if report.uncompressed_bytes is None else f"{report.uncompressed_bytes}"
        yield f"size          {report.file_bytes} bytes on disk, {uncompressed} bytes uncompressed"
    else:
        yield f"size          {report.file_bytes} bytes"
    yield from _describe_contents(
        report.record_count,
        report.first_seq,
        report.last_seq,
        report.first_timestamp_ms,
        report.last_timestamp_ms,
        report.payload_bytes,
    )
    yield from _describe_damages(report.damages, with_file=False)


def _describe_log(report: wal_inspect.LogReport) -> Iterator[str]:
    yield f"log           {report.root}"
    yield f"segments      {len(report.segments)}, {report.file_bytes} bytes on disk"
    yield from _describe_contents(
        report.record_count,
        report.first_seq,
        report.last_seq,
        report.first_timestamp_ms,
        report.last_timestamp_ms,
        report.payload_bytes,
    )
    yield from _describe_damages(report.damages, with_file=True)
    if report.segments:
        yield ""
        yield f"{'SEGMENT':<45} {'RECORDS':>8} {'FIRST SEQ':>10} {'LAST SEQ':>10} {'BYTES':>10}  STATUS"
        for segment in report.segments:
            name = os.path.relpath(segment.path, report.root)
            status = "ok" if segment.ok else f"{len(segment.damages)} corruption(s)"
            yield (
                f"{name:<45} {segment.record_count:>8} {_or_dash(segment.first_seq):>10} "
                f"{_or_dash(segment.last_seq):>10} {segment.file_bytes:>10}  {status}"
            )


def _describe_contents(
    count: int,
    first_seq: int | None,
    last_seq: int | None,
    first_ms: int | None,
    last_ms: int | None,
    payload_bytes: int,
) -> Iterator[str]:
    if count:
        yield f"records       {count} (seq {first_seq} .. {last_seq}), {payload_bytes} payload bytes"
        first_time = wal_inspect.format_timestamp_ms(first_ms)
        last_time = wal_inspect.format_timestamp_ms(last_ms)
        yield f"time          {first_time} .. {last_time}"
    else:
        yield "records       0"


def _describe_damages(damages: tuple[wal_inspect.DamageInfo, ...], *, with_file: bool) -> Iterator[str]:
    if not damages:
        yield "corruptions   none"
        return
    yield f"corruptions   {len(damages)}"
    for damage in damages:
        where = f"{damage.file}: " if with_file else ""
        yield f"  {where}{_describe_damage(damage)}"


def _describe_damage(damage: wal_inspect.DamageInfo) -> str:
    text = f"offset {damage.offset}"
    if damage.bytes_lost:
        text += f"..{damage.end_offset} ({damage.bytes_lost} bytes)"
    text += f": {damage.reason}"
    if damage.records_skipped:
        text += f"; {damage.records_skipped} record(s) lost"
    if damage.at_end:
        text += "; runs to the end of the data"
    return text


def _describe_records(report: wal_inspect.FileReport | wal_inspect.LogReport) -> Iterator[str]:
    segments = report.segments if isinstance(report, wal_inspect.LogReport) else (report,)
    yield ""
    yield f"{'SEQ':>10}  {'TIME':<24}  {'OFFSET':>10}  {'LENGTH':>8}  PAYLOAD"
    for segment in segments:
        for record in segment.records or ():
            time = wal_inspect.format_timestamp_ms(record.timestamp_ms)
            yield (
                f"{record.seq:>10}  {time:<24}  {record.offset:>10}  {record.length:>8}  "
                f"{_preview(record.payload)}"
            )


def _preview(payload: bytes) -> str:
    kind, value = next(iter(render_payload(payload).items()))  # the first: what the payload holds
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else json.dumps(value)
    if len(text) > _PREVIEW_CHARS:
        text = text[: _PREVIEW_CHARS - 3] + "..."
    return f"{kind.removeprefix('payload_')}: {text}"


# --- hexdump ----------------------------------------------------------------------------------


@app.command("hexdump")
def hexdump_command(
    path: Annotated[str, typer.Argument(help="A .wal segment or .wal.zst archive.")],
    offset: Annotated[
        int | None,
        typer.Option(
            "--offset", min=0, help="Start of the byte window (an uncompressed offset for archives)."
        ),
    ] = None,
    length: Annotated[
        int | None, typer.Option("--length", min=1, help="Size of the byte window, from --offset.")
    ] = None,
    record: Annotated[
        int | None, typer.Option("--record", help="Show only the intact record with this sequence number.")
    ] = None,
    max_record_bytes: MaxRecordBytes = DEFAULT_MAX_RECORD_BYTES,
    data_dir: DataDir = None,
) -> None:
    """Dump a segment's bytes with the header and every record field labelled, and damaged bytes marked."""
    target = _locate(path, _data_dir(data_dir))
    lines = wal_inspect.hexdump(
        target, offset=offset, length=length, record_seq=record, max_record_bytes=max_record_bytes
    )
    for line in lines:
        typer.echo(line)


# --- verify -----------------------------------------------------------------------------------


@app.command("verify")
def verify_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Segments, archives or log directories to check (default: --data-dir)."),
    ] = None,
    as_json: AsJson = False,
    max_record_bytes: MaxRecordBytes = DEFAULT_MAX_RECORD_BYTES,
    data_dir: DataDir = None,
) -> None:
    """Check that every record is intact. Exit 0 if so, 1 on corruption (saying where), 2 on bad usage."""
    root = _data_dir(data_dir)
    targets = [_locate(path, root) for path in paths] if paths else [root]
    reports = wal_inspect.verify(targets, max_record_bytes=max_record_bytes)
    ok = all(report.ok for report in reports)
    if as_json:
        _echo_json(
            {
                "ok": ok,
                "files": [report.to_dict() for report in reports],
                "corruptions": [damage.to_dict() for report in reports for damage in report.damages],
            }
        )
    else:
        for report in reports:
            if report.ok:
                typer.echo(f"ok       {report.path} ({report.record_count} records)")
            for damage in report.damages:
                typer.echo(f"CORRUPT  {damage.file}: {_describe_damage(damage)}")
        corrupt = sum(not report.ok for report in reports)
        typer.echo(f"{len(reports)} file(s) checked, {corrupt} corrupt")
    if not ok:
        raise typer.Exit(EXIT_CORRUPT)


# --- salvage ----------------------------------------------------------------------------------


@app.command("salvage")
def salvage_command(
    path: Annotated[str, typer.Argument(help="The damaged .wal segment or .wal.zst archive to read.")],
    output: Annotated[
        str,
        typer.Option(
            "-o", "--output", help="Where to write the new segment; an existing file is never replaced."
        ),
    ],
    as_json: AsJson = False,
    max_record_bytes: MaxRecordBytes = DEFAULT_MAX_RECORD_BYTES,
    data_dir: DataDir = None,
) -> None:
    """Copy every intact record of a damaged segment into a new, clean segment, and say what was lost."""
    source = _locate(path, _data_dir(data_dir))
    report = wal_inspect.salvage(source, output, max_record_bytes=max_record_bytes)
    if as_json:
        _echo_json(report.to_dict())
        return
    seq_range = f" (seq {report.first_seq} .. {report.last_seq})" if report.records_recovered else ""
    typer.echo(
        f"recovered {report.records_recovered} record(s){seq_range} from {report.source} into {report.output}"
    )
    if not report.damages:
        typer.echo("nothing lost: every record was intact")
        return
    lost = "an unknown number of" if report.records_lost is None else str(report.records_lost)
    typer.echo(f"lost {lost} record(s) in {len(report.damages)} damaged region(s):")
    for damage in report.damages:
        typer.echo(f"  {_describe_damage(damage)}")


# --- log maintenance ----------------------------------------------------------------------


@app.command("archive")
def archive_command(data_dir: DataDir = None) -> None:
    """Archive now every sealed segment that every cursor has passed (zstd, then the original is removed).

    A running agent archives by itself; this command opens the log, so it refuses while one runs.
    """
    root = _data_dir(data_dir)
    if not is_log_dir(OS_FS, root):
        raise NotALog(f"{root}: not a log directory (no wal/ or archive/ folder)")
    with wal.open(root, auto_archive=False, min_free_bytes=0) as log:
        archived = log.archive()
    for item in archived:
        typer.echo(
            f"archived {os.path.basename(item.source)}: {format_size(item.original_bytes)} -> "
            f"{format_size(item.archived_bytes)}"
        )
    typer.echo(f"{len(archived)} segment(s) archived")


@app.command("drop-cursor")
def drop_cursor_command(
    name: Annotated[
        str, typer.Argument(help="The cursor's name, e.g. dest.webhook (see `wallaby-agent status`).")
    ],
    data_dir: DataDir = None,
) -> None:
    """Remove a cursor no destination uses any more, so archiving can go past it.

    A destination taken out of the configuration leaves its cursor behind, holding back the
    archiving of every later segment. This opens the log, so it refuses while the agent runs.
    """
    root = _data_dir(data_dir)
    if not is_log_dir(OS_FS, root):
        raise NotALog(f"{root}: not a log directory (no wal/ or archive/ folder)")
    with wal.open(root, auto_archive=False, min_free_bytes=0) as log:
        positions = log.cursors()
        if name not in positions:
            known = ", ".join(sorted(positions)) or "none"
            raise typer.BadParameter(f"no cursor named {name!r} (cursors: {known})", param_hint="NAME")
        log.drop_cursor(name)
    typer.echo(f"dropped cursor {name} (it was at {positions[name]})")


@app.command("cleanup")
def cleanup_command(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Delete archives older than this: 12h, 7d, 30d, 2w ...")
    ] = "30d",
    max_total: Annotated[
        str | None,
        typer.Option(
            "--max-total", help="Then delete the oldest archives until they fit in this size (e.g. 10GiB)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Delete archived segments by age (and optionally by total size), oldest first. Live segments are never touched."""
    root = _data_dir(data_dir)
    if not is_log_dir(OS_FS, root):
        raise NotALog(f"{root}: not a log directory (no wal/ or archive/ folder)")
    try:
        max_age_s = parse_duration(older_than)
        max_total_bytes = parse_size(max_total) if max_total is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    removed = apply_retention(
        OS_FS, root, max_age_s=max_age_s, max_total_bytes=max_total_bytes, dry_run=dry_run
    )
    verb = "would delete" if dry_run else "deleted"
    for item in removed:
        age_days = item.age_s / 86400
        typer.echo(
            f"{verb} {os.path.basename(item.path)} ({format_size(item.size_bytes)}, {age_days:.1f} days old, by {item.reason})"
        )
    total = sum(item.size_bytes for item in removed)
    typer.echo(
        f"{len(removed)} archive(s) {'would be deleted' if dry_run else 'deleted'}, {format_size(total)}"
    )


@app.command("stats")
def stats_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show a log's sequence range, live and archived sizes, compression, cursors and how far behind they are."""
    status = read_status(_data_dir(data_dir))
    if as_json:
        _echo_json(status.to_dict())
        return
    ratio = f"{status.compression_ratio:.2f}x" if status.compression_ratio else "-"
    lines = [
        f"log           {status.root}",
        f"writer        {'process ' + str(status.writer_pid) if status.writer_pid else 'not running'}",
        f"sequences     {_or_dash(status.first_seq)} .. {_or_dash(status.last_seq)}",
        f"live          {status.live_segments} segment(s), {format_size(status.live_bytes)}",
        f"archived      {status.archives} archive(s), {format_size(status.archive_bytes)} (ratio {ratio})",
        f"quarantine    {len(status.quarantine_files)} file(s)",
    ]
    for cursor in status.cursors:
        lines.append(f"cursor        {cursor.name}: at {cursor.position}, {cursor.behind} record(s) behind")
    typer.echo("\n".join(lines))


# --- helpers ----------------------------------------------------------------------------------


def _data_dir(option: str | None) -> str:
    return os.path.expanduser(option or DEFAULT_DATA_DIR)


def _locate(path: str, data_dir: str) -> str:
    """PATH as given when it exists; otherwise the same relative name inside the data directory."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    for folder in ("wal", "archive", ""):
        candidate = os.path.join(data_dir, folder, path)
        if os.path.exists(candidate):
            return candidate
    return path  # so the error names what the user typed


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _echo_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
