"""What inspecting a segment or a log finds: reports, their JSON form, and timestamps for people.

Plain frozen dataclasses that do no I/O; inspect.py and salvage.py build them, the CLI renders them.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .format import HEADER_SIZE
from .scan import Damage

if TYPE_CHECKING:
    from .file_scan import HeaderCheck

PayloadRenderer = Callable[[bytes], dict[str, Any]]

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

    @classmethod
    def from_bad_header(cls, file: str, header: HeaderCheck) -> DamageInfo:
        assert header.error is not None
        short = len(header.data) < HEADER_SIZE
        # The header holds no record, so a bad one loses none by itself.
        return cls(file, 0, len(header.data), f"bad header: {header.error.reason}", short, 0)

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
