"""CrashFS's own rules: what a simulated power loss keeps and what it takes away."""

from __future__ import annotations

import errno
import random

import pytest

import wal
from tests.crashfs import CrashFS

DIR = "/d"


@pytest.fixture
def fs() -> CrashFS:
    fs = CrashFS()
    fs.makedirs(DIR)
    return fs


def write_file(fs: CrashFS, path: str, data: bytes, *, sync: bool = True, sync_dir: bool = True) -> None:
    handle = fs.create(path, exclusive=True)
    handle.write(data)
    if sync:
        handle.sync()
    handle.close()
    if sync_dir:
        fs.sync_dir(DIR)


def test_synced_file_without_directory_sync_vanishes(fs):
    write_file(fs, "/d/a", b"hello", sync_dir=False)
    assert fs.read_bytes("/d/a") == b"hello"
    after = fs.crash(random.Random(0))
    assert not after.exists("/d/a")
    assert after.listdir(DIR) == []


def test_synced_file_and_directory_survive(fs):
    write_file(fs, "/d/a", b"hello")
    for seed in range(20):
        assert fs.crash(random.Random(seed)).read_bytes("/d/a") == b"hello"


def test_durable_name_with_unsynced_contents_comes_back_with_a_prefix(fs):
    write_file(fs, "/d/a", b"0123456789", sync=False)
    kept = {fs.crash(random.Random(seed)).read_bytes("/d/a") for seed in range(200)}
    assert b"" in kept and b"0123456789" in kept
    assert all(b"0123456789".startswith(k) for k in kept)
    assert len(kept) > 5  # torn at many different bytes


def test_unsynced_tail_is_torn_after_the_durable_prefix(fs):
    write_file(fs, "/d/a", b"durable|")
    handle = fs.open_append("/d/a")
    assert handle.size == 8
    handle.writev([b"un", b"synced"])
    assert handle.size == 16
    kept = {fs.crash(random.Random(seed)).read_bytes("/d/a") for seed in range(200)}
    assert all(k.startswith(b"durable|") and b"durable|unsynced".startswith(k) for k in kept)
    assert {b"durable|", b"durable|unsynced"} <= kept
    torn = fs.crash(random.Random(1), tail="torn").read_bytes("/d/a")
    assert 8 < len(torn) < 16
    assert fs.crash(random.Random(1), tail="none").read_bytes("/d/a") == b"durable|"
    assert fs.crash(random.Random(1), tail="all").read_bytes("/d/a") == b"durable|unsynced"


def test_sync_makes_the_tail_durable(fs):
    write_file(fs, "/d/a", b"one")
    handle = fs.open_append("/d/a")
    handle.write(b"two")
    handle.sync()
    assert fs.crash(random.Random(0), tail="none").read_bytes("/d/a") == b"onetwo"


def test_renamed_but_unsynced_name_reverts(fs):
    write_file(fs, "/d/a", b"data")
    fs.rename("/d/a", "/d/b")
    assert fs.exists("/d/b") and not fs.exists("/d/a")
    after = fs.crash(random.Random(0))
    assert after.read_bytes("/d/a") == b"data"
    assert not after.exists("/d/b")
    fs.sync_dir(DIR)
    after = fs.crash(random.Random(0))
    assert after.read_bytes("/d/b") == b"data"
    assert not after.exists("/d/a")


def test_rename_over_an_existing_name_reverts_to_the_old_file(fs):
    write_file(fs, "/d/target", b"old")
    write_file(fs, "/d/target.tmp", b"new")
    fs.rename("/d/target.tmp", "/d/target")
    assert fs.read_bytes("/d/target") == b"new"
    after = fs.crash(random.Random(0))
    assert after.read_bytes("/d/target") == b"old"
    assert after.read_bytes("/d/target.tmp") == b"new"


def test_unsynced_unlink_comes_back(fs):
    write_file(fs, "/d/a", b"data")
    fs.unlink("/d/a")
    assert not fs.exists("/d/a")
    assert fs.crash(random.Random(0)).read_bytes("/d/a") == b"data"
    fs.sync_dir(DIR)
    assert not fs.crash(random.Random(0)).exists("/d/a")


def test_directory_sync_is_per_directory(fs):
    fs.makedirs("/d/sub")
    write_file(fs, "/d/sub/a", b"x", sync_dir=False)
    fs.sync_dir(DIR)  # the parent, not the file's own directory
    after = fs.crash(random.Random(0))
    assert after.exists("/d/sub")  # directories are durable when made
    assert not after.exists("/d/sub/a")


def test_unsynced_truncate_reverts(fs):
    write_file(fs, "/d/a", b"0123456789")
    handle = fs.open_append("/d/a")
    handle.truncate(4)
    handle.write(b"xy")
    assert fs.read_bytes("/d/a") == b"0123xy"
    assert fs.crash(random.Random(0), tail="all").read_bytes("/d/a") == b"0123456789"
    handle.sync()
    assert fs.crash(random.Random(0)).read_bytes("/d/a") == b"0123xy"


def test_create_over_an_existing_file_truncates_until_synced(fs):
    write_file(fs, "/d/a", b"old contents")
    handle = fs.create("/d/a", exclusive=False)
    handle.write(b"new")
    assert fs.read_bytes("/d/a") == b"new"
    assert fs.crash(random.Random(0), tail="all").read_bytes("/d/a") == b"old contents"
    with pytest.raises(FileExistsError):
        fs.create("/d/a", exclusive=True)


def test_open_read_is_a_snapshot(fs):
    write_file(fs, "/d/a", b"abc")
    reader = fs.open_read("/d/a")
    fs.open_append("/d/a").write(b"def")
    assert reader.read() == b"abc"
    assert fs.open_read("/d/a").read() == b"abcdef"


def test_the_crashed_copy_is_independent_and_fully_durable(fs):
    write_file(fs, "/d/a", b"abc")
    handle = fs.open_append("/d/a")
    handle.write(b"def")
    after = fs.crash(random.Random(3), tail="all")
    handle.write(b"ghi")  # the old machine's writer runs on
    assert after.read_bytes("/d/a") == b"abcdef"
    assert after.crash(random.Random(0), tail="none").read_bytes("/d/a") == b"abcdef"


def test_missing_paths_raise_like_the_os(fs):
    with pytest.raises(FileNotFoundError):
        fs.open_read("/d/missing")
    with pytest.raises(FileNotFoundError):
        fs.open_append("/d/missing")
    with pytest.raises(FileNotFoundError):
        fs.unlink("/d/missing")
    with pytest.raises(FileNotFoundError):
        fs.create("/nowhere/a", exclusive=True)
    with pytest.raises(FileNotFoundError):
        fs.size("/d/missing")
    assert fs.listdir("/nowhere") == []
    fs.makedirs("/d/sub/deeper")
    assert fs.listdir(DIR) == ["sub"]
    assert fs.exists("/d/sub/deeper")


def test_lock_is_exclusive_and_dropped_by_a_crash(fs):
    held = fs.lock("/d/LOCK")
    with pytest.raises(wal.LogLocked):
        fs.lock("/d/LOCK")
    fs.sync_dir(DIR)
    fs.crash(random.Random(0)).lock("/d/LOCK").release()
    held.release()
    fs.lock("/d/LOCK").release()


def test_fail_after_writes_gives_enospc_after_a_short_write(fs):
    fs = CrashFS(fail_after_writes=2)
    fs.makedirs(DIR)
    handle = fs.create("/d/a", exclusive=True)
    handle.write(b"1111")
    handle.write(b"2222")
    with pytest.raises(OSError) as raised:
        handle.writev([b"3333", b"4444"])
    assert raised.value.errno == errno.ENOSPC
    assert handle.size == len(fs.read_bytes("/d/a"))
    assert 8 <= handle.size < 16  # part of the failed write may have landed
    with pytest.raises(OSError):  # and it keeps failing
        handle.write(b"5")


def test_fail_next_sync_raises_once_and_keeps_nothing_durable(fs):
    write_file(fs, "/d/a", b"base")
    handle = fs.open_append("/d/a")
    handle.write(b"more")
    fs.fail_next("sync", errno.EIO)
    with pytest.raises(OSError) as raised:
        handle.sync()
    assert raised.value.errno == errno.EIO
    assert fs.durable_bytes("/d/a") == b"base"
    handle.sync()  # a one-shot fault
    assert fs.durable_bytes("/d/a") == b"basemore"


def test_fail_next_write_can_wait_for_later_writes(fs):
    handle = fs.create("/d/a", exclusive=True)
    fs.fail_next("write", errno.EIO, after=1)
    handle.write(b"ok")
    with pytest.raises(OSError) as raised:
        handle.write(b"bad")
    assert raised.value.errno == errno.EIO
    assert fs.read_bytes("/d/a") == b"ok"  # EIO stores nothing
    handle.write(b"again")


def test_capacity_fills_up(fs):
    fs = CrashFS(capacity_bytes=10)
    fs.makedirs(DIR)
    handle = fs.create("/d/a", exclusive=True)
    handle.write(b"123456")
    assert fs.free_bytes(DIR) == 4
    with pytest.raises(OSError) as raised:
        handle.write(b"789abc")
    assert raised.value.errno == errno.ENOSPC
    assert fs.read_bytes("/d/a") == b"123456789a"
    assert fs.free_bytes(DIR) == 0
