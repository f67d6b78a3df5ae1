"""Record and header bytes, checked against docs/format.md rather than against the code itself."""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wal
from wal.errors import BadHeader
from wal.format import (
    CRC64_CHECK,
    HEADER_SIZE,
    RECORD_OVERHEAD,
    STATUS_PENDING,
    check_header,
    crc64,
    crcmod_crc64,
    crcmod_extension_in_use,
    encode_header,
    encode_record,
    encode_record_parts,
    record_crc,
)

from .corruption import flip_byte

REPO = Path(__file__).resolve().parent.parent
FORMAT_DOC = REPO / "docs" / "format.md"
CLEAN_SEGMENT = Path(__file__).resolve().parent / "testdata" / "clean.wal"

# The header as docs/format.md spells it, typed in independently of wal.format.
DOCUMENTED_HEADER = bytes.fromhex("41 52 57 41 4c 30 30 31 01 00 00 00 00 00 00 00")
# length u32 | sequence i64 | status u8 | reserved 3 | timestamp_ms i64, little-endian.
DOCUMENTED_PREFIX = "<IqB3sq"

sequences = st.integers(min_value=1, max_value=2**63 - 1)
timestamps = st.integers(min_value=0, max_value=2**63 - 1)
payloads = st.binary(max_size=300)


@functools.cache
def _documented_crc64() -> Callable[[bytes], int]:
    """The bit-at-a-time reference CRC from docs/format.md, run as written there."""
    text = FORMAT_DOC.read_text()
    match = re.search(r"```python\n(def crc64_nvme.*?)```", text, re.S)
    assert match, "docs/format.md lost its reference crc64_nvme"
    namespace: dict[str, object] = {}
    exec(match.group(1), namespace)
    return namespace["crc64_nvme"]  # type: ignore[return-value]


def _documented_hexdump() -> bytes:
    """The bytes of the worked `hexdump -C` example in docs/format.md, offsets checked."""
    text = FORMAT_DOC.read_text()
    match = re.search(r"<!-- worked-hexdump.*?-->\n```\n(.*?)```", text, re.S)
    assert match, "docs/format.md lost its worked hexdump"
    data = b""
    for line in match.group(1).splitlines():
        offset, _, rest = line.partition("  ")
        assert int(offset, 16) == len(data), f"hexdump line {line!r} is at the wrong offset"
        data += bytes.fromhex(rest.split("|")[0])
    return data


def test_crc_check_value() -> None:
    assert crc64(b"123456789") == 0xAE8B14860A799888 == CRC64_CHECK
    assert crc64(b"") == 0


@settings(max_examples=50)
@given(st.binary(max_size=64))
def test_crc_matches_the_documented_reference(data: bytes) -> None:
    assert crc64(data) == _documented_crc64()(data)


def test_require_crc_extension_passes_here() -> None:
    wal.require_crc_extension()
    assert wal.crc_extension_in_use()
    # make install compiles wal._scan; without it the log falls back to awscrt, then crcmod.
    assert wal.crc_implementation().startswith("wal._scan-"), "wal._scan was not compiled: run make install"
    assert crcmod_extension_in_use(), "crcmod's C extension is not in use"


@settings(max_examples=200)
@given(st.binary(max_size=9000), st.binary(max_size=100))
def test_fast_crc_agrees_with_crcmod(data: bytes, prefix: bytes) -> None:
    assert crc64(data) == crcmod_crc64(data)
    # chained as encode_record_parts does, and over views as the scanner does
    assert crc64(data, crc64(prefix)) == crcmod_crc64(prefix + data)
    view = memoryview(bytearray(prefix + data))
    assert crc64(view[len(prefix) :]) == crcmod_crc64(data)


def test_header_bytes_are_the_documented_ones() -> None:
    assert encode_header() == DOCUMENTED_HEADER
    assert len(encode_header()) == HEADER_SIZE == 16


@pytest.mark.parametrize(
    ("seq", "timestamp_ms", "payload", "status"),
    [
        (1, 1_700_000_000_001, b"record-001", STATUS_PENDING),
        (2**63 - 1, 0, b"", STATUS_PENDING),
        (42, 1_700_000_000_042, bytes(range(256)), 7),
    ],
)
def test_encode_record_layout(seq: int, timestamp_ms: int, payload: bytes, status: int) -> None:
    record = encode_record(seq, timestamp_ms, payload, status)
    length, got_seq, got_status, reserved, got_timestamp = struct.unpack_from(DOCUMENTED_PREFIX, record, 0)
    assert length == len(record) == 32 + len(payload)
    assert got_seq == seq
    assert got_status == status
    assert reserved == b"\x00\x00\x00"
    assert got_timestamp == timestamp_ms
    assert record[24:-8] == payload
    # The CRC covers every byte after the length field and before the crc.
    (stored_crc,) = struct.unpack("<Q", record[-8:])
    assert stored_crc == _documented_crc64()(record[4:-8])


@settings(max_examples=100)
@given(sequences, timestamps, payloads)
def test_length_counts_the_whole_record(seq: int, timestamp_ms: int, payload: bytes) -> None:
    record = encode_record(seq, timestamp_ms, payload)
    assert struct.unpack_from("<I", record)[0] == len(record) == RECORD_OVERHEAD + len(payload)


@settings(max_examples=100)
@given(sequences, timestamps, payloads, st.integers(min_value=0, max_value=255))
def test_record_parts_join_to_the_record(seq: int, timestamp_ms: int, payload: bytes, status: int) -> None:
    prefix, crc = encode_record_parts(seq, timestamp_ms, payload, status)
    assert len(prefix) == 24 and len(crc) == 8
    assert prefix + payload + crc == encode_record(seq, timestamp_ms, payload, status)


def test_record_crc_sees_a_flipped_byte() -> None:
    record = b"junk" + encode_record(5, 1_700_000_000_005, b"hello")
    stored, computed = record_crc(record, 4, len(record) - 4)
    assert stored == computed
    stored, computed = record_crc(flip_byte(record, 4 + 24), 4, len(record) - 4)
    assert stored != computed


def test_worked_hexdump_in_the_docs_is_a_real_record() -> None:
    documented = _documented_hexdump()
    assert documented == encode_header() + encode_record(1, 1_700_000_000_001, b"record-001")
    assert CLEAN_SEGMENT.read_bytes().startswith(documented)


def test_check_header_accepts_a_segment_header() -> None:
    assert check_header(DOCUMENTED_HEADER + b"records follow") == 1


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (b"ARWAL002" + DOCUMENTED_HEADER[8:], 0, "magic"),
        (b"\x00" * 16, 0, "magic"),
        (DOCUMENTED_HEADER[:8] + struct.pack("<I", 2) + bytes(4), 8, "version 2"),
        (DOCUMENTED_HEADER[:8] + struct.pack("<I", 0) + bytes(4), 8, "version 0"),
        (DOCUMENTED_HEADER[:15], 0, "15 bytes"),
        (b"", 0, "0 bytes"),
    ],
    ids=["magic", "zeros", "version-2", "version-0", "short", "empty"],
)
def test_check_header_rejects(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(BadHeader) as caught:
        check_header(data, "wal/00000000000000000001.wal")
    assert caught.value.path == "wal/00000000000000000001.wal"
    assert caught.value.offset == offset
    assert reason in caught.value.reason
    assert isinstance(caught.value, wal.errors.CorruptionError)
