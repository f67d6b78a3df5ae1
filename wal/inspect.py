"""Looking inside segments and logs from the outside: inspect, verify, salvage and hexdump.

Nothing here takes the writer lock or changes a file in place; `salvage` only ever writes a new
file. A segment is read even when its header is bad: records after a damaged header are still
worth reporting and recovering. Offsets are always offsets in the uncompressed segment, also for
a `.wal.zst` archive.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import zstandard

from .durable import TMP_SUFFIX, rename_durably
from .errors import BadHeader, NotALog, WalError
from .format import (
    HEADER,
    HEADER_SIZE,
    LENGTH,
    RECORD_OVERHEAD,
    RECORD_PREFIX,
    RECORD_PREFIX_SIZE,
    SEGMENT_HEADER,
    STATUS_PENDING,
    check_header,
    record_crc,
)
from .fs import OS_FS
from .layout import is_log_dir, list_segments, parse_first_seq
from .scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord, scan_records
from .segment import is_archive

PayloadRenderer = Callable[[bytes], dict[str, Any]]

# zstd hands out data in blocks of this size; larger reads cost memory and buy nothing.
_ZSTD_READ_BYTES = 1 << 20
_DUMP_WIDTH = 16  # bytes per hexdump line
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def payload_base64(payload: bytes) -> dict[str, Any]:
    """The default JSON rendering of a payload: `{"payload_base64": ...}`."""
    return {"payload_base64": base64.b64encode(payload).decode("ascii")}


def format_timestamp_ms(timestamp_ms: int | None) -> str | None:
    """`2023-11-14T22:13:20.001Z` for milliseconds since the epoch; None stays None."""
    if timestamp_ms is None:
        return None
    try:
        moment = _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        return "out of range"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class DamageInfo:
    """A byte range of one file that holds no intact record, or a jump in sequence numbers."""

    file: str
    offset: int
    end_offset: int  # equal to offset for a sequence jump, which loses no bytes
    reason: str
    at_end: bool  # the damage runs to the end of the data (a torn tail, in a log's last segment)
    records_skipped: int | None  # sequence numbers lost, when the records on both sides are known
    last_seq_before: int | None = None
    next_seq_after: int | None = None

    @classmethod
    def from_damage(cls, file: str, damage: Damage) -> DamageInfo:
        return cls(
            file,
            damage.offset,
            damage.end_offset,
            damage.reason,
            damage.at_end,
            damage.records_skipped,
            damage.last_seq_before,
            damage.next_seq_after,
        )

    @property
    def bytes_lost(self) -> int:
        return self.end_offset - self.offset

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_lost": self.bytes_lost}


@dataclass(frozen=True)
class RecordInfo:
    """One intact record and where it sits in its file."""

    seq: int
    timestamp_ms: int
    status: int
    offset: int
    length: int
    payload: bytes

    def to_dict(self, render_payload: PayloadRenderer = payload_base64) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "timestamp_ms": self.timestamp_ms,
            "time": format_timestamp_ms(self.timestamp_ms),
            "status": self.status,
            "offset": self.offset,
            "length": self.length,
            **render_payload(self.payload),
        }


@dataclass(frozen=True)
class FileReport:
    """What one segment or archive holds, and every damaged region in it."""

    path: str
    archived: bool
    header_ok: bool
    version: int | None
    file_bytes: int  # on disk
    uncompressed_bytes: int | None  # the segment's bytes (decompressed); None if decompression failed
    record_count: int
    first_seq: int | None
    last_seq: int | None
    first_timestamp_ms: int | None
    last_timestamp_ms: int | None
    payload_bytes: int
    damages: tuple[DamageInfo, ...]  # a bad header included, at offset 0
    records: tuple[RecordInfo, ...] | None = None  # only when asked for

    @property
    def ok(self) -> bool:
        """True when the header and every byte after it are intact."""
        return self.header_ok and not self.damages

    def to_dict(self, render_payload: PayloadRenderer = payload_base64) -> dict[str, Any]:
        result: dict[str, Any] = {
            "file": self.path,
            "archived": self.archived,
            "ok": self.ok,
            "header_ok": self.header_ok,
            "version": self.version,
            "file_bytes": self.file_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "records": self.record_count,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_timestamp_ms": self.first_timestamp_ms,
            "last_timestamp_ms": self.last_timestamp_ms,
            "first_time": format_timestamp_ms(self.first_timestamp_ms),
            "last_time": format_timestamp_ms(self.last_timestamp_ms),
            "payload_bytes": self.payload_bytes,
            "corruptions": [damage.to_dict() for damage in self.damages],
        }
        if self.records is not None:
            result["record_list"] = [record.to_dict(render_payload) for record in self.records]
        return result


@dataclass(frozen=True)
class SequenceGap:
    """Two neighbouring segments whose sequence numbers do not follow on."""

    previous_file: str
    next_file: str
    last_seq: int  # the last intact record of the previous segment
    next_seq: int  # the first sequence of the next segment (from its name when it has one)

    @property
    def records_missing(self) -> int:
        """How many sequence numbers are missing; negative when the segments overlap."""
        return self.next_seq - self.last_seq - 1

    @property
    def reason(self) -> str:
        kind = "gap" if self.records_missing > 0 else "overlap"
        return (
            f"sequence {kind} between segments: {os.path.basename(self.previous_file)} ends at "
            f"{self.last_seq}, {os.path.basename(self.next_file)} starts at {self.next_seq}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "records_missing": self.records_missing, "reason": self.reason}


@dataclass(frozen=True)
class LogReport:
    """Every segment of a log directory, in sequence order, and the gaps between them.

    A gap also appears as a zero-length damage at the start of the later segment's report, so
    `damages` and each segment's `ok` account for it.
    """

    root: str
    segments: tuple[FileReport, ...]
    gaps: tuple[SequenceGap, ...]

    @property
    def ok(self) -> bool:
        return all(segment.ok for segment in self.segments)

    @property
    def damages(self) -> tuple[DamageInfo, ...]:
        return tuple(damage for segment in self.segments for damage in segment.damages)

    @property
    def record_count(self) -> int:
        return sum(segment.record_count for segment in self.segments)

    @property
    def first_seq(self) -> int | None:
        return next((s.first_seq for s in self.segments if s.first_seq is not None), None)

    @property
    def last_seq(self) -> int | None:
        return next((s.last_seq for s in reversed(self.segments) if s.last_seq is not None), None)

    @property
    def first_timestamp_ms(self) -> int | None:
        return next((s.first_timestamp_ms for s in self.segments if s.record_count), None)

    @property
    def last_timestamp_ms(self) -> int | None:
        return next((s.last_timestamp_ms for s in reversed(self.segments) if s.record_count), None)

    @property
    def file_bytes(self) -> int:
        return sum(segment.file_bytes for segment in self.segments)

    @property
    def payload_bytes(self) -> int:
        return sum(segment.payload_bytes for segment in self.segments)

    def to_dict(self, render_payload: PayloadRenderer = payload_base64) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "records": self.record_count,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_timestamp_ms": self.first_timestamp_ms,
            "last_timestamp_ms": self.last_timestamp_ms,
            "first_time": format_timestamp_ms(self.first_timestamp_ms),
            "last_time": format_timestamp_ms(self.last_timestamp_ms),
            "file_bytes": self.file_bytes,
            "payload_bytes": self.payload_bytes,
            "corruptions": [damage.to_dict() for damage in self.damages],
            "gaps": [gap.to_dict() for gap in self.gaps],
            "segments": [segment.to_dict(render_payload) for segment in self.segments],
        }


@dataclass(frozen=True)
class SalvageReport:
    """What `salvage` copied into the new segment, and what it had to leave behind."""

    source: str
    output: str
    records_recovered: int
    first_seq: int | None
    last_seq: int | None
    bytes_written: int
    damages: tuple[DamageInfo, ...]  # what was lost, in the source's offsets

    @property
    def records_lost(self) -> int | None:
        """Sequence numbers lost inside the file; None when a damage's extent in records is unknown."""
        counts = [d.records_skipped for d in self.damages if d.bytes_lost or d.records_skipped]
        if any(count is None for count in counts):
            return None
        return sum(count for count in counts if count is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "records_recovered": self.records_recovered,
            "records_lost": self.records_lost,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "bytes_written": self.bytes_written,
            "damages": [damage.to_dict() for damage in self.damages],
        }


# --- reading a segment whatever state it is in ------------------------------------------------


@dataclass(frozen=True)
class _Header:
    data: bytes
    version: int | None
    error: BadHeader | None


@dataclass(frozen=True)
class _End:
    data_bytes: int | None  # None when an archive stopped decompressing


@contextlib.contextmanager
def _open_data(path: str) -> Iterator[BinaryIO]:
    """The segment's uncompressed bytes from offset 0, as a stream."""
    with OS_FS.open_read(path) as raw:
        if not is_archive(path):
            yield raw
            return
        decompressor = zstandard.ZstdDecompressor()
        with decompressor.stream_reader(
            raw, read_size=_ZSTD_READ_BYTES, read_across_frames=True, closefd=False
        ) as stream:
            yield stream


def _read_upto(stream: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0 and (chunk := stream.read(size)):
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _scan(path: str, max_record_bytes: int) -> Iterator[_Header | RawRecord | Damage | _End]:
    """The header check, then every record and damaged region, then the data size.

    Unlike `segment.iter_segment`, a bad header is reported rather than raised, and the records
    after it are still scanned. The file's name, when it is a segment name, gives the sequence
    the first record must carry, so records lost at the start are counted too.
    """
    first_seq = parse_first_seq(os.path.basename(path))
    with _open_data(path) as stream:
        end, last_seq, header_read = 0, None, False
        try:
            data = _read_upto(stream, HEADER_SIZE)
            header_read = True
            try:
                yield _Header(data, check_header(data, path), None)
            except BadHeader as exc:
                yield _Header(data, None, exc)
            end = len(data)
            if end == HEADER_SIZE:
                for item in scan_records(stream, max_record_bytes=max_record_bytes, first_seq=first_seq):
                    if isinstance(item, RawRecord):
                        end, last_seq = item.offset + item.length, item.seq
                    else:
                        end = item.end_offset
                    yield item
        except zstandard.ZstdError as exc:
            if not header_read:
                yield _Header(b"", None, BadHeader(path, 0, f"not a readable zstd archive: {exc}"))
            else:
                yield Damage(end, end, f"archive stops decompressing: {exc}", True, last_seq, None)
            yield _End(None)
            return
        yield _End(end)


class _ByteReader:
    """Reads a segment's uncompressed bytes at non-decreasing offsets (archives cannot seek back)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.pos = 0

    def read(self, offset: int, size: int) -> bytes:
        if offset < self.pos:
            raise ValueError(f"cannot read back to offset {offset} from {self.pos}")
        try:
            if self.stream.seekable():
                self.stream.seek(offset)
            else:
                while self.pos < offset and (
                    skipped := self.stream.read(min(offset - self.pos, _ZSTD_READ_BYTES))
                ):
                    self.pos += len(skipped)
            data = _read_upto(self.stream, size)
        except zstandard.ZstdError:
            data = b""  # the scan has already reported where the archive stops decompressing
        self.pos = offset + len(data)
        return data


# --- inspect and verify -----------------------------------------------------------------------


def inspect_file(
    path: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, with_records: bool = False
) -> FileReport:
    """Report on one `.wal` or `.wal.zst` file; damage (a bad header too) is reported, not raised."""
    file_bytes = OS_FS.size(path)
    header: _Header | None = None
    data_bytes: int | None = None
    records: list[RecordInfo] = []
    damages: list[DamageInfo] = []
    count = payload_bytes = 0
    first: RawRecord | None = None
    last: RawRecord | None = None
    for item in _scan(path, max_record_bytes):
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
        elif isinstance(item, _Header):
            header = item
            if item.error is not None:
                damages.append(_header_damage(path, item))
        else:
            data_bytes = item.data_bytes
    assert header is not None  # _scan always yields the header first
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


def _header_damage(path: str, header: _Header) -> DamageInfo:
    assert header.error is not None
    short = len(header.data) < HEADER_SIZE
    # The header holds no record, so a bad one loses none by itself.
    return DamageInfo(path, 0, len(header.data), f"bad header: {header.error.reason}", short, 0)


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


# --- salvage ----------------------------------------------------------------------------------


def salvage(src: str, out: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SalvageReport:
    """Write a new segment at `out` holding a fresh header and every intact record of `src`, verbatim.

    The copy is made durable (temporary file, fsync, rename, directory fsync) before it gets its
    name, so `out` never exists half-written. An existing `out` is never overwritten.
    """
    out = os.path.abspath(out)  # the directory fsync needs a real directory name
    if OS_FS.exists(out):
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", out)
    damages: list[DamageInfo] = []
    count = 0
    first_seq: int | None = None
    last_seq: int | None = None
    with contextlib.closing(_scan(src, max_record_bytes)) as items:
        header = next(items)  # opens src: an unreadable source fails before anything is created
        assert isinstance(header, _Header)
        if header.error is not None:
            damages.append(_header_damage(src, header))
        tmp = out + TMP_SUFFIX
        handle = OS_FS.create(tmp, exclusive=False)
        try:
            handle.write(SEGMENT_HEADER)
            with _open_data(src) as stream:
                source = _ByteReader(stream)
                for item in items:
                    if isinstance(item, RawRecord):
                        data = source.read(item.offset, item.length)
                        if len(data) != item.length:
                            raise WalError(f"{src}: record {item.seq} changed while it was being salvaged")
                        handle.write(data)
                        count += 1
                        first_seq = item.seq if first_seq is None else first_seq
                        last_seq = item.seq
                    elif isinstance(item, Damage):
                        damages.append(DamageInfo.from_damage(src, item))
            handle.sync()
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                OS_FS.unlink(tmp)
            raise
        written = handle.size
        handle.close()
    rename_durably(OS_FS, tmp, out)
    return SalvageReport(src, out, count, first_seq, last_seq, written, tuple(damages))


# --- hexdump ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    offset: int
    data: bytes
    label: str
    gutter: bool = False  # show the bytes as ASCII too (payload and raw bytes)

    def render(self) -> str:
        hex_bytes = " ".join(f"{byte:02x}" for byte in self.data)
        text = f"{self.offset:08x}  {hex_bytes:<{_DUMP_WIDTH * 3 - 1}}  "
        if self.gutter:
            ascii_text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in self.data)
            text += f"|{ascii_text:<{_DUMP_WIDTH}}|  "
        return (text + self.label).rstrip()

    def overlaps(self, start: int, stop: int | None) -> bool:
        end = self.offset + max(len(self.data), 1)
        return end > start and (stop is None or self.offset < stop)


def hexdump(
    path: str,
    *,
    offset: int | None = None,
    length: int | None = None,
    record_seq: int | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[str]:
    """Annotated hex lines: header and record fields labelled, damaged bytes dumped raw and marked.

    `offset`/`length` keep only lines that touch that byte window; `record_seq` keeps only that
    record, and raises WalError when the file holds no intact record with that sequence.
    """
    start = offset or 0
    stop = None if length is None else start + length
    found = False
    with contextlib.closing(_scan(path, max_record_bytes)) as items, _open_data(path) as stream:
        source = _ByteReader(stream)
        for item in items:
            if isinstance(item, _End):
                break
            if record_seq is not None and not (isinstance(item, RawRecord) and item.seq == record_seq):
                continue
            first, end = _span(item)
            if stop is not None and first >= stop:
                break
            if max(end, first + 1) <= start:
                continue  # wholly before the window: not even read
            found = True
            lines = _item_lines(item, source, max_record_bytes)
            yield from (line.render() for line in lines if line.overlaps(start, stop))
            if record_seq is not None:
                return
    if record_seq is not None and not found:
        raise WalError(f"{path}: no intact record with sequence {record_seq}")


def _span(item: _Header | RawRecord | Damage) -> tuple[int, int]:
    if isinstance(item, _Header):
        return 0, len(item.data)
    if isinstance(item, RawRecord):
        return item.offset, item.offset + item.length
    return item.offset, item.end_offset


def _item_lines(
    item: _Header | RawRecord | Damage, source: _ByteReader, max_record_bytes: int
) -> Iterator[_Line]:
    if isinstance(item, _Header):
        return _header_lines(item)
    if isinstance(item, RawRecord):
        return _record_lines(item.offset, source.read(item.offset, item.length), None)
    return _damage_lines(item, source, max_record_bytes)


def _header_lines(header: _Header) -> Iterator[_Line]:
    if header.error is not None:
        yield from _raw_lines(0, header.data, f"damaged: bad header: {header.error.reason}")
        return
    magic, version, _reserved = HEADER.unpack_from(header.data)
    yield _Line(0, header.data[0:8], f'header.magic     "{magic.decode("ascii")}"')
    yield _Line(8, header.data[8:12], f"header.version   {version}")
    yield _Line(12, header.data[12:16], "header.reserved")


def _record_lines(offset: int, raw: bytes, damaged: str | None) -> Iterator[_Line]:
    """The fields of one framed record; `damaged` labels a frame whose CRC does not check."""
    length, seq, status, _reserved, timestamp_ms = RECORD_PREFIX.unpack_from(raw)
    title = f"record seq={seq} length {length}" + (f"  {damaged}" if damaged else "")
    status_name = " (pending)" if status == STATUS_PENDING else ""
    yield _Line(offset, raw[0:4], title)
    yield _Line(offset + 4, raw[4:12], f"  sequence       {seq}")
    yield _Line(offset + 12, raw[12:13], f"  status         {status}{status_name}")
    yield _Line(offset + 13, raw[13:16], "  reserved")
    yield _Line(
        offset + 16, raw[16:24], f"  timestamp_ms   {timestamp_ms} ({format_timestamp_ms(timestamp_ms)})"
    )
    payload = raw[RECORD_PREFIX_SIZE : length - 8]
    payload_label = f"  payload ({len(payload)} bytes)"
    if not payload:
        yield _Line(offset + RECORD_PREFIX_SIZE, b"", payload_label)
    for start in range(0, len(payload), _DUMP_WIDTH):
        label = payload_label if start == 0 else ""
        yield _Line(offset + RECORD_PREFIX_SIZE + start, payload[start : start + _DUMP_WIDTH], label, True)
    stored, computed = record_crc(raw, 0, length)
    verdict = "ok" if stored == computed else f"MISMATCH computed {computed:#018x}"
    yield _Line(offset + length - 8, raw[length - 8 : length], f"  crc            {stored:#018x} {verdict}")


def _damage_lines(damage: Damage, source: _ByteReader, max_record_bytes: int) -> Iterator[_Line]:
    """A damaged region: frames that still look like records field by field, then the raw rest."""
    label = f"damaged: {damage.reason}"
    pos, end = damage.offset, damage.end_offset
    if pos == end:
        yield _Line(pos, b"", label)
        return
    while end - pos >= RECORD_OVERHEAD:
        head = source.read(pos, LENGTH.size)
        length = LENGTH.unpack(head)[0] if len(head) == LENGTH.size else 0
        if not RECORD_OVERHEAD <= length <= min(end - pos, max_record_bytes):
            yield from _raw_lines(pos, head + source.read(pos + len(head), end - pos - len(head)), label)
            return
        yield from _record_lines(pos, head + source.read(pos + LENGTH.size, length - LENGTH.size), label)
        pos += length
        label = "damaged"
    yield from _raw_lines(pos, source.read(pos, end - pos), label)


def _raw_lines(offset: int, data: bytes, label: str) -> Iterator[_Line]:
    for start in range(0, len(data), _DUMP_WIDTH):
        yield _Line(offset + start, data[start : start + _DUMP_WIDTH], label if start == 0 else "", True)
