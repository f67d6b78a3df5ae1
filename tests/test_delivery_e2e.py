"""The whole path with real parts: PostgreSQL -> `wallaby-agent run` -> HTTP, PostgreSQL and DuckDB.

A workload of inserts, updates, key changes and deletes runs while the agent is SIGKILLed again
and again and the HTTP receiver fails and goes away. Afterwards the receiver holds every change
in the log exactly once by idempotency key, in per-key order, and the PostgreSQL and DuckDB
copies equal the source table (checked with certify).
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import psycopg

from agent.certify import certify_table
from agent.delivery import idempotency_key
from agent.sender import cursor_name
from tests.agent_harness import execute, logged_changes, wait_for
from tests.agent_process import AgentProcess, postgres_source, wait_until_caught_up, write_config
from tests.fault_receiver import FaultReceiver
from wal.cursor import read_cursor_file
from wal.fs import OS_FS

KILL_CYCLES = 6
SEED = 5
SCHEMA = (
    "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2),"
    " tags text[], seen timestamptz)",
)


def cursor_position(data_dir, destination: str) -> int:
    path = data_dir / "cursors" / f"{cursor_name(destination)}.cursor"
    return read_cursor_file(OS_FS, str(path)) if path.exists() else 0


class ItemWorkload:
    """One thread: inserts, updates, key changes and deletes on public.items."""

    def __init__(self, dsn: str, seed: int, start_id: int = 1) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.paused = threading.Event()  # pause(): the loop idles (a server restart is coming)
        self.idle = threading.Event()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.next_id = start_id
        self.live: list[int] = []

    def start(self) -> ItemWorkload:
        self.thread.start()
        return self

    def pause(self) -> None:
        """Stop between statements (none in flight) until resume()."""
        self.idle.clear()
        self.paused.set()
        self.idle.wait(10)

    def resume(self) -> None:
        self.paused.clear()

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                # A fresh connection after each pause: the server may have restarted meanwhile.
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    while not self.stop_event.is_set() and not self.paused.is_set():
                        self._one(conn)
                        time.sleep(0.002)
                while self.paused.is_set() and not self.stop_event.is_set():
                    self.idle.set()
                    time.sleep(0.02)
        except Exception as exc:  # reported by the test
            self.failures.append(repr(exc))

    def _one(self, conn: psycopg.Connection) -> None:
        roll = self.rng.random()
        if roll < 0.5 or len(self.live) < 5:
            item = self.next_id
            self.next_id += 1
            conn.execute(
                "INSERT INTO items VALUES (%s, %s, %s, %s, %s, now())",
                (
                    item,
                    f"item {item} ü",
                    self.rng.randint(0, 100),
                    f"{self.rng.randint(0, 99999) / 100:.2f}",
                    ["a", "b"],
                ),
            )
            self.live.append(item)
        elif roll < 0.8:
            item = self.rng.choice(self.live)
            conn.execute("UPDATE items SET qty = qty + 1, name = name || '+' WHERE id = %s", (item,))
        elif roll < 0.9:
            item = self.live.pop(self.rng.randrange(len(self.live)))
            new = self.next_id
            self.next_id += 1
            conn.execute("UPDATE items SET id = %s WHERE id = %s", (new, item))  # a key change
            self.live.append(new)
        else:
            item = self.live.pop(self.rng.randrange(len(self.live)))
            conn.execute("DELETE FROM items WHERE id = %s", (item,))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


def test_sigkills_and_receiver_faults_lose_and_double_nothing(pg_server, pg_dsn, tmp_path):
    execute(pg_dsn, *SCHEMA)
    target_dsn = pg_server.create_database(f"target_{int(time.time() * 1000) % 10**9}")
    duck_path = tmp_path / "copy.duckdb"
    data_dir = tmp_path / "data"
    rng = random.Random(SEED)
    with FaultReceiver() as receiver:
        retry = {"initial_delay": 0.05, "max_delay": 0.5}
        batch = {"max_records": 50, "linger": 0.01}
        config = write_config(
            tmp_path / "agent.toml",
            data_dir,
            postgres_source(pg_dsn, publication_tables=["public.items"]),
            destinations=[
                {
                    "name": "hook",
                    "type": "http",
                    "url": receiver.url,
                    "timeout": 1.0,
                    "retry": retry,
                    "batch": batch,
                },
                {"name": "pg", "type": "postgres", "dsn": target_dsn, "retry": retry, "batch": batch},
                {"name": "duck", "type": "duckdb", "path": str(duck_path), "retry": retry, "batch": batch},
            ],
        )
        agent = AgentProcess(config)
        workload = ItemWorkload(pg_dsn, SEED)
        try:
            agent.wait_for_event("source.streaming")
            workload.start()
            for cycle in range(KILL_CYCLES):
                assert not workload.failures, workload.failures
                if cycle % 2 == 0:
                    receiver.fail(rng.randint(1, 5), status=rng.choice([500, 503, 429]), retry_after=0.1)
                    receiver.drop(rng.randint(0, 2))
                if cycle == KILL_CYCLES // 2:
                    receiver.outage(3.0)
                time.sleep(rng.uniform(0.5, 1.5))
                exited = agent.kill()
                assert exited is None, f"cycle {cycle}: the agent exited ({exited}):\n{agent.output()}"
                assert not any("Traceback" in line for line in agent.stderr_lines), agent.output()
                agent = AgentProcess(config)
            workload.stop()
            assert not workload.failures, workload.failures
            wait_until_caught_up(pg_dsn)
            changes = [(seq, c) for seq, c in logged_changes(str(data_dir)) if c.table == "public.items"]
            keys = {idempotency_key(c, seq) for seq, c in changes}
            wait_for(lambda: {r["idempotency_key"] for r in receiver.records} >= keys, 120, "the receiver")
            wait_for(
                lambda: certify_table(pg_dsn, target_dsn, "public.items").equal, 120, "the postgres copy"
            )
            last = max(seq for seq, _ in logged_changes(str(data_dir)))
            # DuckDB admits one process at a time: wait for its sender's cursor, check after the stop.
            wait_for(lambda: cursor_position(data_dir, "duck") >= last, 120, "the duckdb sender")
            code, _ = agent.stop()
            assert code == 0, agent.output()
        finally:
            workload.stop()
            agent.kill()
        duck = certify_table(pg_dsn, str(duck_path), "public.items", dest_kind="duckdb")
        assert duck.equal, duck.to_dict()

        unique = receiver.unique()
        assert len(unique) == len(changes) == len(keys), "every change exactly once by idempotency key"
        assert {r["idempotency_key"] for r in unique} == keys
        order: dict[str, list[int]] = defaultdict(list)
        for record in unique:
            order[str(record["key"])].append(record["seq"])
        assert all(seqs == sorted(seqs) for seqs in order.values()), "per-key order"
        assert len(changes) > 200, f"only {len(changes)} changes captured"
    with psycopg.connect(target_dsn) as conn:
        position = conn.execute("SELECT max(seq) FROM wallaby_positions").fetchone()
    assert position is not None
