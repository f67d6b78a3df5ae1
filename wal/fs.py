"""The file layer the log does all its I/O through.

`OsFileSystem` is the real one. Tests swap in a simulated file system that keeps only what was
fsynced, so crash consistency can be checked against the exact rules a power loss follows. The
interface is therefore small and says plainly which calls make data durable: `AppendFile.sync`
(file contents and size), `AppendFile.write_synced` (a write that is durable when it returns)
and `FileSystem.sync_dir` (names in a directory).
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import BinaryIO, Protocol

from .errors import LogLocked


class AppendFile(Protocol):
    """A file open for appending; `size` is the offset of the next write."""

    path: str
    size: int

    def write(self, data: bytes) -> None: ...
    def writev(self, buffers: list[bytes]) -> None: ...
    def write_synced(self, data: bytes) -> None: ...
    def sync(self) -> None: ...
    def truncate(self, size: int) -> None: ...
    def close(self) -> None: ...


class FileLock(Protocol):
    def release(self) -> None: ...


class FileSystem(Protocol):
    """Everything the log needs from a file system."""

    #: True when `AppendFile.write_synced` is one step, so the log may use it for fsync="always".
    #: A simulated file system that crashes between a write and its sync leaves this False.
    synced_writes: bool

    def create(self, path: str, *, exclusive: bool) -> AppendFile: ...
    def open_append(self, path: str) -> AppendFile: ...
    def open_read(self, path: str) -> BinaryIO: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def makedirs(self, path: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def sync_dir(self, path: str) -> None: ...
    def size(self, path: str) -> int: ...
    def mtime(self, path: str) -> float: ...
    def set_mtime(self, path: str, mtime: float) -> None: ...
    def free_bytes(self, path: str) -> int: ...
    def lock(self, path: str) -> FileLock: ...


# Write at most this many buffers per writev call (Linux IOV_MAX is 1024).
_IOV_MAX = 1024
# pwritev2 flag (Linux 4.7+): this write is durable, as after fdatasync, when the call returns.
_RWF_DSYNC: int | None = getattr(os, "RWF_DSYNC", None)
_NO_DSYNC_ERRNOS = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)


class OsAppendFile:
    """An append-only file descriptor; sync is fdatasync (the size is data, so it is covered)."""

    __slots__ = ("dsync", "fd", "path", "size")

    def __init__(self, path: str, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.dsync = _RWF_DSYNC is not None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    def writev(self, buffers: list[bytes]) -> None:
        # Short writes are rare (signals, disk full); fall back to plain writes for the rest.
        for start in range(0, len(buffers), _IOV_MAX):
            part = buffers[start : start + _IOV_MAX]
            total = sum(map(len, part))
            written = os.writev(self.fd, part)
            self.size += written
            if written < total:
                self.write(b"".join(part)[written:])

    def write_synced(self, data: bytes) -> None:
        """Write and make durable in one system call (pwritev2 with RWF_DSYNC).

        Same guarantee as write + fdatasync, but the writer thread comes back for the GIL once
        per batch instead of twice; while an appender is busy in Python each return can wait
        out a whole switch interval (5 ms).
        """
        view = memoryview(data)
        if self.dsync:
            assert _RWF_DSYNC is not None
            try:
                while view:
                    written = os.pwritev(self.fd, [view], self.size, _RWF_DSYNC)
                    self.size += written
                    view = view[written:]
                return
            except OSError as exc:
                # A kernel or file system without RWF_DSYNC refuses before writing anything.
                if exc.errno not in _NO_DSYNC_ERRNOS or len(view) != len(data):
                    raise
                self.dsync = False
        self.write(view)
        self.sync()

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        os.lseek(self.fd, size, os.SEEK_SET)
        self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OsFileLock:
    """An exclusive flock held on an open file that records the holder's pid."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class OsFileSystem:
    """The real file system."""

    synced_writes = _RWF_DSYNC is not None

    def create(self, path: str, *, exclusive: bool) -> OsAppendFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        return OsAppendFile(path, os.open(path, flags, 0o644), 0)

    def open_append(self, path: str) -> OsAppendFile:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return OsAppendFile(path, fd, os.fstat(fd).st_size)

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def mtime(self, path: str) -> float:
        return os.stat(path).st_mtime

    def set_mtime(self, path: str, mtime: float) -> None:
        os.utime(path, (mtime, mtime))

    def free_bytes(self, path: str) -> int:
        stat = os.statvfs(path)
        return stat.f_bavail * stat.f_frsize

    def lock(self, path: str) -> OsFileLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LogLocked(os.path.dirname(path), read_lock_holder(path)) from None
            raise
        # Record who holds the lock, for the error a second writer sees.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return OsFileLock(fd)


def read_lock_holder(path: str) -> int | None:
    """The pid written into a lock file, if it can be read."""
    try:
        with open(path, "rb") as handle:
            return int(handle.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_locked(path: str) -> int | None:
    """The pid holding the writer lock at `path`, or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_lock_holder(path) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


OS_FS = OsFileSystem()
