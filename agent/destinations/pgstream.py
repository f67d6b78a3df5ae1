"""`type = "pgstream"`: append changes to a PostgreSQL-backed stream that consumer groups pull from.

Each batch is one transaction: the destination's position row (stream, name) is locked and
read, the records past it are appended (`agent.pgstream.append`, which also drops records whose
idempotency key the stream holds), and the batch's last seq is stored. So a batch sent again
after a crash, or twice, adds nothing. Retention runs after a write, at most every
`TRIM_INTERVAL_S`, in its own transaction. docs/destinations/pgstream.md is the guide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import psycopg

from .. import pgstream
from ..config_destinations import PgStreamDestinationConfig
from ..delivery import Delivery
from ..errors import first_line
from ..pgstream import SCHEMA
from .base import DestinationError, PermanentError
from .pg_connect import connect_target
from .postgres import classify_error

__all__ = ["TRIM_INTERVAL_S", "PgStreamDestination"]

log = logging.getLogger("agent.destinations.pgstream")

# Trimming reads the whole stream's sizes: every few seconds is enough to bound it, and keeps
# that cost off the write path of every batch.
TRIM_INTERVAL_S = 5.0


class PgStreamDestination:
    """Writes batches into `wallaby_stream.entries` exactly once (see the module docstring)."""

    def __init__(self, config: PgStreamDestinationConfig) -> None:
        self.config = config
        self.name: str = config.name
        self.stream: str = config.stream
        self.stats: dict[str, int] = {"batches": 0, "entries_added": 0, "duplicates": 0, "skipped": 0}
        self._conn: psycopg.Connection | None = None
        self._next_trim = 0.0  # time.monotonic() after which retention may run again

    # -- the Destination protocol ---------------------------------------------------------------

    def open(self) -> None:
        try:
            self._connection()
        except psycopg.Error as exc:
            raise classify_error(exc, self.name) from exc

    def write(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        try:
            conn = self._connection()
            # The connection is idle here (autocommit off): this block is the batch's transaction.
            with conn.transaction():
                done = self._lock_position(conn)
                todo = [delivery for delivery in batch if delivery.seq > done]
                if todo:
                    added = pgstream.append(conn, self.stream, todo)
                    self._save_position(conn, max(d.seq for d in todo))
                    self.stats["entries_added"] += added
                    self.stats["duplicates"] += len(todo) - added
                self.stats["skipped"] += len(batch) - len(todo)
        except psycopg.Error as exc:
            raise classify_error(exc, self.name) from exc
        except TypeError as exc:  # orjson: a value the envelope cannot hold as JSON
            raise PermanentError(f"destination {self.name}: {first_line(exc)}") from exc
        self.stats["batches"] += 1
        self._maybe_trim()

    def position(self) -> int:
        try:
            conn = self._connection()
            try:
                return pgstream.stream_position(conn, self.stream, self.name)
            finally:
                conn.rollback()  # end the implicit transaction the read opened: writes need idle
        except psycopg.Error as exc:
            raise classify_error(exc, self.name) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the position, in the batch's transaction ------------------------------------------------

    def _lock_position(self, conn: psycopg.Connection) -> int:
        """The stored position, row-locked until the batch commits: two writers take turns."""
        key = (self.stream, self.name)
        conn.execute(
            f"INSERT INTO {SCHEMA}.positions (stream, destination, seq) VALUES (%s, %s, 0)"
            " ON CONFLICT DO NOTHING",
            key,
        )
        row = conn.execute(
            f"SELECT seq FROM {SCHEMA}.positions WHERE stream = %s AND destination = %s FOR UPDATE", key
        ).fetchone()
        return int(row[0]) if row else 0

    def _save_position(self, conn: psycopg.Connection, seq: int) -> None:
        conn.execute(
            f"UPDATE {SCHEMA}.positions SET seq = %s, updated_at = statement_timestamp()"
            " WHERE stream = %s AND destination = %s",
            (seq, self.stream, self.name),
        )

    # -- retention ------------------------------------------------------------------------------

    def trim(self) -> int:
        """Apply `retention` and `max_stream_bytes` now; returns the entries removed."""
        conn = self._connection()
        with conn.transaction():
            return pgstream.trim(conn, self.stream, self.config.retention, self.config.max_stream_bytes)

    def _maybe_trim(self) -> None:
        """Trim when it is due; a failure is logged, not raised: the batch is committed already."""
        if self.config.retention is None and self.config.max_stream_bytes is None:
            return
        now = time.monotonic()
        if now < self._next_trim:
            return
        self._next_trim = now + TRIM_INTERVAL_S
        try:
            removed = self.trim()
        except (psycopg.Error, DestinationError) as exc:
            log.warning("destination.trim.failed", extra={"destination": self.name, "error": first_line(exc)})
            return
        if removed:
            log.info("destination.trimmed", extra={"destination": self.name, "entries": removed})

    # -- the connection -------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        """The open connection, or a new one with the tables in place (a broken one is replaced)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = connect_target(self.config.dsn, self.name, autocommit=False)
            try:
                with conn.transaction():
                    pgstream.ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return conn
