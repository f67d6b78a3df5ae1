"""From decoded pgoutput messages to change records.

Keeps what the stream taught it (relations and their columns, custom types) and the current
transaction's context, and turns each row message into a `Change` with typed values. This is the
per-row hot path: converters are chosen once per relation, not per value.
"""

from __future__ import annotations

import base64
import datetime
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agent.change import Change, encode_row_change

from .lsn import format_lsn
from .pgoutput import (
    UNCHANGED,
    Begin,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    decode_text_row,
)
from .types import value_converter

# Logical messages with these prefixes are the agent's own, not user messages.
DDL_PREFIX = "wallaby.ddl"
HEARTBEAT_PREFIX = "wallaby.heartbeat"

_INSERT = ord("I")

# Given (schema, table), the primary-key columns, used when the replica identity is FULL (then
# pgoutput marks every column as part of the key).
KeyLookup = Callable[[str, str], list[str] | None]


@dataclass(frozen=True, slots=True)
class RelationShape:
    """One table as the stream last described it."""

    table: str
    names: tuple[str, ...]
    converters: tuple[Callable[[str], Any] | None, ...]
    key_names: tuple[str, ...]
    columns: tuple[tuple[str, Callable[[str], Any] | None], ...]  # names and converters, paired


@dataclass(slots=True)
class TransactionContext:
    commit_lsn: str
    xid: int
    commit_ts: str
    final_lsn: int


def iso_utc_from_us(unix_us: int) -> str:
    """`2026-11-23T10:00:00.123456Z` from microseconds since the UNIX epoch."""
    seconds, micros = divmod(unix_us, 1_000_000)
    return f"{_iso_utc_second(seconds)}.{micros:06d}Z"


# Once per transaction, and most transactions commit in a second that the one before did: the
# date and time of day are formatted once per second, not once per commit.
@functools.lru_cache(maxsize=16)
def _iso_utc_second(unix_seconds: int) -> str:
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=unix_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


class ChangeDecoder:
    """Builds change records for one source from its pgoutput stream."""

    def __init__(self, source: str, *, key_lookup: KeyLookup | None = None) -> None:
        self.source = source
        self._key_lookup = key_lookup
        self._relations: dict[int, RelationShape] = {}
        self._type_names: dict[int, str] = {}
        self.txn: TransactionContext | None = None

    def relation(self, message: Relation) -> None:
        names = tuple(column.name for column in message.columns)
        converters = tuple(
            value_converter(column.type_oid, self._type_names.get(column.type_oid))
            for column in message.columns
        )
        key_names = tuple(column.name for column in message.columns if column.key)
        if message.replica_identity == "f" and self._key_lookup is not None:
            primary = self._key_lookup(message.namespace, message.name)
            if primary:
                key_names = tuple(primary)
        self._relations[message.oid] = RelationShape(
            message.table, names, converters, key_names, tuple(zip(names, converters, strict=True))
        )

    def type_info(self, message: TypeInfo) -> None:
        self._type_names[message.oid] = message.name

    def table_of(self, relation_oid: int) -> str:
        return self._shape(relation_oid).table

    def begin(self, message: Begin) -> TransactionContext:
        self.txn = TransactionContext(
            format_lsn(message.final_lsn),
            message.xid,
            iso_utc_from_us(message.commit_ts_us),
            message.final_lsn,
        )
        return self.txn

    def end(self) -> None:
        self.txn = None

    def _shape(self, relation_oid: int) -> RelationShape:
        try:
            return self._relations[relation_oid]
        except KeyError:
            from .errors import ProtocolError

            raise ProtocolError(
                f"row for relation {relation_oid} arrived before its Relation message"
            ) from None

    def _change(self, table: str, op: str, lsn: int, txn_index: int) -> Change:
        txn = self.txn
        return Change(
            table=table,
            op=op,
            source=self.source,
            lsn=format_lsn(lsn),
            commit_lsn=txn.commit_lsn if txn else None,
            xid=txn.xid if txn else None,
            commit_ts=txn.commit_ts if txn else None,
            txn_index=txn_index,
        )

    def row_change(self, message: Insert | Update | Delete, lsn: int, txn_index: int) -> Change:
        shape = self._shape(message.relation_oid)
        if type(message) is Insert:
            change = self._change(shape.table, "insert", lsn, txn_index)
            change.after = _row(shape, message.new, change.unchanged)
            change.key = _key(shape, change.after)
        elif type(message) is Update:
            change = self._change(shape.table, "update", lsn, txn_index)
            change.after = _row(shape, message.new, change.unchanged)
            if message.old is not None:
                change.before = _row(shape, message.old, None, key_only=message.old_kind == "K")
            change.key = _key(shape, change.after)
        else:
            change = self._change(shape.table, "delete", lsn, txn_index)
            change.before = _row(shape, message.old, None, key_only=message.old_kind == "K")
            change.key = _key(shape, change.before)
        return change

    def row_payload(self, raw: bytes, lsn: int, txn_index: int) -> bytes | None:
        """The encoded change of an Insert or Update message still in bytes, when its row is the
        common kind (see `decode_text_row`); None for any other message or row.

        The bytes are those `encode_change(row_change(decode_message(raw), ...))` makes, without
        the message, the tuple and the Change in between: some 40% less CPU per row (see the
        hot-path rows of docs/benchmarks.md). On None, take that longer way, which also says what
        is wrong with a message that is.
        """
        shape = self._relations.get(int.from_bytes(raw[1:5]))
        if shape is None:
            return None
        after = decode_text_row(raw, shape.columns)
        if after is None:
            return None
        txn = self.txn
        return encode_row_change(
            "insert" if raw[0] == _INSERT else "update",
            shape.table,
            self.source,
            format_lsn(lsn),
            txn.commit_lsn if txn else None,
            txn.xid if txn else None,
            txn.commit_ts if txn else None,
            txn_index,
            _key(shape, after),
            after,
        )

    def truncate_changes(self, message: Truncate, lsn: int, first_index: int) -> list[Change]:
        changes = []
        for offset, oid in enumerate(message.relation_oids):
            change = self._change(self._shape(oid).table, "truncate", lsn, first_index + offset)
            change.message = {
                "cascade": bool(message.options & 1),
                "restart_identity": bool(message.options & 2),
            }
            changes.append(change)
        return changes

    def message_change(self, message: Message, txn_index: int) -> Change:
        """A logical message: op=ddl for the agent's DDL trigger, op=message otherwise."""
        if message.prefix == DDL_PREFIX:
            change = self._change("", "ddl", message.lsn, txn_index)
            try:
                details = orjson.loads(message.content)
            except orjson.JSONDecodeError:
                details = {"statement": message.content.decode("utf-8", "replace")}
            change.table = details.pop("table", "") or ""
            change.message = details
            return change
        change = self._change("", "message", message.lsn, txn_index)
        try:
            content: Any = message.content.decode("utf-8")
        except UnicodeDecodeError:
            content = {"base64": base64.b64encode(message.content).decode("ascii")}
        change.message = {
            "prefix": message.prefix,
            "content": content,
            "transactional": message.transactional,
        }
        return change


def _row(
    shape: RelationShape, values: tuple, unchanged: list[str] | None, *, key_only: bool = False
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    key_names = shape.key_names
    for name, convert, value in zip(shape.names, shape.converters, values, strict=False):
        if key_only and name not in key_names:
            continue
        if value is None or (convert is None and value.__class__ is str):
            row[name] = value
        elif value is UNCHANGED:
            if unchanged is not None:
                unchanged.append(name)
        elif value.__class__ is str:
            row[name] = convert(value)  # type: ignore[misc]
        else:  # binary format values: kept as base64
            row[name] = base64.b64encode(value).decode("ascii")
    return row


def _key(shape: RelationShape, row: dict[str, Any] | None) -> dict[str, Any] | None:
    key_names = shape.key_names
    if not key_names or row is None:
        return None
    if len(key_names) == 1:  # the usual kind, once per row: no comprehension
        name = key_names[0]
        return {name: row.get(name)}
    return {name: row.get(name) for name in key_names}


def skip_prefix(prefix: str) -> bool:
    """Messages the agent writes for itself and never records."""
    return prefix == HEARTBEAT_PREFIX
