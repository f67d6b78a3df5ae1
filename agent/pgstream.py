"""A stream with consumer groups and visibility timeouts, stored in PostgreSQL (schema `wallaby_stream`).

The `pgstream` destination appends to it; consumers pull, ack and replay (the `stream` CLI, or
these functions). docs/destinations/pgstream.md is the guide. The tables, shared by all streams
(one fixed set of tables, so no DDL is ever built from a stream's name):

    entries     id (identity: the entry id), stream, idempotency_key (UNIQUE per stream), seq,
                table_name, op, envelope (jsonb), size_bytes, created_at
    groups      (stream, group_name) -> last_id: the highest entry id already given a deliveries
                row for the group, so a pull looks only at entries past it
    deliveries  (stream, group_name, entry_id) -> state ('pending' | 'acked'), delivery_count,
                visible_at, acked_at; deleted with their entry (ON DELETE CASCADE)
    positions   (stream, destination) -> seq: the destination's exactly-once position, written
                by agent.destinations.pgstream in the transaction that appends its batch

Every function runs inside `conn.transaction()`: on an autocommit connection (the CLI's) it
commits before returning; inside a transaction the caller opened (the destination's) it is a
savepoint, and the caller commits. `pull` uses two transactions so that concurrent consumers
of one group queue only for the short first one (see `pull`).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from .delivery import Delivery, envelope

__all__ = [
    "SCHEMA",
    "AckResult",
    "Entry",
    "ack",
    "ack_ids",
    "append",
    "ensure_schema",
    "pull",
    "replay",
    "stream_position",
    "trim",
]

log = logging.getLogger("agent.pgstream")

SCHEMA = "wallaby_stream"
# Advisory lock classes (two-int form, so they cannot collide with one-bigint locks of others).
_LOCK_APPEND = 0x57414C42  # "WALB": one writer per stream at a time, see `append`
_LOCK_SCHEMA = _LOCK_APPEND + 1  # concurrent CREATE TABLE IF NOT EXISTS can fail: take turns
_MATERIALIZE_MIN = 1000  # new entries given deliveries rows per pull, at least

_TABLES = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.entries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream text NOT NULL,
    idempotency_key text NOT NULL,
    seq bigint NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    envelope jsonb NOT NULL,
    size_bytes integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    UNIQUE (stream, idempotency_key)
);
CREATE INDEX IF NOT EXISTS entries_stream_id ON {SCHEMA}.entries (stream, id);
CREATE INDEX IF NOT EXISTS entries_stream_created ON {SCHEMA}.entries (stream, created_at);
CREATE TABLE IF NOT EXISTS {SCHEMA}.groups (
    stream text NOT NULL,
    group_name text NOT NULL,
    last_id bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (stream, group_name)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.deliveries (
    stream text NOT NULL,
    group_name text NOT NULL,
    entry_id bigint NOT NULL REFERENCES {SCHEMA}.entries (id) ON DELETE CASCADE,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'acked')),
    delivery_count integer NOT NULL DEFAULT 0,
    visible_at timestamptz NOT NULL DEFAULT '-infinity',
    acked_at timestamptz,
    PRIMARY KEY (stream, group_name, entry_id)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON {SCHEMA}.deliveries (stream, group_name, entry_id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_entry ON {SCHEMA}.deliveries (entry_id);
CREATE TABLE IF NOT EXISTS {SCHEMA}.positions (
    stream text NOT NULL,
    destination text NOT NULL,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (stream, destination)
);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as a pull hands it to a consumer."""

    id: int
    stream: str
    seq: int
    table_name: str
    op: str
    envelope: dict[str, Any]
    created_at: datetime.datetime
    delivery_count: int  # 1 on the first delivery to this group
    visible_at: datetime.datetime  # when it comes back unless acked


@dataclass(frozen=True, slots=True)
class AckResult:
    """What an ack did with each id it was given."""

    acked: list[int]  # pending until now, acked by this call
    already_acked: list[int]
    unknown: list[int]  # not in the stream, or never pulled by this group


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the schema and tables when missing (checked first: a consumer may lack CREATE rights)."""
    with conn.transaction():
        present = conn.execute(f"SELECT to_regclass('{SCHEMA}.positions') IS NOT NULL").fetchone()
        if present and present[0]:
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_SCHEMA,))
        for statement in filter(str.strip, _TABLES.split(";")):
            conn.execute(statement)


def append(conn: psycopg.Connection, stream: str, deliveries: Sequence[Delivery]) -> int:
    """Add the records to the stream in order; records whose idempotency key it holds are dropped.

    Returns how many were added. The per-stream advisory lock makes a stream's writers take
    turns, so its entry ids become visible in increasing order: a consumer that has seen id N
    can never later see a smaller id appear, which lets `groups.last_id` be a plain cursor.
    created_at is the INSERT's own statement time (after the lock), so it increases with id.
    """
    _name(stream, "stream")
    if not deliveries:
        return 0
    rows = []
    for delivery in deliveries:
        body = orjson.dumps(envelope(delivery)).decode()
        change = delivery.change
        rows.append([delivery.idempotency_key, delivery.seq, change.table, change.op, body, len(body)])
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_APPEND, stream))
        cursor = conn.execute(
            f"INSERT INTO {SCHEMA}.entries (stream, idempotency_key, seq, table_name, op, envelope, size_bytes)"
            " SELECT %s, r->>0, CAST(r->>1 AS bigint), r->>2, r->>3, CAST(r->>4 AS jsonb), CAST(r->>5 AS integer)"
            " FROM jsonb_array_elements(CAST(%s AS jsonb)) WITH ORDINALITY AS a(r, n) ORDER BY n"
            " ON CONFLICT (stream, idempotency_key) DO NOTHING",
            (stream, orjson.dumps(rows).decode()),
        )
        return cursor.rowcount


def pull(
    conn: psycopg.Connection, stream: str, group: str, max_entries: int, visibility_s: float
) -> list[Entry]:
    """Up to `max_entries` visible entries not acked by `group`, oldest first, now hidden for `visibility_s`.

    First (its own transaction) entries past the group's cursor get 'pending' deliveries rows,
    a chunk at a time; the group row is locked only for that. Then the claim: one statement that
    picks visible pending rows FOR UPDATE SKIP LOCKED, so concurrent consumers of the group skip
    each other's rows instead of waiting or taking the same ones, and pushes visible_at forward.
    """
    _name(stream, "stream")
    _name(group, "group")
    if max_entries < 1:
        raise ValueError(f"max_entries must be at least 1, not {max_entries}")
    if not visibility_s >= 0:
        raise ValueError(f"the visibility timeout must be 0 seconds or more, not {visibility_s}")
    key = {"stream": stream, "group": group}
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {SCHEMA}.groups (stream, group_name) VALUES (%(stream)s, %(group)s)"
            " ON CONFLICT DO NOTHING",
            key,
        )
        row = conn.execute(
            f"SELECT last_id FROM {SCHEMA}.groups WHERE stream = %(stream)s AND group_name = %(group)s"
            " FOR UPDATE",
            key,
        ).fetchone()
        conn.execute(
            f"WITH fresh AS (SELECT id FROM {SCHEMA}.entries"
            "   WHERE stream = %(stream)s AND id > %(last)s ORDER BY id LIMIT %(chunk)s),"
            f" added AS (INSERT INTO {SCHEMA}.deliveries (stream, group_name, entry_id)"
            "   SELECT %(stream)s, %(group)s, id FROM fresh ON CONFLICT DO NOTHING)"
            f" UPDATE {SCHEMA}.groups SET last_id = (SELECT max(id) FROM fresh)"
            " WHERE stream = %(stream)s AND group_name = %(group)s AND EXISTS (SELECT 1 FROM fresh)",
            {**key, "last": row[0] if row else 0, "chunk": max(max_entries, _MATERIALIZE_MIN)},
        )
    with conn.transaction():
        rows = conn.execute(
            f"WITH picked AS (SELECT entry_id FROM {SCHEMA}.deliveries"
            "   WHERE stream = %(stream)s AND group_name = %(group)s AND state = 'pending'"
            "   AND visible_at <= statement_timestamp()"
            "   ORDER BY entry_id LIMIT %(max)s FOR UPDATE SKIP LOCKED),"
            f" claimed AS (UPDATE {SCHEMA}.deliveries d SET delivery_count = d.delivery_count + 1,"
            "   visible_at = statement_timestamp() + make_interval(secs => %(vis)s)"
            "   FROM picked WHERE d.stream = %(stream)s AND d.group_name = %(group)s"
            "   AND d.entry_id = picked.entry_id RETURNING d.entry_id, d.delivery_count, d.visible_at)"
            " SELECT e.id, e.stream, e.seq, e.table_name, e.op, e.envelope, e.created_at,"
            "   c.delivery_count, c.visible_at"
            f" FROM claimed c JOIN {SCHEMA}.entries e ON e.id = c.entry_id ORDER BY e.id",
            {**key, "max": max_entries, "vis": float(visibility_s)},
        ).fetchall()
    return [Entry(*row) for row in rows]


def ack_ids(conn: psycopg.Connection, stream: str, group: str, ids: Sequence[int]) -> AckResult:
    """Mark pulled entries done for `group`, and say which ids were acked already or are unknown."""
    params = {"stream": stream, "group": group, "ids": sorted(set(ids))}
    with conn.transaction():
        rows = conn.execute(
            "WITH wanted AS (SELECT unnest(CAST(%(ids)s AS bigint[])) AS id),"
            f" done AS (UPDATE {SCHEMA}.deliveries SET state = 'acked', acked_at = statement_timestamp()"
            "   WHERE stream = %(stream)s AND group_name = %(group)s AND state = 'pending'"
            "   AND delivery_count > 0 AND entry_id IN (SELECT id FROM wanted) RETURNING entry_id)"
            " SELECT w.id, CASE WHEN x.entry_id IS NOT NULL THEN 'acked'"
            "   WHEN d.delivery_count > 0 THEN 'already' ELSE 'unknown' END"
            " FROM wanted w LEFT JOIN done x ON x.entry_id = w.id"
            f" LEFT JOIN {SCHEMA}.deliveries d ON d.stream = %(stream)s AND d.group_name = %(group)s"
            "   AND d.entry_id = w.id ORDER BY w.id",
            params,
        ).fetchall()
    by_kind: dict[str, list[int]] = {"acked": [], "already": [], "unknown": []}
    for entry_id, kind in rows:
        by_kind[kind].append(entry_id)
    return AckResult(by_kind["acked"], by_kind["already"], by_kind["unknown"])


def ack(conn: psycopg.Connection, stream: str, group: str, ids: Sequence[int]) -> int:
    """How many of `ids` this call acked; unknown ids are logged as a warning (`ack_ids` lists them)."""
    result = ack_ids(conn, stream, group, ids)
    if result.unknown:
        log.warning("pgstream.ack.unknown", extra={"stream": stream, "group": group, "ids": result.unknown})
    return len(result.acked)


def replay(conn: psycopg.Connection, stream: str, group: str, since: datetime.datetime) -> int:
    """Make the group's entries created at or after `since` visible and un-acked again.

    Returns how many deliveries changed (acked ones, and pulled ones still hidden). Entries the
    group never pulled are visible already. A naive `since` is taken as UTC.
    """
    if since.tzinfo is None:
        since = since.replace(tzinfo=datetime.UTC)
    with conn.transaction():
        cursor = conn.execute(
            f"UPDATE {SCHEMA}.deliveries d SET state = 'pending', acked_at = NULL,"
            " visible_at = statement_timestamp()"
            f" FROM {SCHEMA}.entries e WHERE d.stream = %(stream)s AND d.group_name = %(group)s"
            " AND e.id = d.entry_id AND e.stream = %(stream)s AND e.created_at >= %(since)s"
            " AND (d.state = 'acked' OR d.visible_at > statement_timestamp())",
            {"stream": stream, "group": group, "since": since},
        )
        return cursor.rowcount


def trim(conn: psycopg.Connection, stream: str, retention_s: float | None, max_bytes: int | None) -> int:
    """Delete entries older than `retention_s`, then the oldest while the stream exceeds `max_bytes`.

    Acked or not: retention bounds the table, like a log's. Returns how many entries went; their
    deliveries go with them. The size is the sum of `size_bytes` (the envelope's JSON length).
    """
    removed = 0
    with conn.transaction():
        if retention_s is not None:
            removed += conn.execute(
                f"DELETE FROM {SCHEMA}.entries WHERE stream = %s"
                " AND created_at < statement_timestamp() - make_interval(secs => %s)",
                (stream, float(retention_s)),
            ).rowcount
        if max_bytes is not None:
            # The newest entries whose running total (newest first) fits stay; the rest go.
            removed += conn.execute(
                f"DELETE FROM {SCHEMA}.entries WHERE stream = %(stream)s AND id <= ("
                "  SELECT max(id) FROM (SELECT id, sum(size_bytes) OVER (ORDER BY id DESC) AS total"
                f"   FROM {SCHEMA}.entries WHERE stream = %(stream)s) s WHERE total > %(max)s)",
                {"stream": stream, "max": max_bytes},
            ).rowcount
    return removed


def stream_position(conn: psycopg.Connection, stream: str, destination_name: str) -> int:
    """The last seq the destination `destination_name` stored in `stream` (0: none)."""
    with conn.transaction():
        row = conn.execute(
            f"SELECT seq FROM {SCHEMA}.positions WHERE stream = %s AND destination = %s",
            (stream, destination_name),
        ).fetchone()
    return int(row[0]) if row else 0


def _name(value: str, what: str) -> None:
    if not value or not value.strip():
        raise ValueError(f"the {what} name must not be empty")
