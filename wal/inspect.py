"""Looking inside segments and logs from the outside: inspect, verify, salvage and hexdump.

Nothing here takes the writer lock or changes a file in place; `salvage` only ever writes a new
file. This module reports on files and logs (`inspect_file`, `inspect_log`, `verify`) and gathers
the rest for the CLI: the report types (report.py), `salvage` (salvage.py) and `hexdump`
(hexdump.py). All of them read files through file_scan.py, which reads on past a bad header and
counts offsets in the uncompressed segment, also for a `.wal.zst` archive.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import replace

from .errors import NotALog
from .file_scan import HeaderCheck, scan_file
from .format import HEADER_SIZE
from .fs import OS_FS
from .hexdump import hexdump
from .layout import is_log_dir, list_segments, parse_first_seq
from .report import (
    DamageInfo,
    FileReport,
    LogReport,
    PayloadRenderer,
    RecordInfo,
    SequenceGap,
    format_timestamp_ms,
    payload_base64,
)
from .salvage import SalvageReport, salvage
from .scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord
from .segment import is_archive

__all__ = [
    "DamageInfo",
    "FileReport",
    "LogReport",
    "PayloadRenderer",
    "RecordInfo",
    "SalvageReport",
    "SequenceGap",
    "format_timestamp_ms",
    "hexdump",
    "inspect_file",
    "inspect_log",
    "payload_base64",
    "salvage",
    "segment_paths",
    "verify",
]


def inspect_file(
    path: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, with_records: bool = False
) -> FileReport:
    """Report on one `.wal` or `.wal.zst` file; damage (a bad header too) is reported, not raised."""
    file_bytes = OS_FS.size(path)
    header: HeaderCheck | None = None
    data_bytes: int | None = None
    records: list[RecordInfo] = []
    damages: list[DamageInfo] = []
    count = payload_bytes = 0
    first: RawRecord | None = None
    last: RawRecord | None = None
    for item in scan_file(path, max_record_bytes):
        if isinstance(item, RawRecord):
            count += 1
            payload_bytes += len(item.payload)
            first = first or item
            last = item
            if with_records:
                records.append(
                    RecordInfo(
                        item.seq, item.timestamp_ms, item.status, item.offset, item.length, item.payload
                    )
                )
        elif isinstance(item, Damage):
            damages.append(DamageInfo.from_damage(path, item))
        elif isinstance(item, HeaderCheck):
            header = item
            if item.error is not None:
                damages.append(DamageInfo.from_bad_header(path, item))
        else:
            data_bytes = item.data_bytes
    assert header is not None  # scan_file always yields the header first
    return FileReport(
        path=path,
        archived=is_archive(path),
        header_ok=header.error is None,
        version=header.version,
        file_bytes=file_bytes,
        uncompressed_bytes=data_bytes,
        record_count=count,
        first_seq=first.seq if first else None,
        last_seq=last.seq if last else None,
        first_timestamp_ms=first.timestamp_ms if first else None,
        last_timestamp_ms=last.timestamp_ms if last else None,
        payload_bytes=payload_bytes,
        damages=tuple(damages),
        records=tuple(records) if with_records else None,
    )


def inspect_log(
    root: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, with_records: bool = False
) -> LogReport:
    """Report on every segment of a log directory (or a plain directory of segment files)."""
    reports = [
        inspect_file(path, max_record_bytes=max_record_bytes, with_records=with_records)
        for path in segment_paths(root)
    ]
    linked, gaps = _link_segments(reports)
    return LogReport(root, tuple(linked), tuple(gaps))


def segment_paths(root: str) -> list[str]:
    """The segment files of a log directory, or of a plain directory of them, by first sequence."""
    if not os.path.isdir(root):
        code = errno.ENOTDIR if os.path.exists(root) else errno.ENOENT
        raise (NotADirectoryError if code == errno.ENOTDIR else FileNotFoundError)(
            code, os.strerror(code), root
        )
    if is_log_dir(OS_FS, root):
        return [segment.path for segment in list_segments(OS_FS, root)]
    by_first_seq: dict[int, str] = {}
    # "<seq>.wal" sorts before "<seq>.wal.zst": as in a log directory, the live copy wins.
    for name in sorted(OS_FS.listdir(root)):
        first = parse_first_seq(name)
        if first is not None:
            by_first_seq.setdefault(first, os.path.join(root, name))
    if not by_first_seq:
        raise NotALog(
            f"{root}: not a log directory (no wal/ or archive/ folder) and holds no segment files "
            "named <first seq, 20 digits>.wal or .wal.zst"
        )
    return [by_first_seq[first] for first in sorted(by_first_seq)]


def _link_segments(reports: list[FileReport]) -> tuple[list[FileReport], list[SequenceGap]]:
    """Find where one segment's sequence numbers do not follow on from the previous one's."""
    linked: list[FileReport] = []
    gaps: list[SequenceGap] = []
    previous: FileReport | None = None  # the last segment holding a record
    for report in reports:
        named_first = parse_first_seq(os.path.basename(report.path))
        first = named_first if named_first is not None else report.first_seq
        last = previous.last_seq if previous is not None else None
        if previous is not None and last is not None and first is not None and first != last + 1:
            gap = SequenceGap(previous.path, report.path, last, first)
            gaps.append(gap)
            skipped = gap.records_missing if gap.records_missing > 0 else None
            marker = DamageInfo(
                report.path, HEADER_SIZE, HEADER_SIZE, gap.reason, False, skipped, last, first
            )
            report = replace(report, damages=(marker, *report.damages))
        if report.last_seq is not None:
            previous = report
        linked.append(report)
    return linked, gaps


def verify(paths: Iterable[str], *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> list[FileReport]:
    """One report per file (a directory stands for its segments); check `all(r.ok for r in ...)`.

    Every path is checked to exist before any is read, so a typo fails fast rather than after
    minutes of scanning.
    """
    paths = list(paths)
    for path in paths:
        os.stat(path)
    reports: list[FileReport] = []
    for path in paths:
        if os.path.isdir(path):
            reports.extend(inspect_log(path, max_record_bytes=max_record_bytes).segments)
        else:
            reports.append(inspect_file(path, max_record_bytes=max_record_bytes))
    return reports
