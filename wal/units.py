"""Human sizes and durations as operators type them: `64MiB`, `512k`, `30d`, `12h`, `90s`."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes from `64MiB`, `1.5GB`, `4096` (binary units for k/m/g/t, decimal for kB/MB/GB/TB)."""
    if isinstance(text, int):
        return text
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {text!r}: use a number with an optional unit such as 64MiB, 512k or 2GB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | float) -> float:
    """Seconds from `30d`, `12h`, `90m`, `45s`, `250ms` or `2w` (a bare number is seconds)."""
    if isinstance(text, int | float):
        return float(text)
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or (unit and unit not in _DURATION_UNITS):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit such as 30d, 12h, 90m or 45s")
    return float(match.group(1)) * _DURATION_UNITS.get(unit or "s", 1)


def format_size(size: int) -> str:
    """`1.5 MiB` for 1572864."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
