"""CrashFS: an in-memory `wal.fs.FileSystem` that knows exactly what a power loss would keep.

The rules it models (and only these; the log must be correct under every one of them):

- Each file (inode) has `content`, what a reader sees now, and `durable`, what survives a crash.
  `AppendFile.sync()` makes that inode's content and size durable, and nothing else.
- Names in a directory (create, rename, unlink) become durable only when that directory is
  synced with `sync_dir`. Until then a power loss brings the old set of names back: a new file
  vanishes (even one whose contents were synced), a renamed file reappears under its old name,
  an unlinked one comes back.
- Simplification: directories themselves (`makedirs`) are durable at once, and so are mtimes.
  The log only creates its four fixed folders, at open, and does not depend on either.
- A crash keeps, of each file's unsynced appended bytes, a random-length prefix (a write torn at
  any byte, sometimes none of it, sometimes all). A file truncated since its last sync comes
  back as it was at that sync: unsynced truncates revert.
- Locks are dropped by a crash; open handles belong to the machine that died.

`crash(rng)` returns a new CrashFS holding what the power loss left; the old one keeps running
(the threads of a log still open on it can write on, harmlessly). Errors can be injected to test
how the log fails: `fail_after_writes=N` (every write after the first N raises ENOSPC, after
writing part of its bytes, as a full disk does), `fail_next("write" | "sync", errno)`, and
`capacity_bytes` (a disk that really fills up).
"""

from __future__ import annotations

import errno
import io
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from wal.errors import LogLocked

TailMode = Literal["random", "none", "all", "torn"]


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


@dataclass(eq=False)
class Inode:
    """One file: what a reader sees now, and what a power loss would leave."""

    content: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    truncated: bool = False  # truncated below its durable size since the last sync
    mtime: float = field(default_factory=time.time)

    def crashed(self, rng: random.Random, tail: TailMode) -> Inode:
        """The file after a power loss: its durable bytes plus some prefix of the unsynced tail."""
        if self.truncated:
            return Inode(bytearray(self.durable), self.durable, mtime=self.mtime)
        unsynced = bytes(self.content[len(self.durable) :])
        keep = _tail_length(rng, len(unsynced), tail)
        data = self.durable + unsynced[:keep]
        return Inode(bytearray(data), data, mtime=self.mtime)


def _tail_length(rng: random.Random, length: int, tail: TailMode) -> int:
    if length == 0 or tail == "none":
        return 0
    if tail == "all":
        return length
    if tail == "torn":
        return rng.randint(1, length - 1) if length > 1 else 0
    roll = rng.random()
    if roll < 0.2:
        return 0
    if roll < 0.4:
        return length
    return rng.randint(0, length)


@dataclass(eq=False)
class Directory:
    """The names in one directory now, and the names a power loss would leave."""

    entries: dict[str, Inode] = field(default_factory=dict)
    durable: dict[str, Inode] = field(default_factory=dict)


@dataclass
class _Fault:
    op: str  # "write" or "sync"
    code: int
    after: int  # let this many matching calls through first
    sticky: bool  # keep failing once triggered


class CrashAppendFile:
    """An append handle on one inode; `size` is the offset of the next write."""

    def __init__(self, fs: CrashFS, path: str, inode: Inode) -> None:
        self._fs = fs
        self._inode = inode
        self.path = path
        self.size = len(inode.content)
        self.closed = False

    def write(self, data: bytes) -> None:
        self._append(bytes(data))

    def writev(self, buffers: list[bytes]) -> None:
        self._append(b"".join(buffers))

    def _append(self, data: bytes) -> None:
        with self._fs.mutex:
            self._check_open()
            room = self._fs._write_allowance(self.path, len(data))
            if room < len(data):
                # A full disk takes what fits and refuses the rest, as a short write then ENOSPC.
                self._store(data[:room])
                raise _oserror(errno.ENOSPC, self.path)
            self._store(data)

    def _store(self, data: bytes) -> None:
        inode = self._inode
        inode.content += data  # O_APPEND: always at the end of the file
        inode.mtime = time.time()
        self.size = len(inode.content)

    def write_synced(self, data: bytes) -> None:
        self.write(data)
        self.sync()

    def sync(self) -> None:
        with self._fs.mutex:
            self._check_open()
            self._fs._check_fault("sync", self.path)
            self._fs.syncs += 1
            self._inode.durable = bytes(self._inode.content)
            self._inode.truncated = False

    def truncate(self, size: int) -> None:
        with self._fs.mutex:
            self._check_open()
            inode = self._inode
            if size < len(inode.durable):
                inode.truncated = True
            if size <= len(inode.content):
                del inode.content[size:]
            else:
                inode.content += bytes(size - len(inode.content))
            inode.mtime = time.time()
            self.size = size

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise _oserror(errno.EBADF, self.path)


class CrashLock:
    def __init__(self, fs: CrashFS, path: str) -> None:
        self._fs = fs
        self._path = path

    def release(self) -> None:
        with self._fs.mutex:
            self._fs._locks.discard(self._path)


class CrashFS:
    """An in-memory file system with power-loss semantics; see the module docstring."""

    # Writes and syncs stay separate steps here, so a crash can land between them.
    synced_writes = False

    def __init__(
        self,
        *,
        fail_after_writes: int | None = None,
        fail_errno: int = errno.ENOSPC,
        capacity_bytes: int | None = None,
    ) -> None:
        self.mutex = threading.RLock()
        self._dirs: dict[str, Directory] = {"/": Directory()}
        self._locks: set[str] = set()
        self._faults: list[_Fault] = []
        self.capacity_bytes = capacity_bytes
        self.writes = 0  # write/writev calls that stored data
        self.syncs = 0  # successful file syncs
        self.dir_syncs = 0
        if fail_after_writes is not None:
            self.fail_next("write", fail_errno, after=fail_after_writes, sticky=True)

    # -- error injection -----------------------------------------------------------------------

    def fail_next(self, op: str, code: int, *, after: int = 0, sticky: bool = False) -> None:
        """Make the next `op` ("write" or "sync") after `after` more successful ones raise OSError(code).

        A failing write first stores a random part of its bytes (a short write), like a disk filling
        up mid-write. `sticky` keeps every later call failing too.
        """
        if op not in ("write", "sync"):
            raise ValueError(f"cannot inject a fault into {op!r}")
        with self.mutex:
            self._faults.append(_Fault(op, code, after, sticky))

    def clear_faults(self) -> None:
        with self.mutex:
            self._faults.clear()

    def _check_fault(self, op: str, path: str) -> None:
        for fault in self._faults:
            if fault.op != op:
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            if not fault.sticky:
                self._faults.remove(fault)
            raise _oserror(fault.code, path)

    def _write_allowance(self, path: str, wanted: int) -> int:
        """How many of `wanted` bytes the next write may store; raises for a non-ENOSPC fault."""
        try:
            self._check_fault("write", path)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return random.Random(self.writes).randint(0, max(0, wanted - 1))
        self.writes += 1
        if self.capacity_bytes is not None:
            return max(0, min(wanted, self.capacity_bytes - self.used_bytes()))
        return wanted

    # -- paths -----------------------------------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        return os.path.normpath(os.path.join("/", os.fspath(path)))

    def _parent(self, path: str) -> tuple[Directory, str]:
        path = self._norm(path)
        parent, name = os.path.split(path)
        directory = self._dirs.get(parent)
        if directory is None or not name:
            raise _oserror(errno.ENOENT, path)
        return directory, name

    def _inode(self, path: str) -> Inode:
        directory, name = self._parent(path)
        inode = directory.entries.get(name)
        if inode is None:
            code = errno.EISDIR if self._norm(path) in self._dirs else errno.ENOENT
            raise _oserror(code, path)
        return inode

    # -- the FileSystem protocol -----------------------------------------------------------------

    def create(self, path: str, *, exclusive: bool) -> CrashAppendFile:
        with self.mutex:
            directory, name = self._parent(path)
            inode = directory.entries.get(name)
            if inode is not None:
                if exclusive:
                    raise _oserror(errno.EEXIST, path)
                # O_TRUNC on the existing inode; like any truncate it reverts unless synced.
                if inode.durable:
                    inode.truncated = True
                inode.content.clear()
                inode.mtime = time.time()
            elif self._norm(path) in self._dirs:
                raise _oserror(errno.EISDIR, path)
            else:
                inode = Inode()
                directory.entries[name] = inode
            return CrashAppendFile(self, self._norm(path), inode)

    def open_append(self, path: str) -> CrashAppendFile:
        with self.mutex:
            return CrashAppendFile(self, self._norm(path), self._inode(path))

    def open_read(self, path: str) -> io.BytesIO:
        with self.mutex:
            return io.BytesIO(bytes(self._inode(path).content))

    def listdir(self, path: str) -> list[str]:
        with self.mutex:
            path = self._norm(path)
            directory = self._dirs.get(path)
            if directory is None:
                return []
            subdirs = [os.path.basename(d) for d in self._dirs if d != path and os.path.dirname(d) == path]
            return sorted([*directory.entries, *subdirs])

    def exists(self, path: str) -> bool:
        with self.mutex:
            path = self._norm(path)
            if path in self._dirs:
                return True
            try:
                self._inode(path)
            except OSError:
                return False
            return True

    def makedirs(self, path: str) -> None:
        with self.mutex:
            path = self._norm(path)
            chain = []
            while path not in self._dirs:
                chain.append(path)
                path = os.path.dirname(path)
            for folder in reversed(chain):
                parent, name = os.path.split(folder)
                if name in self._dirs[parent].entries:
                    raise _oserror(errno.EEXIST, folder)
                self._dirs[folder] = Directory()

    def rename(self, src: str, dst: str) -> None:
        with self.mutex:
            inode = self._inode(src)
            src_dir, src_name = self._parent(src)
            dst_dir, dst_name = self._parent(dst)
            if self._norm(dst) in self._dirs:
                raise _oserror(errno.EISDIR, dst)
            del src_dir.entries[src_name]
            dst_dir.entries[dst_name] = inode

    def unlink(self, path: str) -> None:
        with self.mutex:
            self._inode(path)
            directory, name = self._parent(path)
            del directory.entries[name]

    def sync_dir(self, path: str) -> None:
        with self.mutex:
            directory = self._dirs.get(self._norm(path))
            if directory is None:
                raise _oserror(errno.ENOENT, path)
            directory.durable = dict(directory.entries)
            self.dir_syncs += 1

    def size(self, path: str) -> int:
        with self.mutex:
            return len(self._inode(path).content)

    def mtime(self, path: str) -> float:
        with self.mutex:
            return self._inode(path).mtime

    def set_mtime(self, path: str, mtime: float) -> None:
        with self.mutex:
            self._inode(path).mtime = mtime

    def free_bytes(self, path: str) -> int:
        with self.mutex:
            if self.capacity_bytes is None:
                return 1 << 40
            return max(0, self.capacity_bytes - self.used_bytes())

    def lock(self, path: str) -> CrashLock:
        with self.mutex:
            path = self._norm(path)
            if path in self._locks:
                raise LogLocked(os.path.dirname(path), os.getpid())
            directory, name = self._parent(path)
            inode = directory.entries.setdefault(name, Inode())
            inode.content[:] = f"{os.getpid()}\n".encode()
            self._locks.add(path)
            return CrashLock(self, path)

    # -- power loss --------------------------------------------------------------------------------

    def crash(self, rng: random.Random, *, tail: TailMode = "random") -> CrashFS:
        """A new CrashFS holding what a power loss at this instant leaves on the disk.

        `tail` says how much of each file's unsynced appended bytes survive: "random" (none, all or
        a random prefix), "none", "all", or "torn" (a strict, non-empty prefix where possible).
        """
        with self.mutex:
            after = CrashFS(capacity_bytes=self.capacity_bytes)
            survivors: dict[int, Inode] = {}  # one result per inode, so links stay links
            for path in sorted(self._dirs):
                directory = Directory()
                for name in sorted(self._dirs[path].durable):
                    inode = self._dirs[path].durable[name]
                    if id(inode) not in survivors:
                        survivors[id(inode)] = inode.crashed(rng, tail)
                    directory.entries[name] = survivors[id(inode)]
                directory.durable = dict(directory.entries)
                after._dirs[path] = directory
            return after

    # -- inspection, for tests ------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        """The current contents of a file."""
        with self.mutex:
            return bytes(self._inode(path).content)

    def durable_bytes(self, path: str) -> bytes:
        """What the file's contents would be after a power loss, were its name durable."""
        with self.mutex:
            return self._inode(path).durable

    def is_name_durable(self, path: str) -> bool:
        """True when the file's current name would survive a power loss."""
        with self.mutex:
            directory, name = self._parent(path)
            return directory.durable.get(name) is directory.entries.get(name) is not None

    def used_bytes(self) -> int:
        with self.mutex:
            return sum(len(i.content) for d in self._dirs.values() for i in d.entries.values())

    def files(self) -> dict[str, bytes]:
        """Every file's path and current contents."""
        with self.mutex:
            return {
                os.path.join(path, name): bytes(inode.content)
                for path, directory in self._dirs.items()
                for name, inode in directory.entries.items()
            }
