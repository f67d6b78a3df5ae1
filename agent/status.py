"""The status document: where the log stands, each destination, each source, and the flow.

`live_status(agent)` reads a running agent (the admin API's /status); `offline_status(data_dir)`
reads a data directory from disk without taking the writer's lock or writing anything (the
`status` command when no agent answers). Both produce the same shape:

    {"running": bool,
     "log": {"root", "first_seq", "last_seq", "durable_seq", "live_segments", "live_bytes",
             "archives", "archive_bytes", "compression_ratio", "quarantine_files", "damage"},
     "destinations": [{"name", "cursor", "pending", "state", "delivered", "retries",
                       "dead_letters", "last_error"}],
     "sources": [{"name", "state", "received_lsn", "flushed_lsn", "lag_bytes", "last_error"}],
     "flow": {"state", "reason"}}

What only a running agent knows (durable_seq, delivered, retries, received_lsn, lag) is None
offline.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import TYPE_CHECKING, Any

from wal.status import LogStatus, read_status

from .dlq import DLQ_DIR, DLQ_FILE
from .sender import cursor_name
from .sources.postgres.lsn import format_lsn
from .state import STATE_FILE
from .telemetry import source_lag_bytes

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = ["live_status", "offline_status"]

_DEST_PREFIX = cursor_name("")


def _log_section(status: LogStatus, *, durable_seq: int | None, damage: int | None) -> dict[str, Any]:
    return {
        "root": status.root,
        "first_seq": status.first_seq,
        "last_seq": status.last_seq,
        "durable_seq": durable_seq,
        "live_segments": status.live_segments,
        "live_bytes": status.live_bytes,
        "archives": status.archives,
        "archive_bytes": status.archive_bytes,
        "compression_ratio": None if status.compression_ratio is None else round(status.compression_ratio, 2),
        "quarantine_files": len(status.quarantine_files),
        "damage": damage,
    }


def live_status(agent: Agent) -> dict[str, Any]:
    """The status of a running agent, from its log, senders, sources and state store."""
    stats = agent.log.stats()
    disk = read_status(agent.log.root)
    log_section = _log_section(disk, durable_seq=stats.durable_seq, damage=stats.damage_count)
    log_section["first_seq"] = stats.first_seq
    log_section["last_seq"] = stats.last_seq
    destinations = []
    for sender in agent.senders:
        position = sender.cursor.position
        destinations.append(
            {
                "name": sender.name,
                "cursor": position,
                "pending": max(0, stats.durable_seq - position),
                "state": sender.stats.state,
                "delivered": sender.stats.delivered,
                "retries": sender.stats.retries,
                "dead_letters": agent.dead_letters.count(sender.name) if agent.dead_letters else 0,
                "last_error": sender.stats.last_error,
            }
        )
    sources = []
    for source in agent.sources:
        status = source.status
        sources.append(
            {
                "name": status.name,
                "state": status.state,
                "received_lsn": format_lsn(status.received_lsn),
                "flushed_lsn": format_lsn(status.flushed_lsn),
                "lag_bytes": source_lag_bytes(status),
                "last_error": status.last_error,
            }
        )
    flow = agent.state.flow()
    return {
        "running": True,
        "log": log_section,
        "destinations": destinations,
        "sources": sources,
        "flow": {"state": flow.state, "reason": flow.reason},
        "errors": {name: str(error) for name, error in agent.errors.items()},
    }


def offline_status(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The status of a data directory read from disk; `running` says whether a writer holds it."""
    root = os.path.abspath(os.fspath(data_dir))
    disk = read_status(root)  # NotALog when there is no log here
    dead = _dead_letter_counts(root)
    state_db = os.path.join(root, STATE_FILE)
    destinations = [
        {
            "name": cursor.name[len(_DEST_PREFIX) :],
            "cursor": cursor.position,
            "pending": cursor.behind,
            "state": "stopped" if disk.writer_pid is None else "unknown",
            "delivered": None,
            "retries": None,
            "dead_letters": dead.get(cursor.name[len(_DEST_PREFIX) :], 0),
            "last_error": None,
        }
        for cursor in disk.cursors
        if cursor.name.startswith(_DEST_PREFIX)
    ]
    sources = [
        {
            "name": name,
            "state": "stopped" if disk.writer_pid is None else "unknown",
            "received_lsn": None,
            "flushed_lsn": flushed,
            "lag_bytes": None,
            "last_error": None,
        }
        for name, flushed in _query(
            state_db, "SELECT source, flushed_lsn FROM source_positions ORDER BY source"
        )
    ]
    flow_rows = _query(state_db, "SELECT state, reason FROM flow WHERE id = 1")
    flow = (
        {"state": flow_rows[0][0], "reason": flow_rows[0][1]}
        if flow_rows
        else {"state": "running", "reason": None}
    )
    return {
        "running": disk.writer_pid is not None,
        "log": _log_section(disk, durable_seq=None, damage=None),
        "destinations": destinations,
        "sources": sources,
        "flow": flow,
        "errors": {},
    }


def _dead_letter_counts(root: str) -> dict[str, int]:
    rows = _query(
        os.path.join(root, DLQ_DIR, DLQ_FILE),
        "SELECT destination, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY destination",
    )
    return {name: int(count) for name, count in rows}


def _query(path: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows from a SQLite file opened read-only; none when the file or table does not exist."""
    if not os.path.exists(path):
        return []
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.Error:  # an older file without the table
        return []
    finally:
        conn.close()
