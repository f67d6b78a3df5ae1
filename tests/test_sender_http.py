"""The sender against a real HTTP receiver on loopback that fails on a schedule."""

from __future__ import annotations

import gzip
import threading
import time
from collections import defaultdict

import pytest

import wal
from agent.change import Change, encode_change
from agent.config_destinations import BatchConfig, HttpDestinationConfig, RetryConfig
from agent.delivery import idempotency_key
from agent.destinations.http import HttpDestination
from agent.dlq import DeadLetters
from agent.sender import Sender, cursor_name
from tests.fault_receiver import FaultReceiver

FAST_RETRY = RetryConfig(initial_delay=0.05, multiplier=2.0, max_delay=0.5, jitter=0.5)
WAIT_S = 60.0


def change(i: int, key: int | None = None) -> Change:
    k = i if key is None else key
    return Change(
        table="public.orders",
        op="update" if key is not None else "insert",
        source="app",
        key={"id": k},
        after={"id": k, "n": i, "note": f"row {i} é"},
        lsn=f"0/{0x1000 + i:X}",
        commit_lsn=f"0/{0x1000 + i:X}",
        xid=700 + i,
        commit_ts="2026-11-23T10:00:00.000000Z",
    )


def wait_until(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Running:
    """A sender in a thread, stopped and joined on exit."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.sender.run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def __enter__(self) -> Sender:
        self.thread.start()
        return self.sender

    def __exit__(self, *_exc: object) -> None:
        self.sender.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the sender did not stop"
        assert self.error is None, f"the sender failed: {self.error!r}"


def make_sender(log: wal.Log, tmp_path, receiver: FaultReceiver, **overrides) -> Sender:
    options = {"name": "hook", "type": "http", "url": receiver.url, "timeout": 0.5, "retry": FAST_RETRY}
    options.update(overrides)
    config = HttpDestinationConfig(**options)
    return Sender(
        log,
        HttpDestination(config),
        DeadLetters(tmp_path / "data"),
        batch=config.batch,
        retry=config.retry,
        tables=config.tables,
    )


@pytest.fixture
def log(tmp_path):
    with wal.open(str(tmp_path / "log"), segment_bytes=64 * 1024) as log:
        yield log


def test_delivers_every_record_once_in_order_and_commits_the_cursor(log, tmp_path):
    seqs = log.append_batch([encode_change(change(i)) for i in range(1000)])
    with FaultReceiver() as receiver, Running(make_sender(log, tmp_path, receiver)) as sender:
        wait_until(lambda: len(receiver.records) >= 1000, "1000 records")
        wait_until(lambda: log.cursor(cursor_name("hook")).position == seqs[-1], "the cursor")
        assert [r["seq"] for r in receiver.records] == seqs
        first = receiver.records[0]
        assert first["after"] == {"id": 0, "n": 0, "note": "row 0 é"}
        assert first["idempotency_key"] == idempotency_key(change(0), seqs[0])
        assert set(first) >= {"table", "op", "source", "key", "before", "after", "lsn", "commit_ts", "seq"}
        assert all(h.get("Idempotency-Key") for h in receiver.headers)
        assert sender.stats.delivered == 1000


def test_faults_on_a_schedule_lose_nothing_and_dead_letter_only_the_poison(log, tmp_path):
    # 200 changes over 20 keys, so per-key order can be checked; two poison records.
    changes = [change(i, key=i % 20) for i in range(200)]
    seqs = log.append_batch([encode_change(c) for c in changes])
    poison = {idempotency_key(changes[57], seqs[57]), idempotency_key(changes[143], seqs[143])}
    with FaultReceiver() as receiver:
        receiver.poison_keys = poison
        receiver.fail(3, status=500)
        receiver.fail(1, status=429, retry_after=0.3)
        receiver.slow(2, seconds=1.0)  # beyond the 0.5 s client timeout
        receiver.drop(2)
        receiver.fail(2, status=503, retry_after=0.2)
        sender = make_sender(log, tmp_path, receiver, batch=BatchConfig(max_records=16, linger=0.01))
        with Running(sender):
            wait_until(
                lambda: log.cursor(cursor_name("hook")).position == seqs[-1], "the cursor to pass everything"
            )
        assert receiver.faults_left == 0
        unique = receiver.unique()
        got = [r["seq"] for r in unique]
        expected = [s for s, c in zip(seqs, changes, strict=True) if idempotency_key(c, s) not in poison]
        assert sorted(got) == expected, "every record but the poison exactly once"
        by_key = defaultdict(list)
        for record in unique:
            by_key[record["key"]["id"]].append(record["seq"])
        assert all(seq_list == sorted(seq_list) for seq_list in by_key.values()), "per-key order"
        letters = DeadLetters(tmp_path / "data").list()
        assert sorted(letter.idempotency_key for letter in letters) == sorted(poison)
        assert all("HTTP 400" in letter.error for letter in letters)
        assert not any(r["idempotency_key"] in poison for r in receiver.records)
        assert sender.stats.retries >= 8


def test_a_thirty_second_outage_then_everything_drains(log, tmp_path):
    with FaultReceiver() as receiver:
        sender = make_sender(log, tmp_path, receiver, retry=RetryConfig(initial_delay=0.2, max_delay=2.0))
        with Running(sender):
            first = log.append_batch([encode_change(change(i)) for i in range(100)])
            wait_until(lambda: len(receiver.unique()) == 100, "the first 100")
            comeback = receiver.outage(30)
            # The agent keeps capturing while the destination is gone.
            during = log.append_batch([encode_change(change(i)) for i in range(100, 600)])
            time.sleep(1.0)
            assert len(receiver.unique()) == 100
            assert log.cursor(cursor_name("hook")).position == first[-1]
            comeback.join(40)
            wait_until(lambda: len(receiver.unique()) == 600, "the backlog to drain", timeout=40)
        assert [r["seq"] for r in receiver.unique()] == first + during
        assert sender.stats.retries >= 3


def test_a_batch_takes_records_while_their_payload_bytes_are_below_max_bytes(log, tmp_path):
    payloads = [encode_change(change(i)) for i in range(100, 220)]
    size = len(payloads[0])
    assert {len(p) for p in payloads} == {size}
    log.append_batch(payloads)
    # Six payloads reach 5 * size + 1; five whole records (32 bytes of framing each) already would.
    batch = BatchConfig(max_records=1000, max_bytes=5 * size + 1, linger=5)
    with FaultReceiver() as receiver, Running(make_sender(log, tmp_path, receiver, batch=batch)):
        wait_until(lambda: len(receiver.records) == 120, "120 records")
    assert receiver.requests == 20


def test_restart_resumes_from_the_cursor_without_losing_records(log, tmp_path):
    seqs = log.append_batch([encode_change(change(i)) for i in range(300)])
    with FaultReceiver() as receiver:
        with Running(make_sender(log, tmp_path, receiver, batch=BatchConfig(max_records=50, linger=0))):
            wait_until(lambda: len(receiver.records) >= 100, "some records")
        stopped_at = log.cursor(cursor_name("hook")).position
        assert 0 < stopped_at <= seqs[-1]
        more = log.append_batch([encode_change(change(i)) for i in range(300, 400)])
        with Running(make_sender(log, tmp_path, receiver)):
            wait_until(lambda: log.cursor(cursor_name("hook")).position == more[-1], "the cursor")
        assert [r["seq"] for r in receiver.unique()] == seqs + more
        # Nothing after the committed cursor was skipped, nothing before it sent again.
        assert len(receiver.records) == len(receiver.unique())


def test_gzip_bearer_token_and_record_json(log, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    seqs = log.append_batch([encode_change(change(i)) for i in range(5)])
    with FaultReceiver() as receiver:
        sender = make_sender(
            log,
            tmp_path,
            receiver,
            compression="gzip",
            bearer_token_env="HOOK_TOKEN",
            payload_mode="record_json",
        )
        with Running(sender):
            wait_until(lambda: len(receiver.records) == 5, "5 requests")
        assert [r["seq"] for r in receiver.records] == seqs
        assert receiver.requests == 5  # one record per request
        assert all(h["Authorization"] == "Bearer s3cret" for h in receiver.headers)
        assert all(h["Content-Encoding"] == "gzip" for h in receiver.headers)
        keys = [h["Idempotency-Key"] for h in receiver.headers]
        assert keys == [r["idempotency_key"] for r in receiver.records]
    assert gzip.decompress(gzip.compress(b"x")) == b"x"


def test_give_up_after_max_retries_dead_letters_the_batch(log, tmp_path):
    seqs = log.append_batch([encode_change(change(i)) for i in range(3)])
    with FaultReceiver() as receiver:
        receiver.fail(100, status=500)
        retry = RetryConfig(
            initial_delay=0.01, max_delay=0.02, give_up_policy="on_retry_exhaustion", max_retries=2
        )
        with Running(make_sender(log, tmp_path, receiver, retry=retry)):
            wait_until(lambda: log.cursor(cursor_name("hook")).position == seqs[-1], "the cursor")
        letters = DeadLetters(tmp_path / "data").list()
        assert [letter.seq for letter in letters] == seqs
        assert all(letter.attempts == 3 and "HTTP 500" in letter.error for letter in letters)
        assert receiver.requests == 3


def test_a_payload_that_is_not_a_change_is_dead_lettered(log, tmp_path):
    seqs = log.append_batch([b'{"raw": true}', encode_change(change(1))])
    with FaultReceiver() as receiver, Running(make_sender(log, tmp_path, receiver)):
        wait_until(lambda: len(receiver.records) == 1, "the good record")
    letters = DeadLetters(tmp_path / "data").list()
    assert [(letter.seq, letter.payload) for letter in letters] == [(seqs[0], b'{"raw": true}')]
    assert "not a change record" in letters[0].error


def test_a_change_shaped_payload_that_does_not_decode_is_dead_lettered_alone(log, tmp_path):
    """A payload with a version 2 record's ends is taken unparsed; the receiver refuses the body it
    spoils, and splitting narrows the refusal down to it."""
    broken = b'\xc1\x02{"table":"public.orders","op":"insert" oops "idempotency_key":null}'
    seqs = log.append_batch([encode_change(change(1)), broken, encode_change(change(2))])
    with FaultReceiver() as receiver, Running(make_sender(log, tmp_path, receiver)):
        wait_until(lambda: len(receiver.records) == 2, "the two good records")
    assert [r["seq"] for r in receiver.records] == [seqs[0], seqs[2]]
    letters = DeadLetters(tmp_path / "data").list()
    assert [(letter.seq, letter.payload, letter.idempotency_key) for letter in letters] == [
        (seqs[1], broken, f"seq-{seqs[1]}")
    ]


def test_table_filters_read_the_table_without_decoding_and_still_decode_escaped_names(log, tmp_path):
    odd = Change(
        table='public."we\\"ird"', op="insert", source="app", key={"id": 1}, after={"id": 1}, lsn="0/1"
    )
    log.append_batch([encode_change(change(1)), encode_change(odd), encode_change(change(2))])
    with FaultReceiver() as receiver:
        sender = make_sender(log, tmp_path, receiver, tables=[odd.table])
        with Running(sender):
            wait_until(lambda: len(receiver.records) == 1, "the record of the chosen table")
            wait_until(lambda: sender.stats.skipped == 2, "the others skipped")
    assert receiver.records[0]["table"] == odd.table
