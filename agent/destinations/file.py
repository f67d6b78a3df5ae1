"""`type = "file"`: change records in files, each complete before it appears under its final name.

Records gather in memory (JSON Lines stream into a temporary file instead) until `rotate_bytes`
of log payload or `rotate_seconds` since the first one; then each file is written under a
temporary name, fsynced, renamed to its final name and the directory fsynced. A reader that
ignores names starting with "." never sees half a file.

Final names say what they hold: `<table or "changes">-<first seq>-<last seq><extension>`,
sequence numbers zero-padded to 20 digits, so a listing sorts in log order. Formats that hold
one table per body (arrow, parquet) get one file per table per rotation.

The destination is exactly-once: after the files of a rotation are renamed, the highest
sequence they cover is written atomically to `.wallaby-position`. On start, files that begin
after that position (a rotation cut short by a crash) and temporary files are removed; the
sender then resumes after the position.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from itertools import groupby

from wal.durable import write_atomic
from wal.fs import OS_FS

from ..config_destinations import FileDestinationConfig
from ..delivery import Delivery
from ..formats import get_format
from .base import RetryableError

__all__ = ["FileDestination"]

POSITION_FILE = ".wallaby-position"
_TEMP_PREFIX = ".tmp-"
_FINAL_NAME = re.compile(r"(?P<prefix>.+)-(?P<first>\d{20})-(?P<last>\d{20})\.[A-Za-z0-9.]+")


class FileDestination:
    """Writes batches into rotated files in one directory."""

    def __init__(self, config: FileDestinationConfig) -> None:
        self.name = config.name
        self.config = config
        self.directory = os.fspath(config.path)
        self.format = get_format(config.format)
        self._position = 0
        self._buffer: list[Delivery] = []  # jsonl streams to its file instead
        self._first_seq = 0  # the range of records since the last rotation
        self._last_seq = 0
        self._buffer_bytes = 0
        self._buffer_since = 0.0
        self._stream: tuple[int, str] | None = None  # jsonl: (fd, temporary path)

    # -- protocol -------------------------------------------------------------------------------

    def open(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._position = self._read_position()
            self._remove_incomplete()
        except OSError as exc:
            raise RetryableError(f"{self.directory}: {exc.strerror or exc}") from exc

    def write(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        try:
            if not self._last_seq:
                self._buffer_since = time.monotonic()
                self._first_seq = batch[0].seq
            if self.format.name == "jsonl":
                self._stream_jsonl(batch)
            else:
                self._buffer.extend(batch)
            self._last_seq = batch[-1].seq
            self._buffer_bytes += sum(delivery.size for delivery in batch)
            if self._rotation_due():
                self._rotate()
        except OSError as exc:
            raise RetryableError(f"{self.directory}: {exc.strerror or exc}") from exc

    def position(self) -> int:
        return self._position

    def poll(self) -> None:
        """Called by an idle sender: rotate when rotate_seconds has passed."""
        if self._last_seq and self._rotation_due():
            try:
                self._rotate()
            except OSError as exc:
                raise RetryableError(f"{self.directory}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Write out what is buffered, so a clean stop leaves nothing to redo."""
        try:
            if self._last_seq:
                self._rotate()
        except OSError:
            pass  # not confirmed: the sender starts again from the position on the next run
        finally:
            self._drop_stream()

    # -- rotation ---------------------------------------------------------------------------------

    def _rotation_due(self) -> bool:
        if self._buffer_bytes >= self.config.rotate_bytes:
            return True
        seconds = self.config.rotate_seconds
        return seconds is not None and time.monotonic() - self._buffer_since >= seconds

    def _rotate(self) -> None:
        records = self._buffer
        last = self._last_seq
        if self._stream is not None:
            fd, temp = self._stream
            os.fsync(fd)
            os.close(fd)
            self._stream = None
            os.rename(temp, self._final_path("changes", self._first_seq, last))
        elif getattr(self.format, "single_table", False):
            for table, run in groupby(
                sorted(records, key=lambda d: d.change.table), key=lambda d: d.change.table
            ):
                part = sorted(run, key=lambda d: d.seq)
                self._write_file(table, part)
        else:
            self._write_file("changes", records)
        OS_FS.sync_dir(self.directory)
        # Only now is every file of this rotation in place under its final name.
        write_atomic(OS_FS, os.path.join(self.directory, POSITION_FILE), f"{last}\n".encode())
        self._position = last
        self._buffer = []
        self._buffer_bytes = 0
        self._first_seq = self._last_seq = 0

    def _write_file(self, prefix: str, records: list[Delivery]) -> None:
        body = self.format.encode(records)
        final = self._final_path(prefix, records[0].seq, records[-1].seq)
        temp = os.path.join(self.directory, _TEMP_PREFIX + os.path.basename(final))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)

    def _stream_jsonl(self, batch: Sequence[Delivery]) -> None:
        if self._stream is None:
            temp = os.path.join(self.directory, f"{_TEMP_PREFIX}{batch[0].seq:020d}{self.format.extension}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            self._stream = (fd, temp)
        fd = self._stream[0]
        view = memoryview(self.format.encode(batch))
        while view:
            view = view[os.write(fd, view) :]

    def _final_path(self, prefix: str, first: int, last: int) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.]", "_", prefix)
        return os.path.join(self.directory, f"{safe}-{first:020d}-{last:020d}{self.format.extension}")

    # -- start-up -------------------------------------------------------------------------------

    def _read_position(self) -> int:
        try:
            with open(os.path.join(self.directory, POSITION_FILE), "rb") as handle:
                return int(handle.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def _remove_incomplete(self) -> None:
        removed = False
        for name in os.listdir(self.directory):
            match = _FINAL_NAME.fullmatch(name)
            if name.startswith(_TEMP_PREFIX) or (match and int(match["first"]) > self._position):
                os.unlink(os.path.join(self.directory, name))
                removed = True
        if removed:
            OS_FS.sync_dir(self.directory)

    def _drop_stream(self) -> None:
        if self._stream is not None:
            fd, temp = self._stream
            os.close(fd)
            self._stream = None
            try:
                os.unlink(temp)
            except OSError:
                pass
