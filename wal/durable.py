"""Every step that makes a file or a name durable, in one place a reviewer can check.

Rules followed here (and relied on by recovery):
- a new file's contents are fsynced before its name is, and its name by fsyncing the directory;
- every rename and unlink is followed by an fsync of the directory, or the change can be undone
  by a power loss;
- small state is replaced atomically: temporary file, write, fsync, rename, directory fsync.
"""

from __future__ import annotations

import os

from . import failpoints
from .format import SEGMENT_HEADER
from .fs import AppendFile, FileSystem

TMP_SUFFIX = ".tmp"


def parent_dir(path: str) -> str:
    """The directory whose entry names `path` ('.' for a bare file name)."""
    return os.path.dirname(path) or "."


def create_segment(fs: FileSystem, path: str) -> AppendFile:
    """Create a segment holding only its header: write, fsync the file, fsync the directory."""
    handle = fs.create(path, exclusive=True)
    try:
        handle.write(SEGMENT_HEADER)
        failpoints.hit("segment.after_header_write")
        handle.sync()
        failpoints.hit("segment.before_dir_sync")
        fs.sync_dir(parent_dir(path))
    except BaseException:
        handle.close()
        try:  # it never held a record; recovery also copes if this unlink is lost
            fs.unlink(path)
        except OSError:
            pass
        raise
    return handle


def write_atomic(fs: FileSystem, path: str, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new contents."""
    tmp = path + TMP_SUFFIX
    handle = fs.create(tmp, exclusive=False)
    try:
        handle.write(data)
        failpoints.hit("atomic.after_write")
        handle.sync()
    finally:
        handle.close()
    failpoints.hit("atomic.after_sync")
    fs.rename(tmp, path)
    failpoints.hit("atomic.after_rename")
    fs.sync_dir(parent_dir(path))


def rename_durably(fs: FileSystem, src: str, dst: str) -> None:
    """Rename and fsync the directories involved, so the new name survives a power loss."""
    fs.rename(src, dst)
    fs.sync_dir(parent_dir(dst))
    if parent_dir(src) != parent_dir(dst):
        fs.sync_dir(parent_dir(src))


def unlink_durably(fs: FileSystem, path: str) -> None:
    """Remove a file and fsync its directory, so it does not come back after a power loss."""
    fs.unlink(path)
    fs.sync_dir(parent_dir(path))


def copy_file(fs: FileSystem, src: str, dst: str, *, start: int = 0, chunk_bytes: int = 1 << 20) -> int:
    """Copy `src` from byte `start` into a new durable file `dst`; return the bytes copied."""
    copied = 0
    tmp = dst + TMP_SUFFIX
    with fs.open_read(src) as reader:
        reader.seek(start)
        out = fs.create(tmp, exclusive=False)
        try:
            while chunk := reader.read(chunk_bytes):
                out.write(chunk)
                copied += len(chunk)
            out.sync()
        finally:
            out.close()
    rename_durably(fs, tmp, dst)
    return copied
