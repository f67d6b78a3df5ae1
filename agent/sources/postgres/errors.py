"""The errors of the PostgreSQL source, as one tree a caller can catch at any level.

    SourceError                   anything the PostgreSQL source raises on purpose
    ├── ReplicationError          the replication connection failed: stream ended, server error, lost link
    │   └── ConnectionFailed      the server could not be reached or refused the connection
    ├── ProtocolError             bytes from the server that are not a valid message (pgoutput or wire)
    ├── SlotLost                  the replication slot was dropped or invalidated
    └── ReplicationSetupError     the server is not set up for logical replication (wal_level, slots, ...)

Server errors keep PostgreSQL's own message and SQLSTATE, so an operator sees what the server said.
"""

from __future__ import annotations


class SourceError(Exception):
    """Base class of every error the PostgreSQL source raises on purpose."""


class ReplicationError(SourceError):
    """The replication stream failed; `sqlstate` is the server's error code when it sent one."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


class ConnectionFailed(ReplicationError):
    """The replication connection could not be opened (refused, unreachable, authentication)."""


class ProtocolError(SourceError):
    """A message that does not decode: unknown type, too short, or garbled."""

    def __init__(self, reason: str, *, message_type: str | None = None, offset: int | None = None) -> None:
        self.reason = reason
        self.message_type = message_type
        self.offset = offset
        where = "" if message_type is None else f"{message_type!r} message"
        if offset is not None:
            where += f" at byte {offset}" if where else f"byte {offset}"
        super().__init__(f"{where}: {reason}" if where else reason)


class SlotLost(SourceError):
    """The replication slot no longer exists or was invalidated; its position is gone."""


class ReplicationSetupError(SourceError):
    """The server's configuration does not allow logical replication as asked."""
