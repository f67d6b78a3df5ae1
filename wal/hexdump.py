"""An annotated hexdump of a segment or archive: header and record fields labelled, damage marked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import WalError
from .file_scan import ByteReader, DataEnd, HeaderCheck, open_data, scan_file
from .format import (
    HEADER,
    LENGTH,
    RECORD_OVERHEAD,
    RECORD_PREFIX,
    RECORD_PREFIX_SIZE,
    STATUS_PENDING,
    record_crc,
)
from .report import format_timestamp_ms
from .scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord

_DUMP_WIDTH = 16  # bytes per hexdump line


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
    with contextlib.closing(scan_file(path, max_record_bytes)) as items, open_data(path) as stream:
        source = ByteReader(stream)
        for item in items:
            if isinstance(item, DataEnd):
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


def _span(item: HeaderCheck | RawRecord | Damage) -> tuple[int, int]:
    if isinstance(item, HeaderCheck):
        return 0, len(item.data)
    if isinstance(item, RawRecord):
        return item.offset, item.offset + item.length
    return item.offset, item.end_offset


def _item_lines(
    item: HeaderCheck | RawRecord | Damage, source: ByteReader, max_record_bytes: int
) -> Iterator[_Line]:
    if isinstance(item, HeaderCheck):
        return _header_lines(item)
    if isinstance(item, RawRecord):
        return _record_lines(item.offset, source.read(item.offset, item.length), None)
    return _damage_lines(item, source, max_record_bytes)


def _header_lines(header: HeaderCheck) -> Iterator[_Line]:
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


def _damage_lines(damage: Damage, source: ByteReader, max_record_bytes: int) -> Iterator[_Line]:
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
