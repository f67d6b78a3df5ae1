"""The fuzz targets: the segment reader, the archive reader and the log directory opener.

Inputs are built from valid segments (the format as `wal.format` writes it) and then damaged the
ways disks and crashes damage them: bit flips, truncation, inserted junk, zeroed ranges, absurd
length fields, duplicated records, a broken header. Pure random bytes are mixed in too.

Every target checks the same promise: a reader ends with records and Damage items, or raises a
typed `WalError`, and every record it yields is byte-for-byte what `encode_record` would write for
it (so its CRC is valid), with strictly increasing sequence numbers.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Sequence

import zstandard
from hypothesis import strategies as st

import wal
from fuzz import FuzzInput, InvariantViolation, Target
from wal.errors import WalError
from wal.format import HEADER_SIZE, SEGMENT_HEADER, STATUS_PENDING, encode_record
from wal.layout import SEGMENT_SUFFIX, WAL_DIR, segment_name
from wal.scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord, scan_records
from wal.segment import iter_segment

__all__ = ["TARGETS", "check_archive", "check_log_dir", "check_segment", "segment_bytes"]

MAX_INPUT_BYTES = 1 << 20
_ABSURD_LENGTHS = (0, 1, 31, 32, 33, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1 << 24, (1 << 24) + 1)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_scratch: str | None = None


def _scratch_dir() -> str:
    """One temporary directory per process for the files the targets write (removed at exit)."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="wal-fuzz-")
        import atexit

        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)


# -- building inputs ---------------------------------------------------------------------------


# Strategies are built once: hypothesis re-analyses a strategy object the first time it is drawn.
_BYTE = st.integers(0, 255)
_NONZERO_BYTE = st.integers(1, 255)
_INDEX = st.integers(0, 1 << 20)  # reduced modulo the range it picks from
_ONE_IN_16 = st.integers(0, 15)
_PATTERN = st.binary(min_size=1, max_size=8)
_REPEATS = st.integers(100, 2000)
_SMALL_PAYLOAD = st.binary(max_size=80)
_FIRST_SEQ = st.sampled_from([1, 2, 1000, 2**40, 2**63 - 64])
_RECORD_COUNT = st.integers(0, 12)
_TIMESTAMP = st.sampled_from([1_700_000_000_000, 0, -1, 2**63 - 1])
_STATUS = st.sampled_from([STATUS_PENDING, 2, 255, 0])
_SEQ_STEP = st.sampled_from([1, 1, 1, 2, 7])  # mostly contiguous, sometimes a gap
_MUTATION_COUNT = st.integers(0, 5)
_MUTATION = st.sampled_from(["flip", "truncate", "insert", "length", "zero", "duplicate", "header"])
_JUNK = st.one_of(st.binary(min_size=1, max_size=64), st.just(b"\x00" * 4096))
_LENGTH_FIELD = st.one_of(st.sampled_from(_ABSURD_LENGTHS), st.integers(0, 2**32 - 1))
_ZERO_RUN = st.integers(1, 4096)
_RANDOM = st.binary(max_size=2048)


def _pick(draw: st.DrawFn, size: int) -> int:
    """An index in range(size) (0 when size is 0), shrinking towards 0."""
    return draw(_INDEX) % size if size > 0 else 0


@st.composite
def _payload(draw: st.DrawFn) -> bytes:
    # Mostly small records; now and then one of several KiB, built cheaply by repetition.
    if draw(_ONE_IN_16) == 0:
        return draw(_PATTERN) * draw(_REPEATS)
    return draw(_SMALL_PAYLOAD)


_PAYLOAD = _payload()


@st.composite
def _valid_segment(draw: st.DrawFn) -> tuple[bytearray, list[int], int]:
    """A well-formed segment: (bytes, offset of each record, first sequence)."""
    first_seq = draw(_FIRST_SEQ)
    data = bytearray(SEGMENT_HEADER)
    offsets: list[int] = []
    seq = first_seq
    for _ in range(draw(_RECORD_COUNT)):
        timestamp_ms, status = draw(_TIMESTAMP), draw(_STATUS)
        offsets.append(len(data))
        data += encode_record(seq, timestamp_ms, draw(_PAYLOAD), status)
        seq += draw(_SEQ_STEP)
        if seq > 2**63 - 1:
            break
    return data, offsets, first_seq


def _mutate(draw: st.DrawFn, data: bytearray, offsets: Sequence[int]) -> bytearray:
    """Apply up to five kinds of damage to a copy of `data`."""
    data = bytearray(data)
    for _ in range(draw(_MUTATION_COUNT)):
        kind = draw(_MUTATION)
        at = _pick(draw, len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] ^= draw(_NONZERO_BYTE)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(_JUNK)
        elif kind == "length" and offsets:
            offset = offsets[_pick(draw, len(offsets))]
            value = draw(_LENGTH_FIELD)
            if offset + 4 <= len(data):
                data[offset : offset + 4] = value.to_bytes(4, "little")
        elif kind == "zero":
            end = min(len(data), at + draw(_ZERO_RUN))
            data[at:end] = bytes(end - at)
        elif kind == "duplicate" and offsets:
            index = _pick(draw, len(offsets))
            start = offsets[index]
            end = offsets[index + 1] if index + 1 < len(offsets) else len(data)
            data[at:at] = data[start:end]
        elif kind == "header":
            position = _pick(draw, HEADER_SIZE)
            if position < len(data):
                data[position] = draw(_BYTE)
    return data[:MAX_INPUT_BYTES]


_SEGMENT_KIND = st.sampled_from(["mutated", "valid", "random", "header+random"])


@st.composite
def segment_bytes(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """Segment-like bytes: valid, damaged, or random; with the first sequence when it is known."""
    kind = draw(_SEGMENT_KIND)
    if kind == "random":
        return draw(_RANDOM), None
    if kind == "header+random":
        return SEGMENT_HEADER + draw(_RANDOM), None
    data, offsets, first_seq = draw(_VALID_SEGMENT)
    if kind == "mutated":
        data = _mutate(draw, data, offsets)
    return bytes(data), first_seq


_VALID_SEGMENT = _valid_segment()
_SEGMENT_BYTES = segment_bytes()
_MAX_RECORD_BYTES = st.sampled_from([DEFAULT_MAX_RECORD_BYTES, 32, 64, 200, 4096])
_CHUNK_BYTES = st.sampled_from([1, 2, 7, 15, 16, 31, 32, 33, 64, 100, 4096])
_SCAN_FIRST_SEQ: st.SearchStrategy[str | int | None] = st.sampled_from(["from the data", None, 1, 5])


@st.composite
def _segment_input(draw: st.DrawFn) -> FuzzInput:
    data, first_seq = draw(_SEGMENT_BYTES)
    chosen = draw(_SCAN_FIRST_SEQ)
    options = {
        "chunk_bytes": draw(_CHUNK_BYTES),
        "max_record_bytes": draw(_MAX_RECORD_BYTES),
        "first_seq": first_seq if chosen == "from the data" else chosen,
    }
    return FuzzInput(data, options)


_ARCHIVE_KIND = st.sampled_from(["compressed", "compressed+mutated", "random", "magic+random"])
_LEVEL = st.sampled_from([3, 1, 19])
_SECOND_FRAME = st.one_of(st.none(), st.binary(max_size=256))


@st.composite
def _archive_input(draw: st.DrawFn) -> FuzzInput:
    kind = draw(_ARCHIVE_KIND)
    if kind == "random":
        return FuzzInput(draw(_RANDOM), {"kind": kind})
    if kind == "magic+random":
        return FuzzInput(_ZSTD_MAGIC + draw(_RANDOM), {"kind": kind})
    segment, _first_seq = draw(_SEGMENT_BYTES)
    level = draw(_LEVEL)
    checksum = draw(st.booleans())
    blob = zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(segment)
    second_frame = draw(_SECOND_FRAME)  # as a concatenated archive would have
    if second_frame is not None:
        blob += zstandard.ZstdCompressor(level=level).compress(second_frame)
    if kind == "compressed+mutated":
        blob = bytes(_mutate(draw, bytearray(blob), []))
    return FuzzInput(blob, {"kind": kind, "level": level, "checksum": checksum})


_NAME_SEQ = st.sampled_from(["from the data", 1, 3, 10**6])
_LOG_MAX_RECORD_BYTES = st.sampled_from([DEFAULT_MAX_RECORD_BYTES, 4096])


@st.composite
def _log_dir_input(draw: st.DrawFn) -> FuzzInput:
    data, first_seq = draw(_SEGMENT_BYTES)
    name_seq = draw(_NAME_SEQ)
    options = {
        "name_seq": (first_seq or 1) if name_seq == "from the data" else name_seq,
        "max_record_bytes": draw(_LOG_MAX_RECORD_BYTES),
    }
    return FuzzInput(data, options)


# -- checking what the readers return ----------------------------------------------------------


def _check_items(items: list[object], data: bytes, *, end: int | None) -> None:
    """Records re-encode to the exact bytes they came from; records and damage tile the data."""
    cursor = HEADER_SIZE
    last_seq: int | None = None
    for index, item in enumerate(items):
        if isinstance(item, RawRecord):
            _require(item.offset == cursor, f"record at {item.offset}, expected one at {cursor}")
            encoded = encode_record(item.seq, item.timestamp_ms, item.payload, item.status)
            _require(item.length == len(encoded), f"record at {item.offset}: length {item.length} is wrong")
            _require(
                data[item.offset : item.offset + item.length] == encoded,
                f"record at {item.offset} (seq {item.seq}) does not match its bytes on disk",
            )
            _require(last_seq is None or item.seq > last_seq, f"seq {item.seq} after {last_seq}")
            last_seq = item.seq
            cursor = item.offset + item.length
        elif isinstance(item, Damage):
            _require(item.offset == cursor, f"damage at {item.offset}, expected it at {cursor}")
            _require(item.end_offset >= item.offset, f"damage ends before it starts: {item}")
            _require(item.end_offset <= len(data), f"damage past the end of the data: {item}")
            _require(not item.at_end or index == len(items) - 1, f"at_end damage is not last: {item}")
            cursor = item.end_offset
        else:
            raise InvariantViolation(f"reader yielded a {type(item).__name__}: {item!r}")
    if end is not None:
        _require(cursor == end, f"records and damage cover up to {cursor}, the data ends at {end}")


def _write(name: str, data: bytes) -> str:
    path = os.path.join(_scratch_dir(), name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def check_segment(fuzz_input: FuzzInput) -> None:
    """(a) iter_segment on a file, and scan_records on BytesIO with small chunks, agree and hold."""
    data, options = fuzz_input.data, fuzz_input.options
    max_record_bytes, first_seq = options["max_record_bytes"], options["first_seq"]
    path = _write("segment" + SEGMENT_SUFFIX, data)
    try:
        from_file = list(iter_segment(path, max_record_bytes=max_record_bytes, first_seq=first_seq))
    except WalError:
        from_file = None
    if from_file is not None:
        _check_items(from_file, data, end=len(data))
    if len(data) < HEADER_SIZE:
        return
    stream = io.BytesIO(data)
    stream.seek(HEADER_SIZE)
    chunked = list(
        scan_records(
            stream,
            max_record_bytes=max_record_bytes,
            first_seq=first_seq,
            chunk_bytes=options["chunk_bytes"],
        )
    )
    _check_items(chunked, data, end=len(data))
    if from_file is not None:
        # The window size is an implementation detail: it must not change what is found.
        _require(chunked == from_file, "results depend on chunk_bytes")


def _decompress_prefix(blob: bytes) -> tuple[bytes, bool]:
    """What zstd yields before it fails (independently of the reader), and whether it finished.

    A frame cut short reads as a clean early end, and how much of its last block comes out then
    depends on the read sizes; so it counts as finished only when it gave the size its header
    promises (or promises none).
    """
    try:
        plain = _decompress(blob, 1 << 16)
        return plain, _frames_whole(blob)
    except zstandard.ZstdError:
        pass
    # A read that fails loses what it decoded before the error: one byte at a time loses nothing.
    try:
        _decompress(blob, 1, sink := bytearray())
    except zstandard.ZstdError:
        pass
    return bytes(sink), False


def _frames_whole(blob: bytes) -> bool:
    """True when every zstd frame in `blob` runs to its end (checksum included, if it has one)."""
    rest = blob
    while rest:
        frame = zstandard.ZstdDecompressor().decompressobj()
        try:
            frame.decompress(rest)
        except zstandard.ZstdError:
            return False
        if not frame.eof:
            return False
        rest = frame.unused_data
    return True


def _decompress(blob: bytes, read_bytes: int, out: bytearray | None = None) -> bytes:
    out = bytearray() if out is None else out
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    while chunk := reader.read(read_bytes):
        out += chunk
        if len(out) > 16 * MAX_INPUT_BYTES:
            raise zstandard.ZstdError("the archive expands past what the fuzz inputs can hold")
    return bytes(out)


def check_archive(fuzz_input: FuzzInput) -> None:
    """(b) iter_segment on a `.wal.zst` file: records match the decompressed bytes."""
    path = _write("segment.wal.zst", fuzz_input.data)
    try:
        items = list(iter_segment(path))
    except WalError:
        return
    plain, complete = _decompress_prefix(fuzz_input.data)
    _check_items(items, plain, end=len(plain) if complete else None)


def check_log_dir(fuzz_input: FuzzInput) -> None:
    """(c) open a log whose active segment is these bytes, read it all, append, reopen, read again."""
    root = tempfile.mkdtemp(prefix="log-", dir=_scratch_dir())
    try:
        os.makedirs(os.path.join(root, WAL_DIR))
        active = os.path.join(root, WAL_DIR, segment_name(fuzz_input.options["name_seq"]))
        with open(active, "wb") as handle:
            handle.write(fuzz_input.data)
        options = {
            "fsync": "never",
            "auto_archive": False,
            "min_free_bytes": 0,
            "max_record_bytes": fuzz_input.options["max_record_bytes"],
        }
        try:
            log = wal.open(root, **options)
        except WalError:
            return
        try:
            first = _read_checked(log, active, fuzz_input.data)
            appended = log.append(b"fuzz")
            _require(
                not first or appended > first[-1][0],
                f"append got seq {appended}, but the log already holds seq {first[-1][0] if first else None}",
            )
        finally:
            log.close()
        # Recovery is done: a second open must neither lose nor invent records.
        try:
            log = wal.open(root, **options)
        except WalError as exc:
            raise InvariantViolation(f"reopening a log this process just closed failed: {exc}") from exc
        try:
            again = _read_checked(log, active, fuzz_input.data, appended=appended)
        finally:
            log.close()
        _require(again == [*first, (appended, b"fuzz")], "the second open reads different records")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read_checked(
    log: wal.Log, original_path: str, original: bytes, appended: int | None = None
) -> list[tuple[int, bytes]]:
    """Read the whole log; records from the original file must match its bytes exactly."""
    seen: list[tuple[int, bytes]] = []
    for record in log.read():
        _require(
            not seen or record.seq > seen[-1][0], f"seq {record.seq} after {seen[-1][0] if seen else None}"
        )
        if record.path == original_path and record.seq != appended:
            status = original[record.offset + 12] if record.offset + 12 < len(original) else STATUS_PENDING
            encoded = encode_record(record.seq, record.timestamp_ms, record.payload, status)
            _require(
                original[record.offset : record.offset + len(encoded)] == encoded,
                f"record seq {record.seq} at {record.offset} does not match the file's bytes",
            )
        seen.append((record.seq, record.payload))
    return seen


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("segment", _segment_input(), check_segment, "segment reader: file and BytesIO, tiny chunks"),
        Target("archive", _archive_input(), check_archive, "archive reader: .wal.zst, valid and damaged"),
        Target("logdir", _log_dir_input(), check_log_dir, "log opener: damaged active segment, read, reopen"),
    )
}
