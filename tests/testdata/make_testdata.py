"""Regenerate the golden segments in tests/testdata/ (run from the repository root).

    .venv/bin/python tests/testdata/make_testdata.py

Everything is fixed (timestamps, payloads, the random seed, the zstd level), so running it twice
gives the same bytes. The expected decodings in expected.json are worked out from how each file
is built, never by running the scanner, so a test comparing the two checks the scanner.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # pragma: no cover - run as a script, make `wal` and `tests` importable
    sys.path.insert(0, str(HERE.parent.parent))

import zstandard  # noqa: E402

from tests.corruption import flip_byte, overwrite, truncate_at  # noqa: E402
from wal.format import HEADER_SIZE, RECORD_PREFIX_SIZE, encode_header, encode_record  # noqa: E402

BASE_TIMESTAMP_MS = 1_700_000_000_000
RECORD_COUNT = 20
GARBAGE_SEED = 20_240_501
ZSTD_LEVEL = 3

# A few payloads that are not ASCII: an empty one, binary bytes including NUL, and all zeros
# (zeros look like padding, and a zero status byte is what resync skips over).
SPECIAL_PAYLOADS = {
    4: b"",
    10: bytes(range(0, 256, 5)),
    15: bytes(16),
}


def payload_for(seq: int) -> bytes:
    return SPECIAL_PAYLOADS.get(seq, b"record-%03d" % seq)


def timestamp_for(seq: int) -> int:
    return BASE_TIMESTAMP_MS + seq


def build() -> dict[str, bytes]:
    """Every golden file's name and contents, expected.json included."""
    records = [encode_record(seq, timestamp_for(seq), payload_for(seq)) for seq in range(1, RECORD_COUNT + 1)]
    offsets = [HEADER_SIZE]
    for record in records:
        offsets.append(offsets[-1] + len(record))

    def offset_of(seq: int) -> int:
        return offsets[seq - 1]

    def end_of(seq: int) -> int:
        return offsets[seq]

    clean = encode_header() + b"".join(records)

    # A crash in the middle of writing the last record: 13 of its bytes reached the disk.
    torn_at = offset_of(RECORD_COUNT) + 13
    torn = truncate_at(clean, torn_at)

    # One bit-rotten byte inside record 7's payload.
    corrupt_middle = flip_byte(clean, offset_of(7) + RECORD_PREFIX_SIZE + 3)

    # Random bytes from inside record 5 to inside record 6's crc: records 5 and 6 are lost, but
    # record 5's length field survives, so the scanner first tries (and fails) to read it.
    garbage_start, garbage_end = offset_of(5) + 6, end_of(6) - 3
    garbage = random.Random(GARBAGE_SEED).randbytes(garbage_end - garbage_start)
    garbage_middle = overwrite(clean, garbage_start, garbage)

    archive = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(clean)

    every = list(range(1, RECORD_COUNT + 1))
    expected: dict[str, object] = {
        # Every record as written; a file's "seqs" names the ones a reader must get back from it.
        # Offsets are the same in every file, since no damage here adds or removes bytes.
        "records": [
            {
                "seq": seq,
                "timestamp_ms": timestamp_for(seq),
                "payload": payload_for(seq).hex(),
                "offset": offset_of(seq),
                "length": len(records[seq - 1]),
            }
            for seq in every
        ],
        "files": {
            "clean.wal": {
                "description": f"{RECORD_COUNT} intact records, sequences 1..{RECORD_COUNT}",
                "seqs": every,
                "damages": [],
            },
            "clean.wal.zst": {
                "description": f"clean.wal compressed with zstd level {ZSTD_LEVEL}, with checksum",
                "seqs": every,
                "damages": [],
            },
            "torn.wal": {
                "description": f"clean.wal cut {torn_at - offset_of(RECORD_COUNT)} bytes into record {RECORD_COUNT}",
                "seqs": every[:-1],
                "damages": [
                    {
                        "offset": offset_of(RECORD_COUNT),
                        "end_offset": torn_at,
                        "at_end": True,
                        "records_skipped": None,
                    }
                ],
            },
            "corrupt-middle.wal": {
                "description": "clean.wal with one byte of record 7's payload flipped",
                "seqs": [seq for seq in every if seq != 7],
                "damages": [
                    {"offset": offset_of(7), "end_offset": end_of(7), "at_end": False, "records_skipped": 1}
                ],
            },
            "garbage-middle.wal": {
                "description": f"clean.wal with random bytes over [{garbage_start}, {garbage_end}), records 5 and 6",
                "seqs": [seq for seq in every if seq not in (5, 6)],
                "damages": [
                    {"offset": offset_of(5), "end_offset": end_of(6), "at_end": False, "records_skipped": 2}
                ],
            },
        },
    }
    files = {
        "clean.wal": clean,
        "clean.wal.zst": archive,
        "torn.wal": torn,
        "corrupt-middle.wal": corrupt_middle,
        "garbage-middle.wal": garbage_middle,
        "expected.json": (_to_json(expected) + "\n").encode(),
    }
    return files


def _to_json(value: object, indent: str = "") -> str:
    """JSON with one record, damage or list of numbers per line: small, and readable in a diff."""
    if isinstance(value, dict) and any(isinstance(item, dict | list) for item in value.values()):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(key)}: {_to_json(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + json.dumps(item) for item in value) + "\n" + indent + "]"
    return json.dumps(value)


def main() -> None:
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print(f"wrote {name} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
