"""The ARWAL001 version-1 byte format: segment header, record framing and CRC. No files here.

docs/format.md is the specification; this module follows it byte for byte.

    header  16 B   "ARWAL001" | version u32 LE = 1 | 4 reserved zero bytes
    record  32+N B length u32 | sequence i64 | status u8 | 3 reserved | timestamp_ms i64 | payload | crc u64

`length` counts the whole record including itself. The CRC is CRC-64/NVME over every byte after
the length field and before the crc (sequence, status, reserved, timestamp, payload).
"""

from __future__ import annotations

import struct
import sys

import crcmod

try:  # this package's own CRC-64/NVME (wal/_scan.c), compiled at install time when a C compiler is at hand
    from ._scan import CRC64NVME_KERNEL as _scan_crc64_kernel
    from ._scan import crc64nvme as _scan_crc64
except ImportError:
    _scan_crc64 = None
    _scan_crc64_kernel = None
try:  # hardware-accelerated CRC-64/NVME (PCLMULQDQ on x86-64, PMULL on arm64)
    from awscrt.checksums import crc64nvme as _awscrt_crc64
except ImportError:  # no wheel for this platform: crcmod alone
    _awscrt_crc64 = None
try:  # the extension function that awscrt's one-line Python wrapper calls
    from _awscrt import checksums_crc64nvme as _awscrt_crc64_extension
except ImportError:
    _awscrt_crc64_extension = None

from .errors import BadHeader, WalError

KiB = 1024
MiB = 1024 * KiB

MAGIC = b"ARWAL001"
VERSION = 1
HEADER_SIZE = 16
RECORD_OVERHEAD = 32  # length 4 + sequence 8 + status 1 + reserved 3 + timestamp 8 + crc 8
RECORD_PREFIX_SIZE = 24  # everything before the payload
STATUS_PENDING = 1

HEADER = struct.Struct("<8sI4s")
RECORD_PREFIX = struct.Struct("<IqB3sq")  # length, sequence, status, reserved, timestamp_ms
LENGTH = struct.Struct("<I")
CRC = struct.Struct("<Q")
_RESERVED = b"\x00\x00\x00"

#: CRC-64/NVME: polynomial 0xAD93D23594C93659 (normal form), reflected in and out, init and xorout all ones.
#: crcmod is the reference: table-driven, byte at a time, about 370 MiB/s with its C extension.
crcmod_crc64 = crcmod.mkCrcFun(0x1AD93D23594C93659, rev=True, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF)
CRC64_CHECK = 0xAE8B14860A799888  # crc64(b"123456789")

#: The CRC the log uses: wal._scan's where it was compiled, else awscrt's, else crcmod's. All take
#: (data, previous_crc) and chain the same way; tests compare them on random data. wal._scan's
#: folds with carry-less multiplies where the CPU has PCLMULQDQ (slicing-by-8 tables elsewhere)
#: and is also what parse_intact and frame_into use inside their loops, with no call per record.
#: Per call from Python on an x86-64 EPYC, wal._scan / awscrt / crcmod: 32 B 0.07 / 0.22 / 0.4 us,
#: 200 B 0.09 / 0.22 / 0.9 us, 4 KiB 0.45 / 0.6 / 12 us, 1 MiB 85 / 85 / 3000 us.
crc64 = _scan_crc64 or _awscrt_crc64 or crcmod_crc64

#: crc64 with both arguments required, (data, previous_crc), called without the wrapper's Python
#: frame in between: the read path calls it once per record, where that frame is a tenth of the cost.
crc64_direct = _awscrt_crc64_extension if crc64 is _awscrt_crc64 and _awscrt_crc64_extension else crc64

#: The CRC of any checked bytes followed by their own CRC (little-endian) is this constant, so a
#: record is intact exactly when crc64(record[4:]) == CRC_RESIDUE: one call and no unpacking of
#: the stored CRC. (Appending 8 bytes maps the CRC register one-to-one, so only the right stored
#: CRC gives the residue.)
CRC_RESIDUE = 0x0CEFCFC4D49091BD

SEGMENT_HEADER = HEADER.pack(MAGIC, VERSION, b"\x00" * 4)


def crcmod_extension_in_use() -> bool:
    """True when crcmod computes CRCs in its C extension (about 30x faster than pure Python)."""
    module = sys.modules.get("crcmod.crcmod")
    return bool(getattr(module, "_usingExtension", False))


def crc_implementation() -> str:
    """Which code computes the log's CRCs: "wal._scan-pclmul", "wal._scan-table", "awscrt",
    "crcmod-c" or "crcmod-python" (slow)."""
    if crc64 is _scan_crc64:
        return f"wal._scan-{_scan_crc64_kernel}"
    if crc64 is _awscrt_crc64:
        return "awscrt"
    return "crcmod-c" if crcmod_extension_in_use() else "crcmod-python"


def crc_extension_in_use() -> bool:
    """True when CRCs run in native code (wal._scan, awscrt or crcmod's), not pure Python."""
    return crc_implementation() != "crcmod-python"


def slow_crc_warning() -> str | None:
    """One line for operators when CRCs run in pure Python, else None."""
    if crc_extension_in_use():
        return None
    return (
        "none of wal._scan, awscrt and crcmod's C extension is in use, so every CRC runs about 30x "
        "slower; install awscrt, or reinstall wallaby-agent and crcmod where a C compiler and Python "
        "headers are available"
    )


def require_crc_extension() -> None:
    """Raise when CRCs would run in pure Python or an implementation gives a wrong check value."""
    for name, function in (("crcmod", crcmod_crc64), (crc_implementation(), crc64)):
        if function(b"123456789") != CRC64_CHECK or function(b"6789", function(b"12345")) != CRC64_CHECK:
            raise WalError(f"CRC-64/NVME self-check failed: {name} gives a wrong check value")
    warning = slow_crc_warning()
    if warning is not None:
        raise WalError(warning)


def encode_header() -> bytes:
    """The 16-byte header every segment starts with."""
    return SEGMENT_HEADER


def check_header(data: bytes, path: str = "<bytes>") -> int:
    """Validate a segment header and return its version; raise BadHeader otherwise."""
    if len(data) < HEADER_SIZE:
        raise BadHeader(path, 0, f"file is {len(data)} bytes, shorter than the 16-byte header")
    magic, version, _reserved = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise BadHeader(path, 0, f"magic is {magic!r}, expected b'ARWAL001'")
    if version != VERSION:
        raise BadHeader(path, 8, f"unsupported version {version}, this build reads version {VERSION}")
    return version


def encode_record_parts(
    seq: int, timestamp_ms: int, payload: bytes, status: int = STATUS_PENDING
) -> tuple[bytes, bytes]:
    """Return (prefix, crc) so a writer can emit prefix + payload + crc without copying the payload."""
    prefix = RECORD_PREFIX.pack(RECORD_OVERHEAD + len(payload), seq, status, _RESERVED, timestamp_ms)
    crc = crc64(payload, crc64(memoryview(prefix)[4:]))
    return prefix, CRC.pack(crc)


def encode_record(seq: int, timestamp_ms: int, payload: bytes, status: int = STATUS_PENDING) -> bytes:
    """One whole record as bytes."""
    prefix, crc = encode_record_parts(seq, timestamp_ms, payload, status)
    return b"".join((prefix, payload, crc))


def record_crc(buffer: bytes | bytearray | memoryview, offset: int, length: int) -> tuple[int, int]:
    """(stored, computed) CRC of the record of `length` bytes at `offset` in `buffer`."""
    view = memoryview(buffer)
    stored = CRC.unpack_from(view, offset + length - 8)[0]
    return stored, crc64(view[offset + 4 : offset + length - 8])
