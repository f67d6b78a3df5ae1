"""Reading a log in sequence order, across archives and live segments, finished or still growing.

A `SegmentWalker` keeps its place (segment, byte offset, next sequence) between calls, so a tailing
reader resumes exactly where it stopped when more records become durable. The optional `limit`
callback tells it how far the active segment may be read: only what the writer made durable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .chunk import ChunkReader, Record
from .errors import BadHeader
from .format import HEADER_SIZE, RECORD_OVERHEAD
from .fs import FileSystem
from .layout import SegmentFile, list_segments
from .scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord
from .segment import open_segment

log = logging.getLogger("wal")


@dataclass(frozen=True)
class Visible:
    """How far a reader may go: the durable watermark and the active segment's durable end."""

    durable_seq: int
    active_first_seq: int
    active_end: int


DamageHandler = Callable[[str, Damage], None]


class SegmentWalker:
    """Reads records in sequence order from `from_seq`, remembering its place between calls."""

    def __init__(
        self,
        fs: FileSystem,
        root: str,
        from_seq: int = 1,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        limit: Callable[[], Visible] | None = None,
        on_damage: DamageHandler | None = None,
    ) -> None:
        self._fs = fs
        self._root = root
        self._max_record_bytes = max_record_bytes
        self._limit = limit
        self._on_damage = on_damage
        self.next_seq = max(1, from_seq)
        self._segment: SegmentFile | None = None
        self._offset = HEADER_SIZE
        self._expected_seq: int | None = None  # sequence the next record in this segment must carry
        self._stream_cm = None
        self._reader: ChunkReader | None = None  # the open segment, read a chunk at a time
        # Once the reader meets anything but intact records, the rest of the segment is scanned.
        self._items: Iterator[RawRecord | Damage] | None = None
        self._listing: list[SegmentFile] = []  # the last directory listing; refreshed at its end
        self._looked_again = False  # whether the current segment's end was read a second time

    def _segments_after(self, first_seq: int) -> list[SegmentFile]:
        """Segments after the one starting at `first_seq`; lists the directories only when the
        cached listing has none (listing at every segment would make a long read quadratic)."""
        later = [s for s in self._listing if s.first_seq > first_seq]
        if not later:
            self._listing = list_segments(self._fs, self._root)
            later = [s for s in self._listing if s.first_seq > first_seq]
        return later

    def close(self) -> None:
        self._close_stream()

    def read_available(self, max_records: int = 1000, max_bytes: int = 1 << 62) -> list[Record]:
        """The next records that can be read now, at most `max_records` / about `max_bytes`."""
        return self.read_available_sized(max_records, max_bytes)[0]

    def read_available_sized(
        self, max_records: int = 1000, max_bytes: int = 1 << 62
    ) -> tuple[list[Record], int]:
        """`read_available`, and the payload bytes of the records it returns.

        `max_bytes` counts whole records, 32 bytes of framing each included: the reader adds up
        their lengths anyway, which gives the payload bytes without a pass over the records.
        """
        out: list[Record] = []
        size = 0
        visible = self._limit() if self._limit is not None else None
        if self._reader is not None and self._reader.end is not None:
            # A stream left open at the end a writer had published then: that end has moved (or
            # the segment is sealed), so read on to the new end rather than stop short at the old
            # one and mistake the rest of the segment for missing.
            end = self._end_for(visible)
            if end != self._reader.end:
                if self._items is None and (end is None or end > self._reader.end):
                    self._reader.end = end  # the bytes read so far stay valid
                else:
                    self._close_stream()  # scan_records keeps its end: reopen at the saved offset
        while len(out) < max_records and size < max_bytes:
            if visible is not None and self.next_seq > visible.durable_seq:
                break
            if self._reader is None and not self._open(visible):
                break
            assert self._reader is not None and self._segment is not None
            if self._items is None:
                # The common case: runs of intact records, straight from the reader's chunk.
                records, records_bytes = self._reader.read_intact(
                    self.next_seq,
                    max_records - len(out),
                    max_bytes - size,
                    visible.durable_seq if visible is not None else 1 << 62,
                )
                self._offset, self._expected_seq = self._reader.offset, self._reader.expected_seq
                if records:
                    out += records
                    size += records_bytes
                    self.next_seq = records[-1].seq + 1
                    continue
                if not self._reader.at_end:  # anything unusual is scanned record by record, as always
                    self._items = self._reader.scan_rest()
            item = next(self._items, None) if self._items is not None else None
            if item is None:
                if self._is_live_end(visible):
                    self._close_stream()  # resume at self._offset when more is durable
                    self._looked_again = False
                    break
                if self._look_again(visible):
                    continue
                if not self._advance():
                    break
                continue
            if isinstance(item, Damage):
                if item.at_end and visible is None and self._is_live_end(None):
                    continue  # a record another process is still writing, not damage
                if item.at_end and self._look_again(visible):
                    continue
                self._damage(item, visible)
                continue
            self._offset = item.offset + item.length
            self._expected_seq = item.seq + 1
            if item.seq < self.next_seq:
                continue
            if visible is not None and item.seq > visible.durable_seq:
                self._offset = item.offset
                self._close_stream()
                break
            out.append(
                Record(
                    item.seq,
                    item.timestamp_ms,
                    item.payload,
                    self._segment.path,
                    item.offset,
                    self._segment.archived,
                )
            )
            size += item.length
            self.next_seq = item.seq + 1
        return out, size - RECORD_OVERHEAD * len(out)

    def __iter__(self) -> Iterator[Record]:
        while batch := self.read_available():
            yield from batch

    # -- segment bookkeeping -------------------------------------------------------------------

    def _open(self, visible: Visible | None) -> bool:
        """Open the segment holding `next_seq` (or the current one at its saved offset)."""
        for _attempt in range(3):  # a segment may be archived between listing and opening
            if self._segment is None:
                self._listing = list_segments(self._fs, self._root)
                chosen = _segment_for(self._listing, self.next_seq)
                if chosen is None:
                    return False
                self._segment, self._offset, self._expected_seq = chosen, HEADER_SIZE, chosen.first_seq
                self._looked_again = False
            try:
                self._open_stream(self._end_for(visible))
                return True
            except FileNotFoundError:
                self._segment = None
                self._close_stream()
            except BadHeader as exc:
                if visible is None and not self._segment.archived:
                    # A segment the writer has created but not yet given its header: read it later.
                    if self._is_live_end(None):
                        return False
                    if not self._looked_again:  # its successor exists now, so its header is final
                        self._looked_again = True
                        continue
                self._damage(Damage(0, 0, exc.reason, True, None, None), visible)
                if not self._advance():
                    return False
        return False

    def _end_for(self, visible: Visible | None) -> int | None:
        """How far the current segment may be read: the active segment's durable end, else all."""
        assert self._segment is not None
        if (
            visible is not None
            and not self._segment.archived
            and self._segment.first_seq == visible.active_first_seq
        ):
            return visible.active_end
        return None

    def _open_stream(self, end: int | None) -> None:
        assert self._segment is not None and self._expected_seq is not None
        self._stream_cm = open_segment(self._segment.path, self._fs)
        stream = self._stream_cm.__enter__()
        try:
            _skip(stream, self._offset - HEADER_SIZE, self._segment.archived)
        except BaseException:
            self._close_stream()
            raise
        self._reader = ChunkReader(
            stream,
            self._offset,
            end,
            self._expected_seq,
            max_record_bytes=self._max_record_bytes,
            path=self._segment.path,
            archived=self._segment.archived,
        )

    def _close_stream(self) -> None:
        self._items = None
        self._reader = None
        if self._stream_cm is not None:
            cm, self._stream_cm = self._stream_cm, None
            cm.__exit__(None, None, None)

    def _is_live_end(self, visible: Visible | None) -> bool:
        """True at the readable end of a segment that may still grow."""
        assert self._segment is not None
        if self._segment.archived:
            return False
        if visible is not None:
            return self._segment.first_seq >= visible.active_first_seq
        # Without a writer's word, the last live segment may still grow.
        return not self._segments_after(self._segment.first_seq)

    def _look_again(self, visible: Visible | None) -> bool:
        """Without a writer's word, read the end of a live segment once more before leaving it.

        The writer may have finished the segment between our reaching its end and our listing its
        successor; once the successor exists the segment is sealed, so a second read is final.
        """
        assert self._segment is not None
        if visible is not None or self._segment.archived or self._looked_again:
            return False
        self._looked_again = True
        self._close_stream()  # the next _open resumes at self._offset
        return True

    def _advance(self) -> bool:
        """Move to the segment after the current one; report sequences missing in between."""
        assert self._segment is not None
        current = self._segment
        self._close_stream()
        later = self._segments_after(current.first_seq)
        if not later:
            self._segment = None
            return False
        following = later[0]
        if (
            self.next_seq < following.first_seq
            and self._expected_seq is not None
            and self._expected_seq < following.first_seq
        ):
            skipped = following.first_seq - self._expected_seq
            reason = (
                f"sequences {self._expected_seq}..{following.first_seq - 1} are missing before this segment"
            )
            gap = Damage(HEADER_SIZE, HEADER_SIZE, reason, False, self._expected_seq - 1, following.first_seq)
            if skipped > 0 and self._on_damage is not None:
                self._on_damage(following.path, gap)
        self.next_seq = max(self.next_seq, following.first_seq)
        self._segment, self._offset, self._expected_seq = following, HEADER_SIZE, following.first_seq
        self._looked_again = False
        return True

    def _damage(self, damage: Damage, visible: Visible | None) -> None:
        assert self._segment is not None
        if damage.at_end and visible is None and self._is_live_end(None):
            return  # the end of a segment another process is still writing, not damage
        if damage.next_seq_after is not None:
            self._expected_seq = damage.next_seq_after
        if self._on_damage is not None:
            self._on_damage(self._segment.path, damage)


def _segment_for(segments: list[SegmentFile], seq: int) -> SegmentFile | None:
    """The segment that holds `seq`: the last one starting at or before it, else the first."""
    chosen = None
    for segment in segments:
        if segment.first_seq <= seq:
            chosen = segment
        else:
            break
    if chosen is None and segments:
        chosen = segments[0]
    return chosen


def _skip(stream: BinaryIO, count: int, compressed: bool) -> None:
    if count <= 0:
        return
    if not compressed:
        stream.seek(count, os.SEEK_CUR)
        return
    while count > 0:  # zstd streams only read forwards
        chunk = stream.read(min(count, 1 << 20))
        if not chunk:
            return
        count -= len(chunk)


def read_log(
    root: str,
    from_seq: int = 1,
    *,
    fs: FileSystem | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_damage: DamageHandler | None = None,
) -> Iterator[Record]:
    """Read a log directory without opening it for writing (works beside a running writer)."""
    from .fs import OS_FS

    walker = SegmentWalker(
        fs or OS_FS, root, from_seq, max_record_bytes=max_record_bytes, on_damage=on_damage or _log_damage
    )
    try:
        yield from walker
    finally:
        walker.close()


def _log_damage(path: str, damage: Damage) -> None:
    log.error(
        "wal.read.damaged",
        extra={
            "segment": path,
            "offset": damage.offset,
            "end_offset": damage.end_offset,
            "reason": damage.reason,
            "records_skipped": damage.records_skipped,
        },
    )
