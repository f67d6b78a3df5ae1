"""The streaming replication connection: walsender commands and the COPY BOTH stream of a logical slot.

psycopg runs the commands (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT, START_REPLICATION); the stream
is then read and answered through libpq directly (`conn.pgconn`), because psycopg has no API for
COPY BOTH. Messages in the stream ("Streaming Replication Protocol"):

    server  w  XLogData         wal_start:u64 wal_end:u64 send_time:i64 data
    server  k  Keepalive        wal_end:u64 send_time:i64 reply_requested:u8
    client  r  Standby status   write:u64 flush:u64 apply:u64 client_time:i64 reply_requested:u8

Server times count microseconds from 2000-01-01; XLogData and Keepalive carry them converted to
microseconds since the UNIX epoch.
"""

from __future__ import annotations

import math
import select
import struct
import time
from dataclasses import dataclass
from types import TracebackType

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .errors import (
    ConnectionFailed,
    ProtocolError,
    ReplicationError,
    ReplicationSetupError,
    SlotLost,
    SourceError,
)
from .lsn import PG_EPOCH_OFFSET_US, format_lsn, parse_lsn

# Settings that make pgoutput's text output canonical whatever the server's or role's defaults are:
# the walsender formats values with its own session's settings.
DEFAULT_SESSION_OPTIONS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
}
# How long a standby status update may wait for room in the socket before the link counts as dead.
SEND_TIMEOUT_S = 30.0

_XLOG_HEADER = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">cQQQqB")
_XLOG_DATA, _KEEPALIVE_TAG = ord("w"), ord("k")
_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP


# Not frozen: one of these is built per message, and a frozen dataclass costs three times as much
# to build (each field goes through object.__setattr__).
@dataclass(slots=True)
class XLogData:
    """A piece of the stream: one pgoutput message (`data`) and the WAL positions around it."""

    wal_start: int
    wal_end: int
    send_time_us: int  # microseconds since the UNIX epoch
    data: memoryview  # one pgoutput message


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The server's keepalive: its current WAL position, and whether it wants a reply now."""

    wal_end: int
    send_time_us: int  # microseconds since the UNIX epoch
    reply_requested: bool


def quote_identifier(name: str) -> str:
    """`name` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """`value` as a single-quoted SQL string literal (the walsender grammar has no E'' strings)."""
    return "'" + value.replace("'", "''") + "'"


def _options_argument(settings: dict[str, str]) -> str:
    """libpq's `options`: `-c name=value` words, with spaces and backslashes escaped by a backslash."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(" ", "\\ ")

    return " ".join(f"-c {escape(name)}={escape(value)}" for name, value in settings.items())


class ReplicationConnection:
    """A walsender connection to one database, for slot commands and one logical replication stream."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str = "wallaby-agent",
        connect_timeout_s: float = 10.0,
        session_options: dict[str, str] | None = None,
    ) -> None:
        settings = {**DEFAULT_SESSION_OPTIONS, **(session_options or {})}
        options = _options_argument(settings)
        existing = conninfo_to_dict(dsn).get("options")
        if existing:
            options = f"{existing} {options}"  # the later -c wins, so ours override the DSN's
        try:
            self._conn = psycopg.connect(
                dsn,
                replication="database",
                autocommit=True,
                application_name=application_name,
                # libpq takes whole seconds; rounding up keeps a short timeout from becoming "none".
                connect_timeout=max(1, math.ceil(connect_timeout_s)),
                options=options,
                # pgoutput sends text in the client encoding; the decoder reads UTF-8.
                client_encoding="UTF8",
            )
        except psycopg.Error as error:
            raise ConnectionFailed(
                f"cannot open a replication connection: {error}", sqlstate=error.sqlstate
            ) from None
        self._pgconn = self._conn.pgconn
        self._poll = select.poll()
        self._poll.register(self._pgconn.socket, _READABLE)
        self._streaming = False

    @property
    def server_version(self) -> int:
        """The server's version as an integer, 150004 for 15.4."""
        return self._conn.info.server_version

    def identify_system(self) -> dict[str, object]:
        """The server's identity: systemid (str), timeline (int), xlogpos (int LSN) and dbname."""
        row = self._command("IDENTIFY_SYSTEM", "identify the system").fetchone()
        assert row is not None
        systemid, timeline, xlogpos, dbname = row
        return {
            "systemid": str(systemid),
            "timeline": int(timeline),
            "xlogpos": parse_lsn(xlogpos),
            "dbname": dbname,
        }

    def create_slot(
        self, slot: str, *, export_snapshot: bool = False, temporary: bool = False
    ) -> tuple[int, str | None]:
        """Create a pgoutput slot; return its consistent point and, if asked, the exported snapshot's name.

        An exported snapshot stays usable only until this connection runs its next command.
        """
        command = f"CREATE_REPLICATION_SLOT {quote_identifier(slot)}{' TEMPORARY' if temporary else ''} LOGICAL pgoutput"
        if self.server_version >= 150000:
            command += f" (SNAPSHOT '{'export' if export_snapshot else 'nothing'}')"
        else:
            command += " EXPORT_SNAPSHOT" if export_snapshot else " NOEXPORT_SNAPSHOT"
        row = self._command(command, f"create replication slot {slot!r}").fetchone()
        assert row is not None
        return parse_lsn(row[1]), row[2]

    def start(self, slot: str, start_lsn: int, publication: str, *, messages: bool = True) -> None:
        """Start streaming `slot` from `start_lsn` (0: from where the slot's confirmed position is)."""
        # publication_names is a list of identifiers inside a string literal: quote twice.
        options = ["proto_version '1'", f"publication_names {quote_literal(quote_identifier(publication))}"]
        if messages:
            options.append("messages 'true'")
        command = f"START_REPLICATION SLOT {quote_identifier(slot)} LOGICAL {format_lsn(start_lsn)} ({', '.join(options)})"
        self._command(command, f"start replication from slot {slot!r}")
        self._streaming = True

    def read(self, timeout_s: float) -> XLogData | Keepalive | None:
        """The next message of the stream, or None when none arrived within `timeout_s` seconds."""
        pgconn = self._pgconn
        try:
            # Drain what libpq already holds first: a select per message would cost more than the message.
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                deadline = time.monotonic() + timeout_s
                while True:
                    wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
                    if not self._poll.poll(wait_ms):
                        return None
                    pgconn.consume_input()
                    nbytes, data = pgconn.get_copy_data(1)
                    if nbytes != 0:
                        break
                    if time.monotonic() >= deadline:  # only part of a message came in time
                        return None
        except psycopg.OperationalError as error:
            raise self._stream_failure(str(error)) from None
        if nbytes < 0:
            raise self._stream_failure("the server ended the replication stream")
        kind = data[0]
        try:
            if kind == _XLOG_DATA:
                wal_start, wal_end, send_time = _XLOG_HEADER.unpack_from(data, 1)
                return XLogData(wal_start, wal_end, send_time + PG_EPOCH_OFFSET_US, data[25:])
            if kind == _KEEPALIVE_TAG:
                wal_end, send_time, reply = _KEEPALIVE.unpack_from(data, 1)
                return Keepalive(wal_end, send_time + PG_EPOCH_OFFSET_US, bool(reply))
        except struct.error:
            raise ProtocolError(
                f"replication message of {nbytes} bytes is too short", message_type=chr(kind)
            ) from None
        raise ProtocolError(f"unknown replication message type {chr(kind)!r} (0x{kind:02x})")

    def send_status(
        self, write_lsn: int, flush_lsn: int, apply_lsn: int, *, reply_requested: bool = False
    ) -> None:
        """Tell the server how far the client has written, flushed and applied (flush lets it free WAL)."""
        now_pg_us = time.time_ns() // 1000 - PG_EPOCH_OFFSET_US
        payload = _STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_pg_us, reply_requested)
        pgconn = self._pgconn
        deadline = time.monotonic() + SEND_TIMEOUT_S
        try:
            # A non-blocking libpq (psycopg's mode) may refuse to queue or to send everything at once.
            while pgconn.put_copy_data(payload) == 0:
                self._wait_to_send(deadline)
            while pgconn.flush() == 1:
                self._wait_to_send(deadline)
        except psycopg.OperationalError as error:
            raise self._stream_failure(str(error)) from None

    def close(self) -> None:
        """Close the connection; a running stream simply ends (the slot keeps its confirmed position)."""
        self._conn.close()

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _command(self, command: str, doing: str) -> psycopg.Cursor:
        if self._streaming:
            raise ReplicationError(f"cannot {doing}: the connection is streaming")
        try:
            return self._conn.execute(command)
        except psycopg.Error as error:
            raise _command_failure(error, doing) from None

    def _wait_to_send(self, deadline: float) -> None:
        """Wait until the socket takes more data, reading what arrives meanwhile so the server is not stuck."""
        remaining_ms = math.ceil((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise ReplicationError(f"could not send a status update within {SEND_TIMEOUT_S:g} s")
        events = select.poll()
        events.register(self._pgconn.socket, _READABLE | select.POLLOUT)
        for _, event in events.poll(remaining_ms):
            if event & _READABLE:
                self._pgconn.consume_input()

    def _stream_failure(self, fallback: str) -> ReplicationError:
        """The error the server reported for the end of the stream, or `fallback` when it sent none."""
        self._streaming = False
        pgconn = self._pgconn
        message, sqlstate = "", None
        if pgconn.status == pq.ConnStatus.OK and not pgconn.is_busy():
            # The stream ended with an ErrorResponse or CopyDone: the result says which. A busy
            # connection has no result yet, and waiting for one could block: leave it.
            result = pgconn.get_result()
            if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                message = (result.error_message or b"").decode("utf-8", "replace")
                state = result.error_field(pq.DiagnosticField.SQLSTATE)
                sqlstate = state.decode() if state else None
        if not message:
            message = pgconn.error_message.decode("utf-8", "replace") or fallback
        return ReplicationError(f"replication stream failed: {message.strip()}", sqlstate=sqlstate)


# SQLSTATEs of command failures that mean something else than a broken connection.
_SLOT_MISSING = "42704"  # undefined_object
_PREREQUISITE = "55000"  # object_not_in_prerequisite_state: wal_level, invalidated slot
_LIMIT = "53400"  # configuration_limit_exceeded: all slots in use
_PRIVILEGE = "42501"  # insufficient_privilege


def _command_failure(error: psycopg.Error, doing: str) -> SourceError:
    """A failed walsender command as the error a caller can act on."""
    sqlstate = error.sqlstate
    message = f"cannot {doing}: {error}".strip()
    diagnostic = error.diag
    if diagnostic.message_detail:
        message += f" ({diagnostic.message_detail})"
    if sqlstate == _SLOT_MISSING and "replication slot" in str(error):
        return SlotLost(message)
    if sqlstate == _PREREQUISITE and ("invalidated" in message or "can no longer get changes" in message):
        return SlotLost(message)
    if sqlstate in (_PREREQUISITE, _LIMIT, _PRIVILEGE):
        return ReplicationSetupError(message)
    return ReplicationError(message, sqlstate=sqlstate)
