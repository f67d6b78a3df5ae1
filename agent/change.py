"""The change record every source produces, and its versioned payload encoding.

A change travels through the log as the payload of one record. The payload is two prefix bytes,
`0xC1` (a byte that never occurs in UTF-8 text, so no JSON or text payload can pass for a change)
and a version number, followed by the change as JSON. The byte layout is specified in
docs/format.md, section "Change records".

Version 2, which every writer makes now, is the JSON object a destination receives (the
envelope of docs/formats.md) without its `seq`: every field by name and, when the source knows it,
the `idempotency_key`. A sender turns it into a wire record by appending `seq`, without decoding
and encoding it again. Version 1 (a positional JSON array, smaller but not envelope-shaped) is
still read.

orjson writes and reads the JSON in about a microsecond for a typical row, several times faster
than the standard library's json module. Values inside `key`, `before` and `after` must already
be JSON-native (str, int, float, bool, None, lists and dicts of them);
`agent.sources.postgres.types` produces exactly those.

Floats that are NaN or infinite have no JSON form (orjson would write them as null). The encoder
does not look for them, which would cost a walk over every value: the type converters never make
them, keeping PostgreSQL's "NaN" and "Infinity" as strings instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from .idempotency import row_key

try:  # the same bytes as the dict below, built in C with the key: the capture source's hot path
    from ._wire import row_record as _row_record
except ImportError:
    _row_record = None
_SORTED = orjson.OPT_SORT_KEYS

__all__ = [
    "CHANGE_MAGIC",
    "CHANGE_VERSION",
    "OPS",
    "Change",
    "ChangeFormatError",
    "decode_change",
    "encode_change",
    "encode_row_change",
    "is_change_payload",
    "stored_idempotency_key",
    "stored_key_bytes",
]

OPS = ("insert", "update", "delete", "truncate", "snapshot", "ddl", "message")

CHANGE_MAGIC = 0xC1  # never valid in UTF-8, so never the first byte of a text or JSON payload
CHANGE_VERSION = 2
_PREFIX_V2 = bytes((CHANGE_MAGIC, 2))
# Version 2 field names, in the order a writer puts them (the envelope's order, docs/formats.md).
_V2_FIELDS = (
    "table",
    "op",
    "source",
    "key",
    "before",
    "after",
    "lsn",
    "commit_lsn",
    "xid",
    "commit_ts",
    "unchanged",
    "txn_index",
    "message",
    "idempotency_key",
)
# Every version 2 payload starts so (agent._wire checks the same bytes), and ends with its key:
# `"idempotency_key":"<32 hex digits>"}`, or `...:null}` when the key needs the log sequence.
ENVELOPE_START = b'\xc1\x02{"table":'
_STORED_KEY = re.compile(rb'"idempotency_key":"([0-9a-f]{32})"}\Z')

_OP_CODES = {op: code for code, op in enumerate(OPS)}

# Version 1 field order. The encoder leaves out trailing fields that hold their default, so a
# typical row spends no bytes on `before`, `unchanged` and `message`; the decoder fills them in.
_V1_FIELDS = (
    "op",
    "table",
    "source",
    "lsn",
    "commit_lsn",
    "xid",
    "commit_ts",
    "txn_index",
    "key",
    "after",
    "before",
    "unchanged",
    "message",
)
_V1_DEFAULTS: tuple[Any, ...] = (None, None, None, None, None, None, None, 0, None, None, None, [], None)
_V1_REQUIRED = 3  # op, table, source
_V1_UNCHANGED = _V1_FIELDS.index("unchanged")


class ChangeFormatError(ValueError):
    """A payload or dict that is not a valid change record; the message says what is wrong."""


@dataclass(slots=True)
class Change:
    """One change captured from a source: a row operation, a truncate, a snapshot row, DDL or a message."""

    table: str  # "schema.name"; "" for op=message, and for ddl when no table is known
    op: str  # one of OPS
    source: str  # the source's configured name
    key: dict[str, Any] | None = None  # primary-key / replica-identity columns and values
    before: dict[str, Any] | None = None  # the old row, when PostgreSQL sends it
    after: dict[str, Any] | None = None
    lsn: str | None = None  # "X/Y" position of this change
    commit_lsn: str | None = None  # "X/Y" of its transaction's commit
    xid: int | None = None
    commit_ts: str | None = None  # ISO 8601 UTC, e.g. "2026-11-23T10:00:00.123456Z"
    unchanged: list[str] = field(default_factory=list)  # TOASTed columns PostgreSQL did not send
    txn_index: int = 0  # position within its transaction, 0-based; dedupes after a restart
    message: dict[str, Any] | None = None  # op=message, ddl, truncate: the details

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready; the dicts and list are shared with the change, not copied."""
        return {
            "table": self.table,
            "op": self.op,
            "source": self.source,
            "key": self.key,
            "before": self.before,
            "after": self.after,
            "lsn": self.lsn,
            "commit_lsn": self.commit_lsn,
            "xid": self.xid,
            "commit_ts": self.commit_ts,
            "unchanged": self.unchanged,
            "txn_index": self.txn_index,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        """The change `to_dict` described; ChangeFormatError for missing, unknown or mistyped fields."""
        if not isinstance(data, dict):
            raise ChangeFormatError(f"a change must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_V1_FIELDS))
        if unknown:
            raise ChangeFormatError(f"unknown change field(s): {', '.join(map(str, unknown))}")
        missing = [name for name in ("table", "op", "source") if name not in data]
        if missing:
            raise ChangeFormatError(f"change lacks required field(s): {', '.join(missing)}")
        values = dict(data)
        if values.get("unchanged") is None:
            values["unchanged"] = []
        if values.get("txn_index") is None:
            values["txn_index"] = 0
        change = cls(**values)
        _check(change)
        return change


def is_change_payload(payload: bytes) -> bool:
    """Whether a log payload claims to be a change record (of any version): its first byte is 0xC1."""
    return payload[:1] == b"\xc1"


def encode_change(change: Change) -> bytes:
    """The payload bytes of a change: prefix 0xC1 0x02, then the version 2 JSON object."""
    if change.op not in _OP_CODES:
        raise ChangeFormatError(f"unknown op {change.op!r}; expected one of {', '.join(OPS)}")
    key = change.key
    lsn = change.lsn
    try:
        return _PREFIX_V2 + orjson.dumps(
            {
                "table": change.table,
                "op": change.op,
                "source": change.source,
                "key": key,
                "before": change.before,
                "after": change.after,
                "lsn": lsn,
                "commit_lsn": change.commit_lsn,
                "xid": change.xid,
                "commit_ts": change.commit_ts,
                "unchanged": change.unchanged,
                "txn_index": change.txn_index,
                "message": change.message,
                "idempotency_key": (
                    row_key(change.source, change.table, key, lsn)
                    if key is not None and lsn is not None
                    else None
                ),
            }
        )
    except (TypeError, AttributeError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise ChangeFormatError(f"change of {change.table!r} is not JSON-encodable: {exc}") from None


def encode_row_change(
    op: str,
    table: str,
    source: str,
    lsn: str | None,
    commit_lsn: str | None,
    xid: int | None,
    commit_ts: str | None,
    txn_index: int,
    key: dict[str, Any] | None,
    after: dict[str, Any],
) -> bytes:
    """`encode_change` of a row change that has an `after` row and no before, unchanged or message.

    The same bytes, built in C without the Change (agent._wire.row_record): a capture source's
    per-row path. Where the extension was not built, this is encode_change itself.
    """
    if op not in _OP_CODES:
        raise ChangeFormatError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if _row_record is not None:
        try:
            key_json = None if key is None else orjson.dumps(key)
            # One key column holding no object (the usual primary key) is its own sorted form.
            sorted_key = (
                key_json
                if key_json is None or (len(key) == 1 and key_json.find(b"{", 1) < 0)  # type: ignore[arg-type]
                else orjson.dumps(key, option=_SORTED)
            )
            return _row_record(  # type: ignore[no-any-return]
                op,
                table,
                source,
                lsn,
                commit_lsn,
                xid,
                commit_ts,
                txn_index,
                key_json,
                orjson.dumps(after),
                sorted_key,
            )
        except (TypeError, ValueError) as exc:  # orjson's errors, and the C side's type checks
            raise ChangeFormatError(f"change of {table!r} is not JSON-encodable: {exc}") from None
    return encode_change(
        Change(table, op, source, key, None, after, lsn, commit_lsn, xid, commit_ts, [], txn_index)
    )


def stored_key_bytes(payload: bytes) -> bytes | None:
    """The idempotency key a version 2 payload carries at its end (32 ASCII hex bytes), found
    without decoding the rest; None for any other payload, and for a change whose key depends on
    its log sequence. agent._wire applies the same test."""
    if payload.startswith(ENVELOPE_START):
        match = _STORED_KEY.search(payload, max(0, len(payload) - 53))
        if match is not None:
            return match.group(1)
    return None


def stored_idempotency_key(payload: bytes) -> str | None:
    """`stored_key_bytes` as a str."""
    stored = stored_key_bytes(payload)
    return stored.decode("ascii") if stored is not None else None


def decode_change(payload: bytes) -> Change:
    """The change in a payload made by `encode_change` (any version this code knows)."""
    if len(payload) < 2 or payload[0] != CHANGE_MAGIC:
        raise ChangeFormatError("not a change record: the payload does not start with 0xC1")
    version = payload[1]
    if version == 2:
        return _decode_v2(payload[2:])
    if version == 1:
        return _decode_v1(payload[2:])
    raise ChangeFormatError(f"unsupported change record version {version} (this code reads versions 1 and 2)")


def _decode_v2(body: bytes) -> Change:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ChangeFormatError(f"change record version 2 holds invalid JSON: {exc}") from None
    if type(fields) is not dict:
        raise ChangeFormatError("change record version 2 must be a JSON object")
    try:
        change = Change(
            fields["table"],
            fields["op"],
            fields["source"],
            fields["key"],
            fields["before"],
            fields["after"],
            fields["lsn"],
            fields["commit_lsn"],
            fields["xid"],
            fields["commit_ts"],
            fields["unchanged"],
            fields["txn_index"],
            fields["message"],
        )
    except KeyError as exc:
        raise ChangeFormatError(f"change record version 2 lacks the field {exc.args[0]!r}") from None
    if len(fields) != len(_V2_FIELDS):
        unknown = sorted(set(fields) - set(_V2_FIELDS))
        raise ChangeFormatError(f"change record version 2 has unknown field(s): {', '.join(unknown)}")
    _check(change)
    return change


def _decode_v1(body: bytes) -> Change:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ChangeFormatError(f"change record version 1 holds invalid JSON: {exc}") from None
    if type(fields) is not list or not _V1_REQUIRED <= len(fields) <= len(_V1_FIELDS):
        raise ChangeFormatError(
            f"change record version 1 must be a JSON array of {_V1_REQUIRED} to {len(_V1_FIELDS)} fields"
        )
    count = len(fields)
    if count < len(_V1_FIELDS):
        fields.extend(_V1_DEFAULTS[count:])
        if count <= _V1_UNCHANGED:
            fields[_V1_UNCHANGED] = []  # not the shared default list
    (
        op_code,
        table,
        source,
        lsn,
        commit_lsn,
        xid,
        commit_ts,
        txn_index,
        key,
        after,
        before,
        unchanged,
        message,
    ) = fields
    if type(op_code) is not int or not 0 <= op_code < len(OPS):
        raise ChangeFormatError(f"change record version 1 has an unknown op code {op_code!r}")
    change = Change(
        table,
        OPS[op_code],
        source,
        key,
        before,
        after,
        lsn,
        commit_lsn,
        xid,
        commit_ts,
        unchanged,
        txn_index,
        message,
    )
    _check(change)
    return change


_NONE = type(None)
_FIELD_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("table", (str,)),
    ("source", (str,)),
    ("key", (dict, _NONE)),
    ("before", (dict, _NONE)),
    ("after", (dict, _NONE)),
    ("lsn", (str, _NONE)),
    ("commit_lsn", (str, _NONE)),
    ("xid", (int, _NONE)),
    ("commit_ts", (str, _NONE)),
    ("unchanged", (list,)),
    ("txn_index", (int,)),
    ("message", (dict, _NONE)),
)


def _check(change: Change) -> None:
    """ChangeFormatError naming the first field of a decoded change whose type is wrong."""
    # One expression for the common case: decoding runs once per record read, and a loop over
    # the fields would cost more than parsing the JSON.
    if (
        type(change.table) is str
        and type(change.source) is str
        and (change.key is None or type(change.key) is dict)
        and (change.after is None or type(change.after) is dict)
        and (change.before is None or type(change.before) is dict)
        and (change.lsn is None or type(change.lsn) is str)
        and (change.commit_lsn is None or type(change.commit_lsn) is str)
        and (change.xid is None or type(change.xid) is int)
        and (change.commit_ts is None or type(change.commit_ts) is str)
        and type(change.txn_index) is int
        and (change.message is None or type(change.message) is dict)
        and type(change.unchanged) is list
        and (not change.unchanged or all(type(column) is str for column in change.unchanged))
        and change.op in _OP_CODES
    ):
        return
    if change.op not in _OP_CODES:
        raise ChangeFormatError(f"unknown op {change.op!r}; expected one of {', '.join(OPS)}")
    for name, expected in _FIELD_TYPES:
        value = getattr(change, name)
        if type(value) not in expected:
            raise ChangeFormatError(f"change field {name!r} has the wrong type: {type(value).__name__}")
    raise ChangeFormatError("change field 'unchanged' must list column names (strings)")
