"""The two numbers every replication message carries: WAL positions (LSNs) and the server's clock.

An LSN is a 64-bit byte position in the WAL, written by PostgreSQL as two hexadecimal halves
"high/low" without zero padding ("16/B374D848"). Server timestamps count microseconds from
2000-01-01 00:00 UTC; the agent uses microseconds from the UNIX epoch.
"""

from __future__ import annotations

import re

MAX_LSN = (1 << 64) - 1
# Microseconds from 1970-01-01 to 2000-01-01 UTC: 10,957 days.
PG_EPOCH_OFFSET_US = 10_957 * 86_400 * 1_000_000

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """The integer position of an LSN written as "X/Y" in hexadecimal."""
    match = _LSN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid LSN {text!r}: expected two hexadecimal numbers of up to 8 digits, like '16/B374D848'"
        )
    return int(match[1], 16) << 32 | int(match[2], 16)


def format_lsn(value: int) -> str:
    """An LSN as PostgreSQL writes it: upper-case hexadecimal halves without padding."""
    if not 0 <= value <= MAX_LSN:
        raise ValueError(f"LSN {value} is outside 0..2**64-1")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_to_unix_us(pg_us: int) -> int:
    """A server timestamp (microseconds since 2000-01-01) as microseconds since the UNIX epoch."""
    return pg_us + PG_EPOCH_OFFSET_US


def unix_to_pg_us(unix_us: int) -> int:
    """Microseconds since the UNIX epoch as a server timestamp (microseconds since 2000-01-01)."""
    return unix_us - PG_EPOCH_OFFSET_US
