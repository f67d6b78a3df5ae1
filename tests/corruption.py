"""Small helpers that damage segment bytes on purpose, so each test says what it breaks.

Every helper takes either the bytes themselves or a path. Given bytes, it returns the damaged
copy; given a path, it rewrites the file in place and returns the new contents as well.
"""

from __future__ import annotations

import os
from pathlib import Path

Target = bytes | bytearray | str | os.PathLike[str]


def _load(target: Target) -> tuple[bytearray, Path | None]:
    if isinstance(target, bytes | bytearray):
        return bytearray(target), None
    path = Path(target)
    return bytearray(path.read_bytes()), path


def _store(data: bytearray, path: Path | None) -> bytes:
    if path is not None:
        path.write_bytes(data)
    return bytes(data)


def flip_byte(target: Target, offset: int, mask: int = 0xFF) -> bytes:
    """XOR the byte at `offset` with `mask` (all bits by default), so it is certain to change."""
    if not 1 <= mask <= 0xFF:
        raise ValueError(f"mask {mask:#x} would not change the byte")
    data, path = _load(target)
    data[offset] ^= mask
    return _store(data, path)


def truncate_at(target: Target, size: int) -> bytes:
    """Cut the data to its first `size` bytes, as a crash mid-write leaves a file."""
    data, path = _load(target)
    if size > len(data):
        raise ValueError(f"cannot truncate {len(data)} bytes to {size}")
    del data[size:]
    return _store(data, path)


def zero_range(target: Target, start: int, end: int) -> bytes:
    """Overwrite bytes [start, end) with zeros, as a lost or unwritten page reads back."""
    return overwrite(target, start, bytes(end - start))


def overwrite(target: Target, offset: int, replacement: bytes) -> bytes:
    """Put `replacement` over the bytes from `offset`, leaving the length of the data unchanged."""
    data, path = _load(target)
    if offset + len(replacement) > len(data):
        raise ValueError(f"overwrite of {len(replacement)} bytes at {offset} runs past the end ({len(data)})")
    data[offset : offset + len(replacement)] = replacement
    return _store(data, path)
