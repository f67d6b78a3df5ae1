"""The PostgreSQL source: stream pgoutput changes into the log, confirm only what is durable.

One session = set-up checks on an ordinary connection, then one replication connection read until
it fails or the source is stopped. Sessions repeat with exponential backoff after connection loss;
a lost or dropped slot, or a broken log, ends the source with that reason.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

import wal
from agent.change import encode_change
from agent.config import PostgresSourceConfig
from agent.ddl import DdlGate
from agent.errors import first_line
from agent.state import SourcePosition, StateStore

from .catalog import primary_key, record_relation_schema
from .changes import ChangeDecoder, skip_prefix
from .ddl import install_ddl_capture, quiet_ddl
from .errors import ReplicationError, ReplicationSetupError, SlotLost, SourceError
from .lsn import format_lsn, parse_lsn
from .pgoutput import (
    ROW_MESSAGE_TYPES,
    Begin,
    Commit,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    decode_message,
)
from .progress import Deduplicator, FlushTracker, find_resume_point
from .replication import Keepalive, ReplicationConnection, XLogData
from .slot import SlotInfo, check_slot, describe_lag, ensure_publication, slot_info, validate_replication
from .toast import ToastFetcher

log = logging.getLogger("agent.source.postgres")

# How often the saved position (state.db) follows the flushed position; each save is an fsync.
_SAVE_POSITION_S = 1.0
# How often slot health (lag, wal_status) and the flow state are read.
_SLOT_CHECK_S = 2.0
# How often a paused source looks whether the flow was resumed.
_PAUSE_POLL_S = 0.5
# A stop waits this long for appended changes to become durable before the final status update.
_STOP_DURABLE_TIMEOUT_S = 5.0
# A transaction's changes go to the log in batches of this many, and at its commit: one
# append_batch costs far less per record than an append each (and wakes the log's writer once),
# and nothing is confirmed upstream before the commit, so holding changes back delays nothing.
_APPEND_BATCH_RECORDS = 256


@dataclass
class SourceStatus:
    """What the source last knew, for status pages and tests."""

    name: str
    state: str = "starting"  # starting, streaming, reconnecting, stopped, failed
    received_lsn: int = 0
    flushed_lsn: int = 0
    changes_written: int = 0
    transactions_written: int = 0
    transactions_skipped: int = 0
    reconnects: int = 0
    last_error: str | None = None
    slot: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["received_lsn"] = format_lsn(self.received_lsn)
        data["flushed_lsn"] = format_lsn(self.flushed_lsn)
        return data


class PostgresSource:
    """Streams one database's publication into the log."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        log_: wal.Log,
        state: StateStore,
        *,
        start_lsn: int | None = None,
        on_ddl: Callable[[Any, int], bool] | None = None,
    ) -> None:
        self.config = config
        self.log = log_
        self.state = state
        self.status = SourceStatus(config.name)
        self._start_lsn = start_lsn if start_lsn is not None else _maybe_lsn(config.start_lsn)
        self._stop = threading.Event()
        # Returns True when the flow must pause after this DDL's transaction.
        self._on_ddl = on_ddl or DdlGate(
            state,
            config.name,
            gate=config.ddl.gate,
            auto_approve=config.ddl.auto_approve,
            auto_apply=config.ddl.auto_apply,
        )
        self._identity: tuple[str, str] | None = None  # (system id, database) of the server
        self._last_seq = 0  # this source's last appended record
        self._pending: list[bytes] = []  # encoded changes of the open transaction, not yet appended
        self._pause_requested = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Stream until stopped; reconnect with backoff; raise on what retrying cannot fix."""
        reconnect = self.config.reconnect
        attempt = 0
        try:
            while not self._stop.is_set():
                if self._wait_while_paused():
                    break
                started = time.monotonic()
                try:
                    self._session()
                    attempt = 0
                except (SlotLost, ReplicationSetupError, wal.WalError) as exc:
                    self.status.state, self.status.last_error = "failed", str(exc)
                    log.error("source.failed", extra={"source": self.config.name, "error": str(exc)})
                    raise
                except (ReplicationError, psycopg.Error, OSError) as exc:
                    if self._stop.is_set():
                        break
                    if time.monotonic() - started > reconnect.max_delay:
                        attempt = 0  # a session that lasted a while starts the backoff afresh
                    attempt += 1
                    self.status.state, self.status.last_error = "reconnecting", first_line(exc)
                    self.status.reconnects += 1
                    if reconnect.max_attempts is not None and attempt > reconnect.max_attempts:
                        self.status.state = "failed"
                        raise SourceError(
                            f"source {self.config.name}: gave up after {reconnect.max_attempts} reconnects: "
                            f"{first_line(exc)}"
                        ) from exc
                    delay = _backoff(
                        attempt,
                        reconnect.initial_delay,
                        reconnect.max_delay,
                        reconnect.multiplier,
                        reconnect.jitter,
                    )
                    log.warning(
                        "source.connection.lost",
                        extra={
                            "source": self.config.name,
                            "error": first_line(exc),
                            "attempt": attempt,
                            "retry_in_s": round(delay, 2),
                        },
                    )
                    self._stop.wait(delay)
        finally:
            if self.status.state != "failed":
                self.status.state = "stopped"

    def _wait_while_paused(self) -> bool:
        """Hold off streaming while the flow is paused (DDL gate, operator); True when stopped."""
        self._pause_requested = False
        announced = False
        while (flow := self.state.flow()).state == "paused":
            if not announced:
                self.status.state = "paused"
                log.warning("source.paused", extra={"source": self.config.name, "reason": flow.reason})
                announced = True
            if self._stop.wait(_PAUSE_POLL_S):
                return True
        if announced:
            log.info("source.resumed", extra={"source": self.config.name})
        return self._stop.is_set()

    # -- one session -------------------------------------------------------------------------------

    def _session(self) -> None:
        config = self.config
        with psycopg.connect(
            config.dsn, autocommit=True, connect_timeout=int(config.connect_timeout)
        ) as conn:
            validate_replication(conn, slot=config.slot)
            quiet_ddl(conn)  # publication upkeep below is the agent's own DDL, not the application's
            if config.capture_ddl and install_ddl_capture(conn):
                log.info("source.ddl_capture.installed", extra={"source": config.name})
            if config.ensure_publication:
                for statement in ensure_publication(
                    conn,
                    config.publication,
                    list(config.publication_tables),
                    list(config.publication_schemas),
                ):
                    log.info(
                        "source.publication.changed", extra={"source": config.name, "statement": statement}
                    )
            with ReplicationConnection(
                config.dsn,
                application_name=f"wallaby-agent:{config.name}",
                connect_timeout_s=config.connect_timeout,
            ) as repl:
                system = repl.identify_system()
                identity = (str(system["systemid"]), str(system["dbname"]))
                saved = self.state.source_position(config.name)
                info = self._prepare_slot(conn, repl, identity, saved)
                self._identity = identity
                resume = None
                if self._start_lsn is None:
                    # Never before a `source reset`: older records belong to the old slot.
                    barrier = self.state.source_barrier(config.name)
                    from_seq = max(saved.last_seq if saved is not None else 1, barrier + 1)
                    resume = find_resume_point(self.log, config.name, max(from_seq, self._last_seq))
                start = self._start_lsn if self._start_lsn is not None else 0
                confirmed = info.confirmed_flush_lsn
                if self._start_lsn is not None and confirmed is not None and self._start_lsn < confirmed:
                    raise ReplicationSetupError(
                        f"start LSN {format_lsn(self._start_lsn)} is before slot {config.slot!r}'s confirmed"
                        f" position {format_lsn(confirmed)}: PostgreSQL no longer holds it"
                    )
                self._start_lsn = None  # only the first session starts at an explicit position
                flushed = info.confirmed_flush_lsn or 0
                repl.start(config.slot, start, config.publication, messages=config.messages)
                log.info(
                    "source.streaming",
                    extra={
                        "source": config.name,
                        "slot": config.slot,
                        "from_lsn": format_lsn(start or flushed),
                        "resume_commit_lsn": format_lsn(resume.commit_lsn) if resume else None,
                    },
                )
                self.status.state, self.status.last_error = "streaming", None
                self._stream(conn, repl, Deduplicator(resume), FlushTracker(flushed))

    def _prepare_slot(
        self,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        identity: tuple[str, str],
        saved: SourcePosition | None,
    ) -> SlotInfo:
        config = self.config
        if saved is not None and (saved.system_id, saved.database, saved.slot) != (*identity, config.slot):
            raise ReplicationSetupError(
                f"source {config.name!r} was last used with slot {saved.slot!r} on server {saved.system_id}"
                f" database {saved.database!r}; now slot {config.slot!r} on {identity[0]} {identity[1]!r}."
                f" If that is intended, run `wallaby-agent source reset {config.name}` first"
            )
        info = check_slot(conn, config.slot, database=identity[1])
        if info is None:
            if saved is not None:
                raise SlotLost(
                    f"replication slot {config.slot!r} no longer exists (dropped?); this source had confirmed"
                    f" up to {saved.flushed_lsn}. Creating it again would silently skip every change since."
                    f" To start over from now, run `wallaby-agent source reset {config.name}`"
                )
            if not config.create_slot:
                raise ReplicationSetupError(
                    f"replication slot {config.slot!r} does not exist and create_slot = false"
                )
            if config.snapshot == "initial":
                from .snapshot import mark_initial_snapshot_pending

                mark_initial_snapshot_pending(self)
            consistent, snapshot_name = repl.create_slot(
                config.slot, export_snapshot=config.snapshot == "initial"
            )
            log.info(
                "source.slot.created",
                extra={
                    "source": config.name,
                    "slot": config.slot,
                    "consistent_point": format_lsn(consistent),
                },
            )
            if snapshot_name is not None:
                self._snapshot(snapshot_name, consistent)
            self._save_position(identity, format_lsn(consistent))
            info = slot_info(conn, config.slot)
            assert info is not None
        else:
            from .snapshot import resume_initial_snapshot, unfinished_initial_snapshot

            interrupted = unfinished_initial_snapshot(self.state, config.name)
            if interrupted is not None:
                resume_initial_snapshot(self, interrupted, info.confirmed_flush_lsn or 0)
        self.status.slot = describe_lag(info)
        return info

    def _snapshot(self, snapshot_name: str, consistent_lsn: int) -> None:
        from .snapshot import run_initial_snapshot

        run_initial_snapshot(self, snapshot_name, consistent_lsn)

    def _save_position(self, identity: tuple[str, str], flushed_lsn: str) -> None:
        self.state.save_source_position(
            SourcePosition(
                self.config.name,
                self.config.slot,
                identity[0],
                identity[1],
                self._durable_own_seq(),
                flushed_lsn,
            )
        )

    def _durable_own_seq(self) -> int:
        """This source's last record that is durable (a hint where a restart's scan starts)."""
        return min(self._last_seq, self.log.durable_seq)

    # -- the stream --------------------------------------------------------------------------------

    def _stream(
        self,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        dedupe: Deduplicator,
        tracker: FlushTracker,
    ) -> None:
        config = self.config
        log_ = self.log
        status = self.status
        pending = self._pending
        pending.clear()  # what a failed session had not appended yet, PostgreSQL sends again
        decoder = ChangeDecoder(
            config.name, key_lookup=lambda schema, table: primary_key(conn, schema, table)
        )
        toast = ToastFetcher(conn, config.toast_fetch) if config.toast_fetch != "none" else None
        status_interval = config.status_interval
        heartbeat_interval = config.heartbeat_interval
        now = time.monotonic()
        next_status = now + status_interval
        next_save = now + _SAVE_POSITION_S
        next_slot_check = now + _SLOT_CHECK_S
        last_heard = now
        server_lsn = 0
        received = 0
        in_txn = False
        keep = True  # whether the current transaction's changes are written
        txn_index = 0
        saved_flushed = tracker.flushed_lsn
        last_reported = -1

        while True:
            if self._stop.is_set() or (self._pause_requested and not in_txn):
                break
            message = repl.read(timeout_s=max(0.0, min(next_status, next_slot_check) - time.monotonic()))
            now = time.monotonic()
            reply = False
            if message is not None:
                last_heard = now
                if message.__class__ is XLogData:
                    start = message.wal_start
                    if start > received:
                        received = start
                    data = message.data
                    if data and data[0] in ROW_MESSAGE_TYPES:  # most messages: rows, from the bytes
                        if keep and dedupe.wanted(txn_index):
                            raw = bytes(data)
                            payload = decoder.row_payload(raw, start, txn_index)
                            if payload is None:  # an old row, TOAST, binary values: the long way
                                row = decode_message(raw)
                                change = decoder.row_change(row, start, txn_index)  # type: ignore[arg-type]
                                if toast is not None and change.unchanged:
                                    toast.fill(change)
                                payload = encode_change(change)
                            pending.append(payload)
                            if len(pending) >= _APPEND_BATCH_RECORDS:
                                self._append_pending()
                        txn_index += 1
                    else:
                        item = decode_message(data)
                        cls = item.__class__
                        if cls is Begin:
                            decoder.begin(item)
                            in_txn, txn_index = True, 0
                            keep = dedupe.begin(item.final_lsn)
                        elif cls is Commit:
                            if pending:
                                self._append_pending()
                            tracker.committed(self._last_seq, item.end_lsn)
                            if keep:
                                status.transactions_written += 1
                            else:
                                status.transactions_skipped += 1
                            if item.end_lsn > received:
                                received = item.end_lsn
                            decoder.end()
                            in_txn = False
                        elif cls is Relation:
                            decoder.relation(item)
                            # Destinations create and evolve tables from these column types.
                            record_relation_schema(self.state, config.name, conn, item)
                        elif cls is TypeInfo:
                            decoder.type_info(item)
                        elif cls is Truncate:
                            for change in decoder.truncate_changes(item, start, txn_index):
                                if keep and dedupe.wanted(change.txn_index):
                                    pending.append(encode_change(change))
                            txn_index += len(item.relation_oids)
                        elif cls is Message:
                            self._message(item, decoder, dedupe, tracker, in_txn, keep, txn_index)
                            if in_txn:
                                txn_index += 1
                        elif cls is Origin:
                            pass
                else:
                    assert message.__class__ is Keepalive
                    if message.wal_end > server_lsn:
                        server_lsn = message.wal_end
                    reply = message.reply_requested
            if now >= next_status or reply or now - last_heard >= heartbeat_interval:
                flushed = tracker.advance(log_.durable_seq)
                if not in_txn and server_lsn:
                    flushed = tracker.idle_advance(server_lsn)
                ask = now - last_heard >= heartbeat_interval  # quiet: ask the server where it is
                if flushed != last_reported or reply or ask or now >= next_status:
                    repl.send_status(max(received, flushed), flushed, flushed, reply_requested=ask)
                    last_reported = flushed
                    if ask:
                        last_heard = now
                status.received_lsn, status.flushed_lsn = max(received, flushed), flushed
                next_status = now + status_interval
                if flushed != saved_flushed and now >= next_save:
                    self._save_position(self._identity, format_lsn(flushed))  # type: ignore[arg-type]
                    saved_flushed, next_save = flushed, now + _SAVE_POSITION_S
            if now >= next_slot_check:
                self._check_slot_health(conn)
                if self.state.flow().state == "paused":  # an operator's `flow pause`
                    self._pause_requested = True
                next_slot_check = now + _SLOT_CHECK_S

        if pending:
            self._append_pending()
        self._finish(repl, tracker, received)

    def _append_pending(self) -> None:
        """Hand the queued changes to the log (without waiting for durability), in order."""
        pending = self._pending
        if len(pending) == 1:
            self._last_seq = self.log.append(pending[0], wait=False)
        else:
            self._last_seq = self.log.append_batch(pending, wait=False)[-1]
        self.status.changes_written += len(pending)
        pending.clear()

    def _message(
        self,
        item: Message,
        decoder: ChangeDecoder,
        dedupe: Deduplicator,
        tracker: FlushTracker,
        in_txn: bool,
        keep: bool,
        txn_index: int,
    ) -> None:
        if skip_prefix(item.prefix):
            return
        if in_txn:
            if not (keep and dedupe.wanted(txn_index)):
                return
        elif not dedupe.outside_transaction(item.lsn):
            return
        change = decoder.message_change(item, txn_index if in_txn else 0)
        if not in_txn:
            change.commit_lsn = change.lsn  # its own unit: dedupe and ordering go by its position
        self._pending.append(encode_change(change))
        self._append_pending()  # a DDL gate below needs its sequence number
        if not in_txn:
            tracker.committed(self._last_seq, item.lsn)
        if change.op == "ddl" and self._on_ddl is not None and self._on_ddl(change, self._last_seq):
            self._pause_requested = True

    def _check_slot_health(self, conn: psycopg.Connection) -> None:
        info = check_slot(conn, self.config.slot, database=self._identity[1] if self._identity else "")
        if info is None:
            raise SlotLost(f"replication slot {self.config.slot!r} was dropped while streaming")
        self.status.slot = describe_lag(info)

    def _finish(self, repl: ReplicationConnection, tracker: FlushTracker, received: int) -> None:
        """Stop cleanly: wait for what was appended to be durable, report it, save the position."""
        if self._last_seq:
            self.log.wait_durable(self._last_seq, timeout=_STOP_DURABLE_TIMEOUT_S)
        flushed = tracker.advance(self.log.durable_seq)
        try:
            repl.send_status(max(received, flushed), flushed, flushed)
        except ReplicationError:
            pass  # the server will learn the position on the next connection
        self.status.flushed_lsn = flushed
        if self._identity is not None:
            self._save_position(self._identity, format_lsn(flushed))
        log.info("source.stopped", extra={"source": self.config.name, "flushed_lsn": format_lsn(flushed)})


def _backoff(attempt: int, initial: float, maximum: float, multiplier: float, jitter: float) -> float:
    delay = min(maximum, initial * multiplier ** (attempt - 1))
    return delay * (1 - jitter * random.random())


def _maybe_lsn(text: str | None) -> int | None:
    return None if text is None else parse_lsn(text)
