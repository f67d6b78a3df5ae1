"""More behaviour of the log through its public API: open cost, zstd interop, size retention,
offline readers beside a writer, and the public surface."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

import wal
from tests.corruption import flip_byte
from wal.format import HEADER_SIZE, RECORD_OVERHEAD
from wal.fs import OS_FS
from wal.layout import parse_first_seq


def live_segments(log_dir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(log_dir, "wal")))


class RecordingFs:
    """The real file system, remembering every path opened for reading."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def open_read(self, path: str):
        self.opened.append(os.path.abspath(path))
        return OS_FS.open_read(path)

    def __getattr__(self, name: str):
        return getattr(OS_FS, name)


def test_open_scans_only_the_active_segment_and_damage_in_a_sealed_one_shows_when_read(open_log, log_dir):
    # 3 records of 72 bytes fill a 256-byte segment (16 + 3 * 72 = 232; a fourth would not fit).
    log = open_log(segment_bytes=256, auto_archive=False, fsync="never")
    total = 155
    for seq in range(1, total + 1):
        log.append(b"%039d|" % seq)
    log.close()
    names = live_segments(log_dir)
    assert len(names) == 52  # 51 sealed segments of 3 records, and the active one with 2
    victim_name = names[5]
    victim = os.path.join(log_dir, "wal", victim_name)
    first = parse_first_seq(victim_name)
    assert first == 16
    middle = first + 1  # the second of the segment's three records
    middle_offset = HEADER_SIZE + (RECORD_OVERHEAD + 40)
    flip_byte(victim, middle_offset + 24 + 5)  # a payload byte: only the CRC can notice

    fs = RecordingFs()
    log = wal.open(log_dir, fs=fs, auto_archive=False, fsync="never", segment_bytes=256, min_free_bytes=0)
    try:
        assert log.damage == []  # sealed segments are not scanned at open
        active = os.path.join(log_dir, "wal", names[-1])
        sealed = {os.path.join(log_dir, "wal", name) for name in names[:-1]}
        assert not sealed & set(fs.opened), "open read a sealed segment"
        assert active in fs.opened
        assert log.last_seq == total

        records = list(log.read())
        assert [r.seq for r in records] == [s for s in range(1, total + 1) if s != middle]
        assert all(r.payload == b"%039d|" % r.seq for r in records)
        (report,) = log.damage
        assert report.path == victim
        assert report.records_skipped == 1
        assert report.offset == middle_offset
        assert report.end_offset == middle_offset + RECORD_OVERHEAD + 40
        # appends go on after the damage, with the next sequence
        assert log.append(b"after") == total + 1
    finally:
        log.close()


def test_archive_decompresses_with_the_zstd_cli(open_log, log_dir):
    zstd = shutil.which("zstd")
    if zstd is None:
        pytest.fail("zstd CLI missing: run make install")
    log = open_log(segment_bytes=600, auto_archive=False)
    for i in range(40):
        log.append(b"record %03d " % i + os.urandom(i % 7) + b"x" * (i % 50))
    names = live_segments(log_dir)
    assert len(names) >= 3
    originals = {}
    for name in names[:-1]:
        with open(os.path.join(log_dir, "wal", name), "rb") as handle:
            originals[name] = handle.read()
    archived = log.archive()
    assert [os.path.basename(a.source) for a in archived] == names[:-1]
    for item in archived:
        name = os.path.basename(item.source)
        assert item.archive == os.path.join(log_dir, "archive", name + ".zst")
        result = subprocess.run(
            [zstd, "-d", "-c", item.archive], capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert result.stdout == originals[name]
        assert item.original_bytes == len(originals[name])
        assert item.archived_bytes == os.path.getsize(item.archive)


def test_retention_by_total_size_removes_the_oldest_archives_first(open_log, log_dir):
    log = open_log(segment_bytes=400, auto_archive=False, retention_max_age_s=None)
    for i in range(60):
        log.append(b"%02d" % i + os.urandom(60))  # incompressible: archives of similar size
    archived = log.archive()
    assert len(archived) >= 5
    log.close()
    paths = [a.archive for a in archived]
    sizes = [os.path.getsize(p) for p in paths]
    # A cap one byte short of keeping the second oldest: exactly the two oldest must go.
    cap = sum(sizes[2:]) + sizes[1] - 1
    # The newest archive looks ancient, but age is not a criterion here (retention_max_age_s=None).
    ancient = time.time() - 10 * 365 * 24 * 3600
    os.utime(paths[-1], (ancient, ancient))

    log = open_log(auto_archive=False, retention_max_age_s=None, retention_max_bytes=cap)
    now = time.time()
    planned = log.apply_retention(now=now, dry_run=True)
    assert [r.path for r in planned] == paths[:2]
    assert [r.size_bytes for r in planned] == sizes[:2]
    assert {r.reason for r in planned} == {"size"}
    assert all(os.path.exists(p) for p in paths), "a dry run removed an archive"

    removed = log.apply_retention(now=now)
    assert removed == planned
    assert [os.path.exists(p) for p in paths] == [False, False] + [True] * (len(paths) - 2)
    remaining = sorted(os.listdir(os.path.join(log_dir, "archive")))
    assert sum(os.path.getsize(os.path.join(log_dir, "archive", n)) for n in remaining) <= cap
    assert log.apply_retention(now=now) == []
    seqs = [r.seq for r in log.read()]
    assert seqs == list(range(archived[2].first_seq, 61))


def _payload(seq: int) -> bytes:
    return b"%08d|" % seq + bytes([seq % 251]) * (seq % 173)


def test_read_log_beside_a_busy_writer_never_sees_a_partial_record(open_log, log_dir):
    log = open_log(segment_bytes=700, fsync="never", auto_archive=True)
    total = 4000
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            seq = 1
            while seq <= total:
                if seq % 5 == 0:
                    count = min(7, total - seq + 1)
                    got = log.append_batch([_payload(s) for s in range(seq, seq + count)])
                    assert got == list(range(seq, seq + count))
                    seq += count
                else:
                    assert log.append(_payload(seq), wait=seq % 3 != 0) == seq
                    seq += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    damage: list[object] = []
    reads = 0
    longest = 0
    try:
        while not done.is_set() or reads < 3:
            from_seq = 1 if reads % 2 == 0 else max(1, longest // 2)
            seqs = []
            for record in wal.read_log(log_dir, from_seq, on_damage=lambda path, d: damage.append((path, d))):
                assert record.payload == _payload(record.seq), record
                seqs.append(record.seq)
            assert damage == []
            assert seqs == list(range(from_seq, from_seq + len(seqs))), "a sequence gap or repeat"
            longest = max(longest, from_seq + len(seqs) - 1)
            reads += 1
    finally:
        writer.join()
    assert errors == []
    log.wait_durable(total, timeout=10)
    final = list(wal.read_log(log_dir, on_damage=lambda path, d: damage.append((path, d))))
    assert [r.seq for r in final] == list(range(1, total + 1))
    assert damage == []
    assert any(r.archived for r in final), "the background archiver never ran"
    assert reads >= 3
