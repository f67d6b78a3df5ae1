"""One way for the PostgreSQL-backed destinations to open their connection."""

from __future__ import annotations

import psycopg

__all__ = ["connect_target"]


def connect_target(dsn: str, destination: str, *, autocommit: bool) -> psycopg.Connection:
    """A connection whose commits are on the target's disk before COMMIT returns.

    The sender moves its cursor as soon as a batch is confirmed, so a confirmed batch must survive a
    crash of the target. A server (or database, or role) configured with synchronous_commit = off
    would acknowledge a commit still sitting in its WAL buffers and lose it in a crash, and the
    sender would never send it again. The session setting overrides that, for this session only.
    """
    conn = psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=10,
        application_name=f"wallaby-agent:{destination}",
    )
    try:
        conn.execute("SET synchronous_commit = on")
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn
