"""The log's behaviour through its public API, on the real file system."""

from __future__ import annotations

import os
import threading
import time

import pytest

import wal
from tests.corruption import flip_byte
from wal import failpoints
from wal.format import HEADER_SIZE, RECORD_OVERHEAD, SEGMENT_HEADER


def payloads(log: wal.Log, from_seq: int = 1) -> list[bytes]:
    return [r.payload for r in log.read(from_seq)]


def live_segments(log_dir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(log_dir, "wal")))


def test_append_returns_contiguous_sequences_from_one(open_log):
    log = open_log()
    assert [log.append(b"r%d" % i) for i in range(5)] == [1, 2, 3, 4, 5]
    assert log.durable_seq == 5
    assert payloads(log) == [b"r0", b"r1", b"r2", b"r3", b"r4"]


def test_read_reports_where_each_record_lives(open_log, log_dir):
    log = open_log()
    log.append(b"abc")
    log.append(b"defg")
    first, second = log.read()
    assert first.path == os.path.join(log_dir, "wal", "00000000000000000001.wal")
    assert (first.offset, second.offset) == (HEADER_SIZE, HEADER_SIZE + RECORD_OVERHEAD + 3)
    assert not first.archived and first.timestamp_ms > 1_600_000_000_000


def test_new_segment_starts_with_the_arwal_header(open_log, log_dir):
    open_log()
    with open(os.path.join(log_dir, "wal", "00000000000000000001.wal"), "rb") as handle:
        assert handle.read() == bytes.fromhex("41 52 57 41 4c 30 30 31 01 00 00 00 00 00 00 00")


def test_sequences_continue_across_reopen(open_log, log_dir):
    log = open_log()
    for i in range(10):
        log.append(b"x%d" % i)
    log.close()
    log = open_log()
    assert log.append(b"after") == 11
    assert payloads(log)[-2:] == [b"x9", b"after"]


def test_append_batch_is_contiguous_and_durable(open_log):
    log = open_log()
    log.append(b"one")
    assert log.append_batch([b"a", b"b", b"c"]) == [2, 3, 4]
    assert log.durable_seq == 4
    assert log.append_batch([]) == []


def test_wait_false_then_wait_durable(open_log):
    log = open_log()
    seqs = [log.append(b"p%d" % i, wait=False) for i in range(500)]
    assert seqs == list(range(1, 501))
    assert log.wait_durable(500, timeout=10)
    assert log.durable_seq == 500
    with pytest.raises(ValueError):
        log.wait_durable(501)


def test_on_durable_callback_sees_the_watermark(log_dir):
    seen: list[int] = []
    with wal.open(log_dir, on_durable=seen.append, min_free_bytes=0) as log:
        for i in range(20):
            log.append(b"%d" % i, wait=False)
        log.wait_durable(20, timeout=10)
    assert seen and seen == sorted(seen) and seen[-1] == 20


def test_many_threads_group_commit(open_log):
    log = open_log()
    got: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(200):
            seq = log.append(b"t%d-%d" % (n, i))
            assert log.durable_seq >= seq  # returned only once durable
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 1601))
    stats = log.stats()
    assert stats.syncs < 1600  # fsyncs were shared
    assert len(set(payloads(log))) == 1600


def test_rotation_by_size_names_segments_by_first_sequence(open_log, log_dir):
    log = open_log(segment_bytes=1024, auto_archive=False)
    for i in range(100):
        log.append(b"%04d" % i + b"." * 60)  # 96-byte records
    names = live_segments(log_dir)
    assert len(names) > 5
    firsts = [int(n[:20]) for n in names]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    for name in names:
        assert os.path.getsize(os.path.join(log_dir, "wal", name)) <= 1024
    assert [r.seq for r in log.read()] == list(range(1, 101))
    # each segment's first record carries the number in its name
    by_path = {}
    for record in log.read():
        by_path.setdefault(record.path, record.seq)
    assert sorted(by_path.values()) == firsts[: len(by_path)]


def test_record_larger_than_a_segment_gets_its_own(open_log, log_dir):
    log = open_log(segment_bytes=256, auto_archive=False)
    log.append(b"small")
    log.append(b"B" * 1000)
    log.append(b"small again")
    assert payloads(log) == [b"small", b"B" * 1000, b"small again"]
    assert len(live_segments(log_dir)) == 3


def test_rotation_by_age(open_log, log_dir):
    log = open_log(segment_max_age_s=0.05, auto_archive=False)
    log.append(b"old")
    deadline = time.monotonic() + 5
    while len(live_segments(log_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live_segments(log_dir) == ["00000000000000000001.wal", "00000000000000000002.wal"]
    assert log.append(b"new") == 2


def test_record_too_large_is_refused(open_log):
    log = open_log(max_record_bytes=100)
    with pytest.raises(wal.RecordTooLarge):
        log.append(b"x" * 69)
    assert log.append(b"x" * 68) == 1


def test_second_writer_gets_a_clear_error_naming_the_holder(open_log, log_dir):
    open_log()
    with pytest.raises(wal.LogLocked, match=f"process {os.getpid()}"):
        wal.open(log_dir, min_free_bytes=0)


def test_readers_work_beside_a_running_writer(open_log, log_dir):
    log = open_log()
    for i in range(30):
        log.append(b"%d" % i)
    assert [r.seq for r in wal.read_log(log_dir)] == list(range(1, 31))


def test_tail_blocks_until_records_arrive(open_log):
    log = open_log()
    tail = log.tail(1)
    started = time.monotonic()
    assert tail.next_batch(timeout_s=0.2) == []
    assert time.monotonic() - started >= 0.19
    got: list[int] = []

    def consume() -> None:
        while len(got) < 50:
            got.extend(r.seq for r in tail.next_batch(max_records=7, timeout_s=5))

    reader = threading.Thread(target=consume)
    reader.start()
    for i in range(50):
        log.append(b"%d" % i, wait=i % 10 == 0)
    reader.join(10)
    assert got == list(range(1, 51))
    tail.close()


def test_tail_follows_across_rotation_and_archiving(open_log):
    log = open_log(segment_bytes=512)
    tail = log.tail(1)
    got = []
    for i in range(60):
        log.append(b"r%02d" % i + b"-" * 40)
        got.extend(r.seq for r in tail.next_batch(timeout_s=0))
    log.archive()
    got.extend(r.seq for r in tail.next_batch(timeout_s=0.5))
    assert got == list(range(1, 61))


def test_tail_returns_empty_when_log_closes(log_dir):
    log = wal.open(log_dir, min_free_bytes=0)
    tail = log.tail(1)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(tail.next_batch()))
    reader.start()
    time.sleep(0.05)
    log.close()
    reader.join(5)
    assert result == [[]]


def test_cursor_commit_is_durable_and_monotonic(open_log, log_dir):
    log = open_log()
    cursor = log.cursor("http")
    assert cursor.position == 0
    log.append(b"a")
    log.append(b"b")
    cursor.commit(2)
    with pytest.raises(wal.WalError, match="cannot move back"):
        cursor.commit(1)
    log.close()
    log = open_log()
    assert log.cursor("http").position == 2
    assert log.cursors() == {"http": 2}
    with pytest.raises(wal.WalError, match="invalid cursor name"):
        log.cursor("../etc")


def test_archive_waits_for_every_cursor(open_log, log_dir):
    log = open_log(segment_bytes=512, auto_archive=False)
    fast, slow = log.cursor("fast"), log.cursor("slow")
    for i in range(40):
        log.append(b"%02d" % i + b"." * 40)
    segments = live_segments(log_dir)
    assert len(segments) >= 4
    fast.commit(40)
    assert log.archive() == []  # slow has not passed anything
    second_first = int(segments[1][:20])
    slow.commit(second_first - 1)
    archived = log.archive()
    assert [a.first_seq for a in archived] == [1]
    assert os.listdir(os.path.join(log_dir, "archive")) == [segments[0] + ".zst"]
    assert [r.seq for r in log.read()] == list(range(1, 41))
    assert next(iter(log.read())).archived


def test_archive_never_touches_the_active_segment(open_log, log_dir):
    log = open_log(auto_archive=False)
    log.append(b"only")
    assert log.archive() == []
    assert live_segments(log_dir) == ["00000000000000000001.wal"]


def test_archive_is_byte_identical_after_zstd_decompress(open_log, log_dir):
    import zstandard

    log = open_log(segment_bytes=400, auto_archive=False)
    for i in range(20):
        log.append(b"%02d" % i * 10)
    first = os.path.join(log_dir, "wal", live_segments(log_dir)[0])
    with open(first, "rb") as handle:
        original = handle.read()
    log.archive()
    with open(os.path.join(log_dir, "archive", os.path.basename(first) + ".zst"), "rb") as handle:
        restored = zstandard.ZstdDecompressor().decompress(handle.read())
    assert restored == original


def test_background_archiver_runs_after_rotation(open_log, log_dir):
    log = open_log(segment_bytes=300)
    for i in range(30):
        log.append(b"%02d" % i * 10)
    deadline = time.monotonic() + 5
    while not os.listdir(os.path.join(log_dir, "archive")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(os.path.join(log_dir, "archive"))
    assert [r.seq for r in log.read()] == list(range(1, 31))


def test_sequences_never_reused_when_everything_was_archived_and_wal_dir_emptied(open_log, log_dir):
    log = open_log(segment_bytes=300, auto_archive=False)
    for i in range(30):
        log.append(b"%02d" % i * 10)
    log.archive()
    log.close()
    for name in live_segments(log_dir):  # an operator removes the live segments by hand
        os.unlink(os.path.join(log_dir, "wal", name))
    log = open_log()
    assert log.append(b"next") > 1
    archived_last = max(r.seq for r in wal.read_log(log_dir) if r.archived)
    assert log.last_seq == archived_last + 1


def test_retention_by_age_and_size(open_log, log_dir):
    log = open_log(segment_bytes=300, auto_archive=False, retention_max_age_s=3600, retention_max_bytes=None)
    for i in range(60):
        log.append(b"%02d" % i * 10)
    archived = log.archive()
    assert len(archived) >= 4
    old = archived[0].archive
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert [r.path for r in log.apply_retention(dry_run=True)] == [old]
    assert os.path.exists(old)
    removed = log.apply_retention()
    assert [(r.path, r.reason) for r in removed] == [(old, "age")]
    assert not os.path.exists(old)
    # reading starts at the oldest record still on disk
    assert next(iter(log.read(1))).seq == archived[1].first_seq


def test_budget_error_mode_raises_wal_full(open_log):
    log = open_log(segment_bytes=300, max_unarchived_bytes=1000, on_full="error", auto_archive=False)
    log.cursor("stuck")
    with pytest.raises(wal.WalFullError, match="max_unarchived_bytes"):
        for i in range(100):
            log.append(b"%02d" % i * 10)
    assert log.durable_seq >= 10  # what was accepted is durable and readable
    assert len(list(log.read())) == log.durable_seq


def test_budget_block_mode_waits_for_archiving(open_log):
    log = open_log(segment_bytes=300, max_unarchived_bytes=1200, auto_archive=True)
    cursor = log.cursor("sender")
    done = threading.Event()

    def produce() -> None:
        for i in range(60):
            log.append(b"%02d" % i * 10)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.5)  # blocked: the cursor holds every segment back
    tail = log.tail(1)
    while not done.is_set():
        batch = tail.next_batch(timeout_s=0.2)
        if batch:
            cursor.commit(batch[-1].seq)
    producer.join(5)
    assert done.is_set()
    assert log.durable_seq == 60


def test_budget_block_mode_times_out(open_log):
    log = open_log(segment_bytes=300, max_unarchived_bytes=800, full_timeout_s=0.2, auto_archive=False)
    log.cursor("stuck")
    with pytest.raises(wal.WalFullError, match="waited"):
        for i in range(100):
            log.append(b"%02d" % i * 10)


def test_insufficient_free_space_is_refused_at_open(log_dir):
    with pytest.raises(wal.InsufficientSpace, match="free"):
        wal.open(log_dir, min_free_bytes=1 << 62)


def test_fsync_failure_stops_the_log_and_reopen_recovers(open_log, log_dir):
    log = open_log()
    for i in range(10):
        log.append(b"ok%d" % i)

    def fail() -> None:
        raise OSError(5, "Input/output error")

    failpoints.arm("log.after_write", fail)
    with pytest.raises(wal.WalIOError, match="Input/output error"):
        log.append(b"lost")
    failpoints.disarm()
    with pytest.raises(wal.WalIOError):
        log.append(b"refused")  # never retried and trusted
    log.close()
    log = open_log()
    assert payloads(log)[:10] == [b"ok%d" % i for i in range(10)]


def test_all_waiters_get_the_write_error(open_log):
    log = open_log()
    errors: list[BaseException] = []
    gate = threading.Event()

    def slow_fail() -> None:
        gate.wait(2)
        raise OSError(28, "No space left on device")

    failpoints.arm("log.after_write", slow_fail)

    def worker() -> None:
        try:
            log.append(b"x")
        except wal.WalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 6
    assert all(isinstance(e, wal.DiskFullError) for e in errors)


def test_torn_tail_is_truncated_and_kept_in_quarantine(open_log, log_dir, wal_logs):
    log = open_log()
    for i in range(5):
        log.append(b"record-%d" % i)
    log.close()
    path = os.path.join(log_dir, "wal", "00000000000000000001.wal")
    size = os.path.getsize(path)
    with open(path, "ab") as handle:
        handle.write(b"\x40\x00\x00\x00partial")  # a record cut short by a crash
    log = open_log()
    assert os.path.getsize(path) == size
    assert payloads(log) == [b"record-%d" % i for i in range(5)]
    kept = os.path.join(log_dir, "quarantine", f"00000000000000000001.wal.{size}.tail")
    with open(kept, "rb") as handle:
        assert handle.read() == b"\x40\x00\x00\x00partial"
    torn = [r for r in wal_logs.records if r.msg == "wal.recover.torn_tail"]
    assert torn and torn[0].offset == size and torn[0].bytes_dropped == 11
    assert log.append(b"next") == 6


def test_damage_in_the_middle_of_the_active_segment_keeps_later_records(open_log, log_dir):
    log = open_log()
    for i in range(10):
        log.append(b"record-%d" % i)
    log.close()
    path = os.path.join(log_dir, "wal", "00000000000000000001.wal")
    record_size = RECORD_OVERHEAD + len(b"record-0")
    flip_byte(path, HEADER_SIZE + 3 * record_size + 26)  # inside record 4's payload
    log = open_log()
    assert [r.seq for r in log.read()] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    (report,) = log.damage
    assert report.path == path and report.records_skipped == 1 and "CRC" in report.reason
    assert os.path.exists(os.path.join(log_dir, "quarantine", "00000000000000000001.wal.damaged"))
    assert log.append(b"next") == 11  # appends go to a fresh segment, never after damage
    assert live_segments(log_dir)[-1] == "00000000000000000011.wal"


def test_damage_in_a_sealed_segment_is_reported_and_reading_goes_on(open_log, log_dir):
    log = open_log(segment_bytes=400, auto_archive=False)
    for i in range(30):
        log.append(b"%02d" % i * 8)
    first = os.path.join(log_dir, "wal", live_segments(log_dir)[0])
    flip_byte(first, HEADER_SIZE + 60)  # record 2
    seqs = [r.seq for r in log.read()]
    assert 2 not in seqs and seqs == [s for s in range(1, 31) if s != 2]
    (report,) = log.damage
    assert report.path == first and report.records_skipped == 1
    assert report.quarantined and os.path.exists(report.quarantined)


def test_damaged_file_never_stops_open(open_log, log_dir):
    log = open_log()
    log.append(b"a")
    log.close()
    path = os.path.join(log_dir, "wal", "00000000000000000001.wal")
    with open(path, "r+b") as handle:
        handle.write(b"GARBAGE!")  # the header itself
    log = open_log()
    assert log.append(b"b") == 2  # the old segment was moved aside, its record 1 not reused
    assert os.path.exists(os.path.join(log_dir, "quarantine", "00000000000000000001.wal.damaged"))
    assert log.damage


def test_interrupted_segment_creation_is_redone(open_log, log_dir):
    log = open_log()
    log.append(b"a")
    log.close()
    with open(os.path.join(log_dir, "wal", "00000000000000000002.wal"), "wb") as handle:
        handle.write(SEGMENT_HEADER[:5])  # a crash mid-header during rotation
    log = open_log()
    assert log.append(b"b") == 2
    assert payloads(log) == [b"a", b"b"]


def test_crash_between_archive_and_unlink_keeps_one_copy(open_log, log_dir):
    log = open_log(segment_bytes=300, auto_archive=False)
    for i in range(30):
        log.append(b"%02d" % i * 10)

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    failpoints.arm("archive.before_unlink", crash)
    with pytest.raises(Crash):
        log.archive()
    failpoints.disarm()
    log.close()
    first = live_segments(log_dir)[0]
    assert os.path.exists(os.path.join(log_dir, "archive", first + ".zst"))
    log = open_log()
    assert first not in live_segments(log_dir)
    assert [r.seq for r in log.read()] == list(range(1, 31))


def test_interval_policy_syncs_within_the_window(open_log):
    log = open_log(fsync="interval", fsync_interval_ms=20)
    seq = log.append(b"x")  # returns once written
    assert log.wait_durable(seq, timeout=2)
    assert log.stats().syncs >= 1


def test_never_policy_still_reads_back(open_log):
    log = open_log(fsync="never")
    for i in range(100):
        log.append(b"%d" % i, wait=False)
    log.wait_durable(100, timeout=5)
    assert len(payloads(log)) == 100
    assert log.stats().syncs == 0


def test_append_after_close_raises(log_dir):
    log = wal.open(log_dir, min_free_bytes=0)
    log.close()
    with pytest.raises(wal.LogClosed):
        log.append(b"x")
    log.close()  # idempotent


def test_invalid_options_are_refused(log_dir):
    with pytest.raises(ValueError, match="fsync"):
        wal.open(log_dir, fsync="sometimes")
    with pytest.raises(TypeError):
        wal.open(log_dir, segment_size=5)


def test_close_releases_an_append_blocked_on_a_full_log(log_dir):
    log = wal.open(log_dir, segment_bytes=300, max_unarchived_bytes=800, auto_archive=False, min_free_bytes=0)
    log.cursor("stuck")
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(100):
                log.append(b"%02d" % i * 10)
        except wal.WalError as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: log.last_seq >= 10)
    time.sleep(0.3)  # let the producer reach the full budget and block
    log.close()
    producer.join(5)
    assert not producer.is_alive(), "an append blocked on the budget was left hanging by close()"
    assert len(outcome) == 1 and isinstance(outcome[0], wal.LogClosed)


def test_appends_racing_close_either_land_or_raise(log_dir):
    for _round in range(20):
        log = wal.open(log_dir, min_free_bytes=0)
        accepted: list[int] = []
        refused: list[BaseException] = []

        def produce(log=log, accepted=accepted, refused=refused) -> None:
            try:
                while True:
                    accepted.append(log.append(b"x", wait=False))
            except wal.LogClosed as exc:
                refused.append(exc)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(0.005)
        log.close()
        producer.join(5)
        assert not producer.is_alive() and refused
        # Every sequence number handed out was written: none was queued after the writer stopped.
        with wal.open(log_dir, min_free_bytes=0) as reopened:
            assert set(accepted) <= {r.seq for r in reopened.read()}


def test_retention_runs_when_the_log_opens(log_dir):
    with wal.open(log_dir, segment_bytes=300, auto_archive=False, min_free_bytes=0) as log:
        for i in range(40):
            log.append(b"%02d" % i * 10)
        archived = log.archive()
    old = archived[0].archive
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with wal.open(log_dir, segment_bytes=300, auto_archive=True, retention_max_age_s=3600, min_free_bytes=0):
        wait_until(lambda: not os.path.exists(old))


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
