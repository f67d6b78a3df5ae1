"""Named durable cursors: the last sequence a reader has finished with, one small file each.

A cursor file is a JSON object replaced atomically (temporary file, fsync, rename, directory
fsync), so after any crash it holds either the old or the new position, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable

from .durable import TMP_SUFFIX, unlink_durably, write_atomic
from .errors import WalError
from .fs import FileSystem

CURSOR_SUFFIX = ".cursor"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_cursor_name(name: str) -> str:
    """Cursor names become file names, so they are restricted to a safe alphabet."""
    if not _NAME.match(name):
        raise WalError(f"invalid cursor name {name!r}: use letters, digits, '_', '.', '-' (max 128)")
    return name


class Cursor:
    """A reader's durable position: every record up to `position` is done with."""

    def __init__(self, store: CursorStore, name: str, position: int) -> None:
        self._store = store
        self.name = name
        self._position = position

    @property
    def position(self) -> int:
        """The last committed sequence number (0 when nothing was committed yet)."""
        return self._position

    def commit(self, seq: int) -> None:
        """Durably record that every record up to `seq` is done with. Never moves backwards."""
        if seq < self._position:
            raise WalError(f"cursor {self.name!r} cannot move back from {self._position} to {seq}")
        if seq == self._position:
            return
        self._store.write(self.name, seq)
        self._position = seq

    def __repr__(self) -> str:
        return f"Cursor({self.name!r}, position={self._position})"


class CursorStore:
    """The cursors/ folder of a log."""

    def __init__(self, fs: FileSystem, directory: str, on_commit: Callable[[], None] | None = None) -> None:
        self._fs = fs
        self._dir = directory
        self._lock = threading.Lock()
        self._on_commit = on_commit
        self._positions: dict[str, int] = {}
        fs.makedirs(directory)
        for entry in fs.listdir(directory):
            if entry.endswith(TMP_SUFFIX):
                self._fs.unlink(os.path.join(directory, entry))  # a crash between write and rename
            elif entry.endswith(CURSOR_SUFFIX):
                name = entry[: -len(CURSOR_SUFFIX)]
                self._positions[name] = read_cursor_file(fs, os.path.join(directory, entry))

    def path(self, name: str) -> str:
        return os.path.join(self._dir, check_cursor_name(name) + CURSOR_SUFFIX)

    def get(self, name: str) -> Cursor:
        """The cursor called `name`, created at position 0 (and registered) when new."""
        with self._lock:
            if name not in self._positions:
                self._write_locked(name, 0)
            return Cursor(self, name, self._positions[name])

    def positions(self) -> dict[str, int]:
        """Every registered cursor and its committed position."""
        with self._lock:
            return dict(self._positions)

    def write(self, name: str, position: int) -> None:
        with self._lock:
            self._write_locked(name, position)
        if self._on_commit is not None:
            self._on_commit()

    def drop(self, name: str) -> None:
        """Unregister a cursor, so it no longer holds back archiving."""
        with self._lock:
            if self._positions.pop(name, None) is not None:
                unlink_durably(self._fs, self.path(name))
        if self._on_commit is not None:
            self._on_commit()

    def _write_locked(self, name: str, position: int) -> None:
        body = {"name": name, "position": position, "updated_ms": int(time.time() * 1000)}
        write_atomic(self._fs, self.path(name), json.dumps(body).encode() + b"\n")
        self._positions[name] = position


def read_cursor_file(fs: FileSystem, path: str) -> int:
    """The position stored in one cursor file."""
    try:
        with fs.open_read(path) as handle:
            body = json.loads(handle.read(4096))
        position = int(body["position"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WalError(f"{path}: unreadable cursor file ({exc}); fix or remove it") from None
    if position < 0:
        raise WalError(f"{path}: negative cursor position {position}")
    return position
