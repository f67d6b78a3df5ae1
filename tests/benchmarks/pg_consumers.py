"""The parties to the PostgreSQL section of `make bench`: the private server with its benchmark
table and publication, and the two consumers of a slot, `pg_recvlogical` (RecvLogical) and the
agent in this process (RunningAgent), with the clocks that note when each captured a change.

One PostgreSQL 15 (tests.pg.PostgresServer: fsync=off as in the test suite, but synchronous_commit
on, see SERVER_SETTINGS) serves every run; before each run the table is emptied and the run's own
slot made (BenchDatabase.fresh_slot).
"""

from __future__ import annotations

import bisect
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from unittest import mock

import psycopg

import wal
from agent.config import AgentConfig, PostgresSourceConfig
from agent.runtime import build_agent
from agent.sources.postgres.replication import DEFAULT_SESSION_OPTIONS
from tests.benchmarks import pg_writer
from tests.pg import PostgresServer

DATABASE = "bench"
TABLE = pg_writer.TABLE
PUBLICATION = "bench_pub"
TABLE_DDL = (
    f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text, amount numeric(12,2),"
    " created_at timestamptz, active bool, attributes jsonb)"
)
BULK_INSERT = (
    f"INSERT INTO {TABLE} SELECT g, 'customer ' || g, g * 1.25, now(), g %% 2 = 0,"
    " jsonb_build_object('id', g, 'tags', jsonb_build_array('a', 'b'))"
    " FROM generate_series(1, %s) g"
)
# The same options the agent's source asks for (replication.ReplicationConnection.start).
PGOUTPUT_OPTIONS = ("proto_version=1", f"publication_names={PUBLICATION}", "messages=true")

# synchronous_commit=on: with it off, a commit reaches the walsender only when the WAL writer next
# flushes (wal_writer_delay, 200 ms), which would hide any capture lag under PostgreSQL's own.
# fsync stays off, so a commit costs a write to the page cache, not a disk flush.
SERVER_SETTINGS = {"synchronous_commit": "on"}

POLL_S = 0.001  # how often a file's growth is sampled
AGENT_POLL_S = 0.005  # how often the agent's last_seq is looked at (the GIL is shared with it)
CAPTURE_TIMEOUT_S = 120.0
STREAMING_TIMEOUT_S = 30.0


class BenchDatabase:
    """The private server, its benchmark database, the table and the publication."""

    def __init__(self) -> None:
        self.server = PostgresServer(SERVER_SETTINGS)
        self.server.start()
        try:
            self.dsn = self.server.create_database(DATABASE)
            self.execute(TABLE_DDL)
            self.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")
            self.table_oid = int(self.query(f"SELECT '{TABLE}'::regclass::oid")[0][0])
        except BaseException:
            self.server.cleanup()
            raise

    def close(self) -> None:
        self.server.cleanup()

    def execute(self, statement: str, params: tuple | None = None) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement, params)

    def query(self, statement: str, params: tuple | None = None) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()

    def fresh_slot(self, slot: str) -> None:
        """An empty table and only this slot, made after the table was emptied."""
        self.server.drop_slots(DATABASE)
        self.execute(f"TRUNCATE {TABLE}")
        self.execute("CHECKPOINT")
        self.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    def wait_streaming(self, slot: str, is_failed: Callable[[], str | None] = lambda: None) -> None:
        """Block until a walsender holds the slot."""
        deadline = time.monotonic() + STREAMING_TIMEOUT_S
        while not self.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)):
            failure = is_failed()
            if failure is not None:
                raise RuntimeError(f"the consumer of slot {slot} failed to start: {failure}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nobody streams slot {slot} after {STREAMING_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def bulk_insert(self, rows: int) -> float:
        """Insert `rows` rows in one transaction; return the monotonic time its COMMIT returned."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute(BULK_INSERT, (rows,))
            conn.commit()
            return time.monotonic()


class RecvLogical:
    """`pg_recvlogical --start` streaming a slot into a file, in a process of its own."""

    def __init__(self, dsn: str, slot: str, path: str) -> None:
        command = ["pg_recvlogical", "--dbname", dsn, "--slot", slot, "--start", "--no-loop", "--file", path]
        command += [arg for option in PGOUTPUT_OPTIONS for arg in ("-o", option)]
        # The session settings the agent's replication connection uses, so the walsender formats
        # values alike; and a session of its own, like the writers' (see pg_writer).
        settings = " ".join(f"-c {name}={value}" for name, value in DEFAULT_SESSION_OPTIONS.items())
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PGOPTIONS": settings},
            start_new_session=True,
        )

    def failure(self) -> str | None:
        """pg_recvlogical's complaint if it has exited, else None."""
        if self.process.poll() is None:
            return None
        assert self.process.stderr is not None
        return (
            self.process.stderr.read().decode(errors="replace").strip() or f"exit {self.process.returncode}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


class FileGrowth:
    """A thread noting (monotonic time, size) each time a file has grown, every POLL_S."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.times: list[float] = []
        self.sizes: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-file-growth", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(POLL_S):
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                continue
            if size != last:
                self.times.append(time.monotonic())
                self.sizes.append(size)
                last = size

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def time_when(self, size: int) -> float:
        """When the file first held at least `size` bytes, as far as sampling can tell."""
        return self.times[bisect.bisect_left(self.sizes, size)]


class DurableTimes:
    """The log's `on_durable` hook: (monotonic time, durable_seq) after each fsync, noted by the
    log's writer thread itself as it publishes, so no other thread or poll comes in between."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.seqs: list[int] = []

    def __call__(self, durable_seq: int) -> None:
        self.times.append(time.monotonic())
        self.seqs.append(durable_seq)

    def time_of(self, seq: int) -> float:
        """When record `seq` became durable."""
        return self.times[bisect.bisect_left(self.seqs, seq)]


class RunningAgent:
    """The agent in this process (as tests/agent_harness runs it), streaming `slot` into a fresh log
    with fsync="always"; ready once its walsender holds the slot. `on_durable` is passed to the log."""

    def __init__(
        self, db: BenchDatabase, data_dir: str, slot: str, on_durable: Callable[[int], None] | None = None
    ) -> None:
        shutil.rmtree(data_dir, ignore_errors=True)
        source = PostgresSourceConfig(
            name="bench",
            type="postgres",
            dsn=db.dsn,
            slot=slot,
            publication=PUBLICATION,
            create_slot=False,
            ensure_publication=False,
        )
        config = AgentConfig(
            data_dir=data_dir, wal={"fsync": "always", "min_free_bytes": 0}, sources=[source]
        )
        if on_durable is None:
            self.agent = build_agent(config)
        else:
            # build_agent opens the log with wal.open: hand it wal.open's own hook.
            open_log = wal.open
            with mock.patch.object(
                wal, "open", lambda path, **options: open_log(path, on_durable=on_durable, **options)
            ):
                self.agent = build_agent(config)
        self._db, self._slot = db, slot

    def __enter__(self) -> RunningAgent:
        agent = self.agent
        agent.start()
        try:
            self._db.wait_streaming(self._slot, self._failure)
            while agent.sources[0].status.state != "streaming":
                time.sleep(0.01)
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_durable(self, records: int) -> None:
        """Block until the log holds `records` records durably; polls only until they are appended."""
        log = self.agent.log
        deadline = time.monotonic() + CAPTURE_TIMEOUT_S
        while log.last_seq < records:
            failure = self._failure()
            if failure is not None:
                raise RuntimeError(f"the agent failed: {failure}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not append {records} changes in {CAPTURE_TIMEOUT_S:.0f} s")
            time.sleep(AGENT_POLL_S)
        if not log.wait_durable(records, CAPTURE_TIMEOUT_S):
            raise RuntimeError(f"the agent's log did not make {records} records durable")

    def _failure(self) -> str | None:
        errors = self.agent.errors
        return "; ".join(f"{name}: {error}" for name, error in errors.items()) or None

    def __exit__(self, *_exc: object) -> None:
        agent = self.agent
        agent.stop()
        agent.wait()
        agent.close()
        failure = self._failure()
        if failure is not None:
            raise RuntimeError(f"the agent failed: {failure}")
