"""The measurements behind the PostgreSQL section of `make bench`: capture into the agent's log
against `pg_recvlogical` streaming the same kind of slot and publication into a file, for (a) one
large transaction and (b) many single-row transactions from several writers.

Each function measures one thing and returns plain numbers; pg_section puts them side by side.
Clocks: one process times the large transaction (time.monotonic), and the many-writers workload
compares times taken in the writer processes with times taken here, so both use CLOCK_MONOTONIC,
which every process on the machine shares.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import wal
from agent.change import decode_change
from tests.benchmarks import pg_writer
from tests.benchmarks.pg_consumers import (
    CAPTURE_TIMEOUT_S,
    POLL_S,
    BenchDatabase,
    DurableTimes,
    FileGrowth,
    RecvLogical,
    RunningAgent,
)

# pg_recvlogical writes each message followed by "\n"; a Commit is 'C', flags, three 8-byte fields.
_COMMIT_BYTES = 26
_COMMIT_TAIL = re.compile(rb"\nC\x00[\s\S]{24}\n\Z")
# The name of the last row of the many-writers workload, which tells pg_recvlogical's file is complete.
_END_MARKER = "end of the benchmark"


@dataclass(frozen=True)
class Bulk:
    """Changes of one large transaction, and the time from its commit to the last one captured."""

    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


@dataclass(frozen=True)
class Trickle:
    """Many small transactions: how fast the writers went, and how late each change was captured."""

    transactions: int
    writer_seconds: float  # the first writer's start to the last commit
    lags_s: list[float]  # per transaction: captured minus committed
    drain_s: float  # the last commit to the last change captured

    @property
    def writer_rate(self) -> float:
        return self.transactions / self.writer_seconds

    def lag_ms(self, quantile: float) -> float:
        ordered = sorted(self.lags_s)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    @property
    def max_lag_ms(self) -> float:
        return 1000 * max(self.lags_s)


# -- (a) one large transaction ---------------------------------------------------------------------


def bulk_recvlogical(db: BenchDatabase, workdir: str, rows: int) -> Bulk:
    """From the commit of `rows` inserts to pg_recvlogical's file ending with that commit."""
    slot = "bench_recvlogical"
    path = os.path.join(workdir, "recvlogical-bulk.bin")
    _remove(path)  # pg_recvlogical appends to an existing file
    db.fresh_slot(slot)
    consumer = RecvLogical(db.dsn, slot, path)
    try:
        db.wait_streaming(slot, consumer.failure)
        committed = db.bulk_insert(rows)
        done = _wait_for_commit_at_end(path, consumer)
    finally:
        consumer.stop()
    with open(path, "rb") as handle:
        captured = handle.read().count(_insert_prefix(db.table_oid))
    if captured != rows:
        raise RuntimeError(f"pg_recvlogical wrote {captured} inserts, not {rows}")
    return Bulk(rows, done - committed)


def bulk_agent(db: BenchDatabase, workdir: str, rows: int) -> Bulk:
    """From the commit of `rows` inserts to the agent's log holding all of them durably."""
    slot = "bench_agent"
    db.fresh_slot(slot)
    with RunningAgent(db, os.path.join(workdir, "agent-bulk"), slot) as running:
        committed = db.bulk_insert(rows)
        running.wait_durable(rows)
        done = time.monotonic()
        captured = running.agent.sources[0].status.changes_written
    if captured != rows:
        raise RuntimeError(f"the agent wrote {captured} changes, not {rows}")
    return Bulk(rows, done - committed)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _insert_prefix(table_oid: int) -> bytes:
    """How every Insert of the benchmark table starts in pg_recvlogical's file."""
    return b"\nI" + struct.pack(">I", table_oid) + b"N"


def _wait_for_commit_at_end(path: str, consumer: RecvLogical) -> float:
    """The moment the file ends with a Commit message (the transaction's last), found by polling."""
    deadline = time.monotonic() + CAPTURE_TIMEOUT_S
    last = -1
    while True:
        now = time.monotonic()
        size = os.stat(path).st_size if os.path.exists(path) else 0
        if size != last and size >= _COMMIT_BYTES + 2:
            last = size
            with open(path, "rb") as handle:
                handle.seek(size - _COMMIT_BYTES - 2)
                if _COMMIT_TAIL.search(handle.read(_COMMIT_BYTES + 2)):
                    return now
        failure = consumer.failure()
        if failure is not None:
            raise RuntimeError(f"pg_recvlogical stopped: {failure}")
        if now > deadline:
            raise RuntimeError(f"pg_recvlogical did not finish within {CAPTURE_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


# -- (b) many single-row transactions --------------------------------------------------------------


class Writers:
    """`clients` writer processes (pg_writer), in a session of their own, connected before they go."""

    def __init__(self, dsn: str, workdir: str, clients: int, per_client: int) -> None:
        self.clients, self.per_client, self.workdir = clients, per_client, workdir
        arguments = [dsn, str(clients), str(per_client), workdir]
        command = [sys.executable, "-m", "tests.benchmarks.pg_writer", *arguments]
        self.launcher = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.launcher.stdout is not None
        if self.launcher.stdout.readline().strip() != "ready":
            self.kill()
            raise RuntimeError("the writer processes failed to connect")

    @property
    def total(self) -> int:
        return self.clients * self.per_client

    def run(self) -> tuple[float, dict[int, float]]:
        """Let them go and wait for them; return the first start and each row id's commit time."""
        assert self.launcher.stdin is not None
        self.launcher.stdin.write("go\n")
        self.launcher.stdin.flush()
        if self.launcher.wait() != 0:
            raise RuntimeError(f"the writer processes failed with exit code {self.launcher.returncode}")
        started = float("inf")
        commits: dict[int, float] = {}
        for client in range(self.clients):
            with open(pg_writer.result_path(self.workdir, client)) as handle:
                result = json.load(handle)
            started = min(started, result["started"])
            first_id = 1 + client * self.per_client
            commits.update(zip(range(first_id, first_id + self.per_client), result["commits"], strict=True))
        return started, commits

    def kill(self) -> None:
        """Stop the launcher and its clients (they share its process group), if still running."""
        if self.launcher.poll() is None:
            os.killpg(self.launcher.pid, signal.SIGKILL)
            self.launcher.wait()


def trickle_recvlogical(db: BenchDatabase, workdir: str, clients: int, per_client: int) -> Trickle:
    """pg_recvlogical's file under `clients` writers of single-row transactions."""
    slot = "bench_recvlogical"
    path = os.path.join(workdir, "recvlogical-trickle.bin")
    _remove(path)
    db.fresh_slot(slot)
    writers = Writers(db.dsn, workdir, clients, per_client)
    consumer = RecvLogical(db.dsn, slot, path)
    growth = None
    try:
        db.wait_streaming(slot, consumer.failure)
        growth = FileGrowth(path)
        started, commits = writers.run()
        # One more row after all the others: once its commit is in the file, every earlier one is.
        db.execute(pg_writer.INSERT_ROW, (writers.total + 1, _END_MARKER, "0", False, "{}"))
        _wait_for_marker(path, consumer)
    finally:
        writers.kill()
        if growth is not None:
            growth.stop()
        consumer.stop()
    with open(path, "rb") as handle:
        data = handle.read()
    captured = _commit_ends(data, db.table_oid)
    del captured[writers.total + 1]
    if sorted(captured) != sorted(commits):
        raise RuntimeError(f"pg_recvlogical wrote {len(captured)} of the {len(commits)} transactions")
    seen = {row_id: growth.time_when(end) for row_id, end in captured.items()}
    return _trickle(started, commits, seen)


def trickle_agent(db: BenchDatabase, workdir: str, clients: int, per_client: int) -> Trickle:
    """The agent's log under `clients` writers; a change counts once it is durable."""
    slot = "bench_agent"
    data_dir = os.path.join(workdir, "agent-trickle")
    db.fresh_slot(slot)
    durable = DurableTimes()
    writers = Writers(db.dsn, workdir, clients, per_client)
    try:
        with RunningAgent(db, data_dir, slot, on_durable=durable) as running:
            started, commits = writers.run()
            running.wait_durable(writers.total)
    finally:
        writers.kill()
    seen = {}
    for record in wal.read_log(data_dir):
        after = decode_change(record.payload).after
        assert after is not None
        seen[after["id"]] = durable.time_of(record.seq)
    if sorted(seen) != sorted(commits):
        raise RuntimeError(f"the agent's log holds {len(seen)} of the {len(commits)} transactions")
    return _trickle(started, commits, seen)


def _trickle(started: float, commits: dict[int, float], seen: dict[int, float]) -> Trickle:
    last_commit = max(commits.values())
    return Trickle(
        transactions=len(commits),
        writer_seconds=last_commit - started,
        lags_s=[seen[row_id] - committed for row_id, committed in commits.items()],
        drain_s=max(seen.values()) - last_commit,
    )


def _commit_ends(data: bytes, table_oid: int) -> dict[int, int]:
    """For each single-row transaction in pg_recvlogical's file: row id -> offset after its Commit."""
    insert = re.compile(re.escape(_insert_prefix(table_oid)) + rb"\x00\x06t\x00\x00\x00[\x01-\x09]([0-9]+)")
    ends = {}
    for match in insert.finditer(data):
        commit = data.index(b"\nC\x00", match.end())
        ends[int(match[1])] = commit + 1 + _COMMIT_BYTES + 1
    return ends


def _wait_for_marker(path: str, consumer: RecvLogical) -> None:
    marker = _END_MARKER.encode()
    deadline = time.monotonic() + CAPTURE_TIMEOUT_S
    while True:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            tail = handle.read()
        if marker in tail and _COMMIT_TAIL.search(tail):
            return
        failure = consumer.failure()
        if failure is not None:
            raise RuntimeError(f"pg_recvlogical stopped: {failure}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"pg_recvlogical did not finish within {CAPTURE_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
