"""Helpers for tests that run the agent in-process against the test PostgreSQL server."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

import wal
from agent.change import Change, decode_change, is_change_payload
from agent.config import AgentConfig, PostgresSourceConfig
from agent.runtime import Agent, build_agent

WAIT_S = 30.0


def source_config(dsn: str, **overrides: Any) -> PostgresSourceConfig:
    """A postgres source on `dsn` with quick status and heartbeat intervals."""
    values: dict[str, Any] = {
        "name": "app",
        "type": "postgres",
        "dsn": dsn,
        "slot": "wallaby_test",
        "publication": "wallaby_test",
        "status_interval": 0.2,
        "heartbeat_interval": 1.0,
        "reconnect": {"initial_delay": 0.2, "max_delay": 1.0},
    }
    values.update(overrides)
    return PostgresSourceConfig(**values)


def agent_config(data_dir: str, *sources: PostgresSourceConfig, **overrides: Any) -> AgentConfig:
    return AgentConfig(data_dir=data_dir, wal={"min_free_bytes": 0}, sources=list(sources), **overrides)


@contextlib.contextmanager
def running_agent(config: AgentConfig, **options: Any) -> Iterator[Agent]:
    """An agent started in threads; stopped cleanly (and checked for failures) at the end."""
    agent = build_agent(config, **options)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        agent.wait()
        agent.close()


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def logged_changes(data_dir: str) -> list[tuple[int, Change]]:
    """Every change record in the log (read beside a running writer), with its sequence."""
    out = []
    for record in wal.read_log(str(data_dir)):
        if is_change_payload(record.payload):
            out.append((record.seq, decode_change(record.payload)))
    return out


def changes_of(data_dir: str, op: str | None = None) -> list[Change]:
    return [c for _seq, c in logged_changes(data_dir) if op is None or c.op == op]


def execute(dsn: str, *statements: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)


def query(dsn: str, statement: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def slot_confirmed_lsn(dsn: str, slot: str) -> int | None:
    from agent.sources.postgres.lsn import parse_lsn

    rows = query(
        dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    )
    return parse_lsn(rows[0][0]) if rows and rows[0][0] else None


def current_lsn(dsn: str) -> int:
    from agent.sources.postgres.lsn import parse_lsn

    return parse_lsn(query(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])
