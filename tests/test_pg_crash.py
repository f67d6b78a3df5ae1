"""The PostgreSQL source under crashes: the agent process SIGKILLed again and again under a busy
multi-client workload, PostgreSQL itself restarted and crashed mid-stream, and the agent killed
during its initial snapshot.

Each test ends the same way: the agent catches up (the slot confirms everything PostgreSQL wrote),
and the log, replayed change by change into one dict per table, must equal the source tables
exactly; no transaction may appear twice or in part, and every transaction the workload saw
commit must be in the log. PG_CRASH_SEED picks another random sequence; CRASH_CYCLES_PG the
number of SIGKILLs. The last test is an expected failure that pins down a known bug.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import psycopg

from agent.change import Change
from agent.sources.postgres.lsn import parse_lsn
from agent.sources.postgres.source import SourceStatus
from tests.agent_harness import (
    agent_config,
    changes_of,
    execute,
    query,
    running_agent,
    source_config,
    wait_for,
)
from tests.agent_process import AgentProcess, postgres_source, wait_until_caught_up, write_config

CRASH_CYCLES = int(os.environ.get("CRASH_CYCLES_PG", "20"))
SEED = os.environ.get("PG_CRASH_SEED", "pg-crash")
KILL_AFTER_S = (0.2, 1.5)  # how long an agent runs before its SIGKILL
WORKLOAD_THREADS = 4
PAUSE_BETWEEN_TRANSACTIONS_S = 0.05  # at most; leaves the 2 cores some room for the agent

ACCOUNT_IDS = 400  # accounts are shared by every client: upserts, key changes and deletes collide
TABLE_KEYS: dict[str, tuple[str, ...]] = {"public.accounts": ("id",), "public.events": ("thread", "n")}
SCHEMA = (
    "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL,"
    " active boolean NOT NULL, visits bigint)",
    "CREATE TABLE events (thread int, n int, kind text, payload jsonb, PRIMARY KEY (thread, n))",
)
# A transaction that hits one of these rolls back and is not expected in the log.
CONFLICTS = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)
XID_MODULUS = 2**32  # txid_current() counts epochs too; pgoutput sends the 32-bit xid


# -- the workload ---------------------------------------------------------------------------------


class Workload:
    """Client threads running small random transactions until stopped, recording which committed.

    With `outages=True` a lost connection is expected (the server restarts): the client reconnects,
    and a transaction whose COMMIT was cut off is recorded as uncertain rather than committed.
    """

    def __init__(self, dsn: str, seed: str, *, outages: bool = False) -> None:
        self.dsn = dsn
        self.seed = seed
        self.outages = outages
        self.committed: dict[int, bool] = {}  # xid -> whether it changed a published row
        self.uncertain: set[int] = set()
        self.rolled_back = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(number,), name=f"workload-{number}", daemon=True)
            for number in range(WORKLOAD_THREADS)
        ]

    def start(self) -> Workload:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "a workload client did not stop"
        assert not self.failures, f"the workload failed: {self.failures}"

    def committed_count(self) -> int:
        with self._lock:
            return len(self.committed)

    def _client(self, number: int) -> None:
        rng = random.Random(f"{self.seed}-{number}")
        events_next = [1]  # this client's next events.n; a list so _statement can advance it
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(self.dsn, connect_timeout=5)
                        # synchronous_commit is off server-wide: a commit acknowledged before its
                        # WAL is written would be lost by an immediate stop.
                        conn.execute("SET synchronous_commit = on")
                        conn.execute("SET deadlock_timeout = '50ms'")
                        conn.commit()
                    self._transaction(conn, rng, number, events_next)
                except psycopg.OperationalError:
                    if not self.outages:
                        raise
                    if conn is not None:
                        conn.close()
                    conn = None
                    if self._stop.wait(0.05):  # the server is restarting: try again shortly
                        break
                self._stop.wait(rng.uniform(0, PAUSE_BETWEEN_TRANSACTIONS_S))
        except Exception as exc:
            self.failures.append(f"client {number}: {type(exc).__name__}: {exc}")
        finally:
            if conn is not None:
                conn.close()

    def _transaction(
        self, conn: psycopg.Connection, rng: random.Random, thread: int, events_next: list[int]
    ) -> None:
        row = conn.execute("SELECT txid_current() %% %s", (XID_MODULUS,)).fetchone()
        assert row is not None
        xid = int(row[0])
        touched = False
        try:
            for _ in range(rng.randint(1, 5)):
                touched |= _statement(conn, rng, thread, events_next)
        except CONFLICTS:
            conn.rollback()
            with self._lock:
                self.rolled_back += 1
            return
        try:
            conn.commit()
        except psycopg.OperationalError:
            with self._lock:
                self.uncertain.add(xid)
            raise
        with self._lock:
            self.committed[xid] = touched


def _statement(conn: psycopg.Connection, rng: random.Random, thread: int, events_next: list[int]) -> bool:
    """One random statement; True when it changed (or truncated) a published row."""
    roll = rng.random()
    account = rng.randint(1, ACCOUNT_IDS)
    if roll < 0.22:
        cursor = conn.execute(
            "INSERT INTO accounts VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, visits = accounts.visits + 1",
            (
                account,
                f"owner {thread}/{rng.randrange(1000)}",
                Decimal(rng.randrange(-(10**6), 10**6)) / 100,
                rng.random() < 0.5,
                rng.choice([None, rng.randrange(10**12)]),
            ),
        )
    elif roll < 0.32:
        cursor = conn.execute(
            "INSERT INTO accounts SELECT g, 'bulk', g * 0.25, g %% 2 = 0, NULL"
            " FROM generate_series(%s::int, %s::int) g ON CONFLICT DO NOTHING",
            (account, account + rng.randint(1, 4)),
        )
    elif roll < 0.46:
        cursor = conn.execute(
            "UPDATE accounts SET balance = balance + %s, active = NOT active WHERE id BETWEEN %s AND %s",
            (Decimal(rng.randrange(1, 10_000)) / 100, account, account + rng.randint(0, 3)),
        )
    elif roll < 0.56:  # a primary-key change
        cursor = conn.execute(
            "UPDATE accounts SET id = %s WHERE id = %s", (rng.randint(1, ACCOUNT_IDS), account)
        )
    elif roll < 0.64:
        cursor = conn.execute(
            "DELETE FROM accounts WHERE id BETWEEN %s AND %s", (account, account + rng.randint(0, 2))
        )
    elif roll < 0.78:
        first = events_next[0]
        events_next[0] += rng.randint(1, 5)
        cursor = conn.execute(
            "INSERT INTO events SELECT %s, g, %s, jsonb_build_object('g', g, 'tags', jsonb_build_array(%s, g %% 3 = 0))"
            " FROM generate_series(%s::int, %s::int) g",
            (thread, rng.choice(["click", "view", None]), rng.randrange(100), first, events_next[0] - 1),
        )
    elif roll < 0.86:  # a primary-key change: the client's oldest event moves out of the way
        cursor = conn.execute(
            "UPDATE events SET n = n + 1000000, kind = 'moved' WHERE thread = %s"
            " AND n = (SELECT min(n) FROM events WHERE thread = %s AND n < 1000000)",
            (thread, thread),
        )
    elif roll < 0.92:
        cursor = conn.execute(
            "UPDATE events SET payload = payload || jsonb_build_object('seen', %s)"
            " WHERE thread = %s AND n %% 5 = %s",
            (rng.randrange(1000), thread, rng.randrange(5)),
        )
    elif roll < 0.998:
        cursor = conn.execute(
            "DELETE FROM events WHERE thread = %s AND n < %s", (thread, events_next[0] - rng.randint(5, 30))
        )
    else:
        conn.execute("TRUNCATE events")
        return True
    return cursor.rowcount > 0


# -- checking the log against the database ---------------------------------------------------------


Rows = dict[str, dict[tuple, dict[str, Any]]]  # table -> key -> row
Keys = dict[str, tuple[str, ...]]  # table -> its primary-key columns


def replay(changes: Iterable[Change], keys: Keys, *, strict: bool) -> tuple[Rows, list[str]]:
    """Apply the changes in log order to one dict per table; also list what does not fit.

    With `strict`, an insert of a key already present reads as a double and an update or delete
    of a missing key as a gap. A resumed snapshot overlaps the stream, so it replays loosely.
    """
    tables: Rows = {table: {} for table in keys}
    misfits: list[str] = []
    for change in changes:
        rows = tables[change.table]
        if change.op == "truncate":
            rows.clear()
            continue
        where = f"{change.op} of {change.table} at {change.lsn} (xid {change.xid})"
        if change.op not in ("insert", "update", "delete", "snapshot") or change.key is None:
            misfits.append(f"unexpected {where}: {change}")
            continue
        if change.unchanged:
            misfits.append(f"{where} left {change.unchanged} unchanged")
        key = tuple(change.key[name] for name in keys[change.table])
        if change.op == "delete":
            if rows.pop(key, None) is None and strict:
                misfits.append(f"{where}: no row {key}")
            continue
        if change.op == "update":
            # The old key comes only when the update changed it (replica identity default).
            old = key if change.before is None else tuple(change.before[name] for name in keys[change.table])
            if rows.pop(old, None) is None and strict:
                misfits.append(f"{where}: no row {old}")
        elif change.op == "insert" and key in rows and strict:
            misfits.append(f"{where}: row {key} is already there")
        assert change.after is not None, change
        rows[key] = change.after
    return tables, misfits


def database_rows(dsn: str, keys: Keys) -> Rows:
    """The tables as SELECT * sees them, values as change records hold them (numeric as text)."""
    result: Rows = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, key in keys.items():
            cursor = conn.execute(f"SELECT * FROM {table}")
            names = [column.name for column in cursor.description or ()]
            rows = {}
            for values in cursor.fetchall():
                row = {n: str(v) if isinstance(v, Decimal) else v for n, v in zip(names, values, strict=True)}
                rows[tuple(row[name] for name in key)] = row
            result[table] = rows
    return result


def assert_replay_matches(changes: list[Change], dsn: str, keys: Keys, *, strict: bool = True) -> None:
    replayed, misfits = replay(changes, keys, strict=strict)
    assert not misfits, f"{len(misfits)} changes do not fit the replay: {misfits[:10]}"
    for table, rows in database_rows(dsn, keys).items():
        got = replayed[table]
        missing = sorted(set(rows) - set(got))[:10]
        extra = sorted(set(got) - set(rows))[:10]
        differ = [(k, got[k], rows[k]) for k in sorted(set(rows) & set(got)) if got[k] != rows[k]][:5]
        assert not (missing or extra or differ), (
            f"{table}: replayed log differs from the database: missing {missing}, extra {extra},"
            f" different (log, database) {differ}"
        )


def assert_each_transaction_once(changes: list[Change]) -> dict[int, str]:
    """Each transaction whole and once, in commit order; returns xid -> commit LSN."""
    streamed = [c for c in changes if c.op != "snapshot"]
    commit_lsns = [parse_lsn(c.commit_lsn or "") for c in streamed]
    backwards = [(a, b) for a, b in pairwise(commit_lsns) if b < a][:5]
    assert not backwards, f"commit LSNs go backwards in the log (a transaction written again?): {backwards}"
    transactions: dict[str, list[Change]] = defaultdict(list)
    for change in streamed:
        transactions[change.commit_lsn or ""].append(change)
    xids: dict[int, str] = {}
    for commit_lsn, txn in transactions.items():
        indexes = [c.txn_index for c in txn]
        assert indexes == list(range(len(txn))), (
            f"transaction at {commit_lsn} (xid {txn[0].xid}) has txn_index {indexes[:40]}, not 0..{len(txn) - 1}"
        )
        (xid,) = {c.xid for c in txn}
        assert xid is not None
        assert xid not in xids, f"xid {xid} is in the log under commits {xids[xid]} and {commit_lsn}"
        xids[xid] = commit_lsn
    return xids


def assert_workload_logged(workload: Workload, logged_xids: Iterable[int]) -> None:
    logged = set(logged_xids)
    missing = sorted(xid for xid, touched in workload.committed.items() if touched and xid not in logged)
    assert not missing, f"{len(missing)} committed transactions are not in the log: xids {missing[:20]}"
    known = set(workload.committed) | workload.uncertain
    strangers = sorted(logged - known)
    assert not strangers, f"the log holds transactions the workload never committed: xids {strangers[:20]}"


# -- the tests ------------------------------------------------------------------------------------


def test_agent_sigkilled_under_a_busy_workload_loses_and_doubles_nothing(pg_dsn, tmp_path):
    execute(pg_dsn, *SCHEMA)
    data_dir = tmp_path / "data"
    config = write_config(
        tmp_path / "agent.toml", data_dir, postgres_source(pg_dsn, publication_tables=list(TABLE_KEYS))
    )
    rng = random.Random(SEED)
    agent = AgentProcess(config)
    try:
        agent.wait_for_event("source.streaming")  # the slot exists: every later commit is captured
        workload = Workload(pg_dsn, SEED).start()
        streamed_cycles = 0
        try:
            for cycle in range(CRASH_CYCLES):
                assert not workload.failures, f"the workload failed: {workload.failures}"
                if cycle % 4 != 3:  # else any moment: starting, recovering the log, or streaming
                    agent.wait_for_event("source.streaming")
                time.sleep(rng.uniform(*KILL_AFTER_S))
                streamed_cycles += bool(agent.find_events("source.streaming"))
                exited = agent.kill()
                assert exited is None, (
                    f"cycle {cycle}: the agent exited ({exited}) by itself:\n{agent.output()}"
                )
                assert not any("Traceback" in line for line in agent.stderr_lines), (
                    f"cycle {cycle}:\n{agent.output()}"
                )
                agent = AgentProcess(config)
        finally:
            workload.stop()
        wait_until_caught_up(pg_dsn)
        logged = len(changes_of(data_dir))
        code, _elapsed = agent.stop()
        assert code == 0, agent.output()
        assert not agent.find_events("source.failed"), agent.output()
    finally:
        agent.kill()

    changes = changes_of(data_dir)
    assert len(changes) == logged, "the log grew after the agent had caught up"
    assert streamed_cycles >= CRASH_CYCLES // 2, f"only {streamed_cycles} of the killed agents streamed"
    assert workload.committed_count() > CRASH_CYCLES * 10, f"only {workload.committed_count()} transactions"
    assert_replay_matches(changes, pg_dsn, TABLE_KEYS)
    xids = assert_each_transaction_once(changes)
    assert_workload_logged(workload, xids)


def _wait_for_more_changes(status: SourceStatus, what: str, more: int = 100) -> None:
    written = status.changes_written
    wait_for(lambda: status.changes_written >= written + more, what=f"{more} changes {what}")


def test_postgres_restarted_and_crashed_mid_stream(pg_private_server, tmp_path):
    server = pg_private_server
    dsn = server.create_database("crash")
    execute(dsn, *SCHEMA)
    source = source_config(
        dsn, publication_tables=list(TABLE_KEYS), reconnect={"initial_delay": 0.1, "max_delay": 0.5}
    )
    config = agent_config(str(tmp_path / "data"), source)
    workload = Workload(dsn, f"{SEED}-restart", outages=True)
    with running_agent(config) as agent:
        status = agent.sources[0].status
        wait_for(lambda: status.state == "streaming", what="streaming")
        workload.start()
        try:
            for outage in ("fast", "immediate", "kill"):
                _wait_for_more_changes(status, f"before the {outage} stop")
                reconnects = status.reconnects
                if outage == "kill":
                    server.kill()  # the whole server, as a crash would
                else:
                    server.stop(outage)
                server.start()
                wait_for(lambda: status.reconnects > reconnects, what=f"a reconnect after {outage}")  # noqa: B023
                wait_for(lambda: status.state == "streaming", what=f"streaming after {outage}")
                _wait_for_more_changes(status, f"after the {outage} stop")
        finally:
            workload.stop()
        wait_until_caught_up(dsn)
        assert not agent.errors
    changes = changes_of(config.data_dir)
    assert_replay_matches(changes, dsn, TABLE_KEYS)
    xids = assert_each_transaction_once(changes)
    assert_workload_logged(workload, xids)


SNAPSHOT_ROWS = 20_000
SNAPSHOT_CHUNK_ROWS = 200


def _snapshot_progress(data_dir: Path) -> tuple[str | None, int, bool] | None:
    """(last finished chunk's key as JSON, rows, done) of public.items, read beside the agent."""
    path = data_dir / "state.db"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute(
            "SELECT last_key, rows, done FROM snapshot_progress WHERE table_name = 'public.items'"
        ).fetchone()
    except sqlite3.OperationalError:  # the agent has not created the table yet
        return None
    finally:
        db.close()
    return None if row is None else (row[0], row[1], bool(row[2]))


def test_agent_sigkilled_during_the_initial_snapshot_resumes_from_the_last_chunk(pg_dsn, tmp_path):
    execute(
        pg_dsn,
        "CREATE TABLE items (id int PRIMARY KEY, label text, price numeric(10,2), ok boolean)",
        f"INSERT INTO items SELECT g, 'item ' || g, g / 100.0, g % 3 = 0 FROM generate_series(1, {SNAPSHOT_ROWS}) g",
    )
    data_dir = tmp_path / "data"
    source = postgres_source(
        pg_dsn,
        publication_tables=["public.items"],
        snapshot="initial",
        snapshot_chunk_rows=SNAPSHOT_CHUNK_ROWS,
    )
    config = write_config(tmp_path / "agent.toml", data_dir, source)
    with AgentProcess(config) as agent:
        # A few chunks in, far from the end: the kill lands in the middle of the snapshot.
        wait_for(
            lambda: (_snapshot_progress(data_dir) or (None, 0, False))[1] >= 2 * SNAPSHOT_CHUNK_ROWS,
            timeout=60,
            what="two snapshot chunks",
        )
        assert agent.kill() is None, agent.output()
    progress = _snapshot_progress(data_dir)
    assert progress is not None and progress[0] is not None
    saved_key_json, saved_rows, done = progress
    assert not done and saved_rows < SNAPSHOT_ROWS, f"the snapshot finished before the kill: {progress}"
    (saved_key,) = orjson.loads(saved_key_json)
    saved_key = int(saved_key)
    assert saved_key == saved_rows  # ids 1..N, read in key order

    with AgentProcess(config) as agent:
        agent.wait_for_event("source.snapshot.resumed")
        agent.wait_for_event("source.streaming")
        execute(
            pg_dsn,
            "UPDATE items SET label = 'changed' WHERE id % 1000 = 0",
            "DELETE FROM items WHERE id BETWEEN 10 AND 19",
            "INSERT INTO items VALUES (30000, 'new', 1.00, true)",
            "UPDATE items SET id = 30001 WHERE id = 1",
        )
        wait_until_caught_up(pg_dsn)
        code, _elapsed = agent.stop()
        assert code == 0, agent.output()

    changes = changes_of(data_dir)
    snapshot = [c for c in changes if c.op == "snapshot"]
    first_stream = next((i for i, c in enumerate(changes) if c.op != "snapshot"), len(changes))
    assert all(c.op != "snapshot" for c in changes[first_stream:]), "a snapshot row after the stream began"
    counts = Counter(c.key["id"] for c in snapshot if c.key)
    missing = sorted(set(range(1, SNAPSHOT_ROWS + 1)) - set(counts))
    assert not missing, f"{len(missing)} rows never arrived as snapshot rows: {missing[:20]}"
    assert max(counts.values()) <= 2, f"rows read three times: {[k for k, n in counts.items() if n > 2][:20]}"
    doubled_early = sorted(k for k, n in counts.items() if n == 2 and k <= saved_key)
    assert not doubled_early, (
        f"rows of finished chunks (up to id {saved_key}) read twice: {doubled_early[:20]}"
    )
    assert [c.op for c in changes[first_stream:]] == ["update"] * 20 + ["delete"] * 10 + ["insert", "update"]
    assert_replay_matches(changes, pg_dsn, {"public.items": ("id",)}, strict=False)
    state = _snapshot_progress(data_dir)
    assert state is not None and state[1:] == (SNAPSHOT_ROWS, True)
    assert query(pg_dsn, "SELECT count(*) FROM items") == [(SNAPSHOT_ROWS - 10 + 1,)]


def test_agent_sigkilled_right_after_creating_its_slot_still_takes_the_initial_snapshot(pg_dsn, tmp_path):
    execute(
        pg_dsn, "CREATE TABLE items (id int PRIMARY KEY)", "INSERT INTO items SELECT generate_series(1, 1000)"
    )
    data_dir = tmp_path / "data"
    source = postgres_source(pg_dsn, publication_tables=["public.items"], snapshot="initial")
    config = write_config(tmp_path / "agent.toml", data_dir, source)
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.slot.created")  # logged before the snapshot starts
        assert agent.kill() is None, agent.output()
    with AgentProcess(config) as agent:
        agent.wait_for_event("source.streaming")
        wait_until_caught_up(pg_dsn)
        assert agent.stop()[0] == 0, agent.output()
    snapshot_ids = {c.key["id"] for c in changes_of(data_dir, "snapshot") if c.key}
    assert snapshot_ids == set(range(1, 1001)), f"{len(snapshot_ids)} of 1000 rows in the snapshot"
