"""The real file layer: synced writes, and the reused queue buffers the writer takes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import wal
from wal.fs import OS_FS
from wal.pending import INITIAL_BYTES, KEEP_BYTES, PendingRecords


def test_synced_write_appends_and_tracks_the_size(tmp_path):
    path = str(tmp_path / "f")
    handle = OS_FS.create(path, exclusive=True)
    try:
        handle.write(b"head")
        buffer = bytearray(b"xxabcdefyy")
        handle.write_synced(memoryview(buffer)[2:8])
        assert handle.size == 10
    finally:
        handle.close()
    assert Path(path).read_bytes() == b"headabcdef"


def test_synced_write_falls_back_to_write_and_fdatasync(tmp_path):
    path = str(tmp_path / "f")
    handle = OS_FS.create(path, exclusive=True)
    handle.dsync = False  # as after a kernel refused RWF_DSYNC
    try:
        handle.write_synced(b"0123456789")
        assert handle.size == 10
    finally:
        handle.close()
    assert Path(path).read_bytes() == b"0123456789"


def test_this_machine_writes_durably_in_one_call():
    # Linux >= 4.7 has RWF_DSYNC; without it the log still works, one GIL hand-back slower.
    assert OS_FS.synced_writes, "os.RWF_DSYNC is missing: fsync=always falls back to write + fdatasync"


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_each_fsync_policy_writes_every_record_once(tmp_path, fsync):
    root = str(tmp_path / "log")
    payloads = [os.urandom(n) for n in (0, 1, 4096, 70_000, 300_000, 5)]
    with wal.open(root, fsync=fsync, segment_bytes=256 * 1024) as log:
        seqs = [log.append(p, wait=False) for p in payloads]
        seqs += log.append_batch(payloads)
        log.wait_durable(seqs[-1], timeout=10)
        stats = log.stats()
        if fsync == "always":
            assert stats.syncs >= 1
    with wal.open(root) as log:
        assert [r.payload for r in log.read()] == payloads + payloads


def test_pending_buffers_are_reused_and_grow():
    pending = PendingRecords()
    first = pending.buffer
    pending.add(b"p" * 24, b"x" * 100, b"c" * 8)
    buffer, used, count = pending.take()
    assert buffer is first and (used, count) == (132, 1)
    assert bytes(buffer[:used]) == b"p" * 24 + b"x" * 100 + b"c" * 8
    second = pending.buffer
    assert second is not first
    pending.give_back(buffer)
    # a record larger than the buffer: it grows, keeping what was queued before it
    pending.add(b"a" * 24, b"b" * 10, b"c" * 8)
    pending.add(b"d" * 24, b"e" * INITIAL_BYTES, b"f" * 8)
    grown, used, count = pending.take()
    assert count == 2 and used == 42 + 32 + INITIAL_BYTES
    assert bytes(grown[:42]) == b"a" * 24 + b"b" * 10 + b"c" * 8
    assert pending.buffer is first  # the spare came back into use
    pending.give_back(grown)
    assert pending.spare is grown


def test_a_burst_buffer_is_not_kept():
    pending = PendingRecords()
    pending.add(b"", b"z" * (KEEP_BYTES + 1), b"")
    buffer, _used, _count = pending.take()
    pending.give_back(buffer)
    assert pending.spare is None
