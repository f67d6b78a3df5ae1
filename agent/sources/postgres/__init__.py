"""The PostgreSQL source: logical replication (pgoutput) into change records.

`PostgresSource` runs the stream; the other names are its parts, public for tools and tests:
the pgoutput decoder, the replication connection, LSN helpers, slot and publication set-up and
the error tree.
"""

from .errors import (
    ConnectionFailed,
    ProtocolError,
    ReplicationError,
    ReplicationSetupError,
    SlotLost,
    SourceError,
)
from .lsn import format_lsn, parse_lsn
from .pgoutput import decode_message
from .replication import Keepalive, ReplicationConnection, XLogData
from .slot import SlotInfo, check_slot, ensure_publication, validate_replication
from .source import PostgresSource, SourceStatus

__all__ = [
    "ConnectionFailed",
    "Keepalive",
    "PostgresSource",
    "ProtocolError",
    "ReplicationConnection",
    "ReplicationError",
    "ReplicationSetupError",
    "SlotInfo",
    "SlotLost",
    "SourceError",
    "SourceStatus",
    "XLogData",
    "check_slot",
    "decode_message",
    "ensure_publication",
    "format_lsn",
    "parse_lsn",
    "validate_replication",
]
