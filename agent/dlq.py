"""Dead letters: records a destination refused for good, kept under `data_dir/dlq/` for an operator.

A record goes here when the destination rejected it permanently (after the sender narrowed a
refused batch down to it), or when retries ran out under `give_up_policy = "on_retry_exhaustion"`.
The sender adds the dead letter durably before it moves its cursor past the record, so a record
is always either delivered, or here, or still ahead of the cursor.

SQLite (WAL mode, synchronous=FULL) holds them: few, small, and listed, shown, replayed and
purged by id, which a log of their own would make awkward. The payload is the record's bytes as
they were in the log, so `dlq replay` sends exactly what failed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["DLQ_DIR", "DeadLetter", "DeadLetters"]

DLQ_DIR = "dlq"
DLQ_FILE = "dead_letters.db"
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- the record's sequence number in the log
    idempotency_key TEXT NOT NULL,
    payload BLOB NOT NULL,           -- the record's payload, as in the log
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL,
    replayed_at REAL                 -- set once `dlq replay` delivered it
);
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters (destination, id);
"""


@dataclass(frozen=True)
class DeadLetter:
    """One refused record."""

    id: int
    destination: str
    seq: int
    idempotency_key: str
    payload: bytes
    error: str
    attempts: int
    failed_at: float
    replayed_at: float | None

    def summary(self, when: Callable[[float | None], object]) -> dict[str, object]:
        """Everything but the payload, with the two times rendered by `when`."""
        return {
            "id": self.id,
            "destination": self.destination,
            "seq": self.seq,
            "idempotency_key": self.idempotency_key,
            "error": self.error,
            "attempts": self.attempts,
            "failed_at": when(self.failed_at),
            "replayed_at": when(self.replayed_at) if self.replayed_at else None,
        }


class DeadLetters:
    """The dead-letter store of one data directory; safe to share between threads and processes."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        directory = os.path.join(os.fspath(data_dir), DLQ_DIR)
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, DLQ_FILE)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a dead letter is durable before the cursor moves
        self._conn.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._conn:
            yield self._conn

    def add(
        self,
        destination: str,
        seq: int,
        idempotency_key: str,
        payload: bytes,
        error: str,
        attempts: int,
    ) -> int:
        """Store one refused record; returns its id. Durable when this returns."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO dead_letters (destination, seq, idempotency_key, payload, error, attempts,"
                " failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (destination, seq, idempotency_key, payload, error, attempts, time.time()),
            )
            return int(cursor.lastrowid or 0)

    def list(
        self, destination: str | None = None, *, include_replayed: bool = False, limit: int | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first; replayed ones only when asked."""
        sql = "SELECT * FROM dead_letters WHERE (? IS NULL OR destination = ?)"
        if not include_replayed:
            sql += " AND replayed_at IS NULL"
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, (destination, destination)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def get(self, letter_id: int) -> DeadLetter | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM dead_letters WHERE id = ?", (letter_id,)).fetchone()
        return None if row is None else DeadLetter(*row)

    def count(self, destination: str | None = None) -> int:
        """Dead letters not yet replayed."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL AND (? IS NULL OR destination = ?)",
                (destination, destination),
            ).fetchone()
        return int(row[0])

    def mark_replayed(self, letter_ids: list[int]) -> None:
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE dead_letters SET replayed_at = ? WHERE id = ?",
                [(time.time(), letter_id) for letter_id in letter_ids],
            )

    def purge(self, older_than_s: float, destination: str | None = None) -> int:
        """Delete dead letters that failed more than `older_than_s` seconds ago; returns how many."""
        cutoff = time.time() - older_than_s
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM dead_letters WHERE failed_at < ? AND (? IS NULL OR destination = ?)",
                (cutoff, destination, destination),
            )
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
