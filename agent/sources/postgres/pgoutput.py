"""A decoder of pgoutput protocol version 1: the payload of one XLogData message becomes one object.

The byte layouts are PostgreSQL's "Logical Replication Message Formats"; integers are big-endian,
strings are NUL-terminated in the client encoding (the replication connection asks for UTF-8).

    B  Begin     final_lsn:u64 commit_ts:i64 xid:u32
    C  Commit    flags:u8 commit_lsn:u64 end_lsn:u64 commit_ts:i64
    O  Origin    commit_lsn:u64 name:str
    R  Relation  oid:u32 namespace:str name:str replica_identity:u8 ncols:i16
                 ncols x (flags:u8 name:str type_oid:u32 type_modifier:i32)
    Y  Type      oid:u32 namespace:str name:str
    I  Insert    oid:u32 'N' tuple
    U  Update    oid:u32 ['K' tuple | 'O' tuple] 'N' tuple
    D  Delete    oid:u32 ('K' | 'O') tuple
    T  Truncate  nrels:u32 options:u8 nrels x oid:u32
    M  Message   flags:u8 lsn:u64 prefix:str length:u32 content:bytes[length]

    tuple        ncols:i16, then per column one of
                 'n' (NULL) | 'u' (unchanged TOASTed value) | 't' len:u32 text | 'b' len:u32 bytes

Tuple values decode to None, UNCHANGED, str and bytes. Anything short, trailing or unknown raises
ProtocolError; Insert, Update and Delete are the hot path and avoid per-byte work.

`decode_text_row` is the hottest path of all: the new row of an Insert or Update straight into a
{name: value} dict, for the common case only (text and NULL values), and None for anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .errors import ProtocolError
from .lsn import PG_EPOCH_OFFSET_US


class _Unchanged:
    """The value of a TOASTed column an update left alone: PostgreSQL does not send it again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"  # pickle and copy resolve the module-level name: the singleton stays single


UNCHANGED: Final = _Unchanged()

Value = str | bytes | None | _Unchanged


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]

    @property
    def table(self) -> str:
        """ "namespace.name", unquoted."""
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old: tuple[Value, ...] | None
    old_kind: str | None  # 'K': replica identity columns only (others None), 'O': the whole old row
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[Value, ...]
    old_kind: str


TRUNCATE_CASCADE = 1
TRUNCATE_RESTART_IDENTITY = 2


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgoutputMessage = (
    Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | Message
)

_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
_U32_U8 = struct.Struct(">IB")
_COLUMN_TAIL = struct.Struct(">Ii")
_MESSAGE_HEAD = struct.Struct(">BQ")

_N, _K, _O = ord("N"), ord("K"), ord("O")
_NULL, _TEXT, _UNCHANGED, _BINARY = ord("n"), ord("t"), ord("u"), ord("b")
_NEW_ROW_ONLY = (ord("I"), ord("U"))  # message types whose new row may come first, at offset 6

# The type bytes of Insert, Update and Delete, for a caller that dispatches before decoding.
ROW_MESSAGE_TYPES: Final = frozenset(b"IUD")


def decode_message(data: bytes | memoryview) -> PgoutputMessage:
    """Decode one pgoutput v1 message; raise ProtocolError when the bytes are not one."""
    # One copy into bytes pays for itself: bytes slice and search faster than a memoryview does.
    raw = data if data.__class__ is bytes else bytes(data)
    if not raw:
        raise ProtocolError("empty message")
    kind = raw[0]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown pgoutput message type {chr(kind)!r} (0x{kind:02x})")
    try:
        return decoder(raw)
    except ProtocolError as error:
        if error.message_type is None:
            raise ProtocolError(error.reason, message_type=chr(kind), offset=error.offset) from None
        raise
    except (struct.error, IndexError, ValueError) as error:
        # struct.error: shorter than its fixed fields; ValueError: a string without NUL or bad UTF-8.
        raise ProtocolError(f"truncated or garbled message ({error})", message_type=chr(kind)) from None


def _tuple(raw: bytes, offset: int) -> tuple[tuple[Value, ...], int]:
    """The TupleData starting at `offset`, and the offset after it."""
    (count,) = _I16.unpack_from(raw, offset)
    offset += 2
    values: list[Value] = []
    append = values.append
    unpack_length = _U32.unpack_from
    for _ in range(count):
        kind = raw[offset]
        if kind == _TEXT:
            start = offset + 5
            offset = start + unpack_length(raw, offset + 1)[0]
            append(raw[start:offset].decode())  # UTF-8, the fastest spelling of it
        elif kind == _NULL:
            append(None)
            offset += 1
        elif kind == _UNCHANGED:
            append(UNCHANGED)
            offset += 1
        elif kind == _BINARY:
            start = offset + 5
            offset = start + unpack_length(raw, offset + 1)[0]
            append(raw[start:offset])
        else:
            raise ProtocolError(f"unknown column kind {chr(kind)!r}", offset=offset)
    # A slice past the end is silently short. Lengths are unsigned, so offsets only grow and one
    # check after the loop catches any value that overran (cheaper than a check per column).
    if offset > len(raw):
        raise ProtocolError(f"column values overrun the message by {offset - len(raw)} bytes")
    return tuple(values), offset


def decode_text_row(
    raw: bytes, columns: tuple[tuple[str, Callable[[str], Any] | None], ...]
) -> dict[str, Any] | None:
    """The new row of an Insert, or of an Update without an old row, as {name: value}; None unless
    it is the common kind.

    Common means: exactly one text or NULL value per entry of `columns` (name, converter or None
    to keep the text), ending the message. Anything else (another message, an old row, unchanged
    TOAST, binary values, another column count, bytes that do not parse, a converter that fails)
    gives None, and `decode_message` then decodes the message or says what is wrong with it. The
    TupleData layout is the one `_tuple` reads; this copy of it builds the row as it goes, without
    the message object and the tuple in between (docs/benchmarks.md measures the difference).
    """
    try:
        kind = raw[0]
        if kind not in _NEW_ROW_ONLY or raw[5] != _N:
            return None
        (count,) = _I16.unpack_from(raw, 6)
        if count != len(columns):
            return None
        offset = 8
        row: dict[str, Any] = {}
        unpack_length = _U32.unpack_from
        for name, convert in columns:
            kind = raw[offset]
            if kind == _TEXT:
                start = offset + 5
                offset = start + unpack_length(raw, offset + 1)[0]
                text = raw[start:offset].decode()
                row[name] = text if convert is None else convert(text)
            elif kind == _NULL:
                row[name] = None
                offset += 1
            else:
                return None
    except Exception:  # whatever went wrong, decode_message (or the converter again) says it properly
        return None
    return row if offset == len(raw) else None


def _end(raw: bytes, offset: int) -> None:
    if offset != len(raw):
        raise ProtocolError(f"{len(raw) - offset} bytes after the end of the message", offset=offset)


def _expect(raw: bytes, offset: int, *allowed: int) -> int:
    kind = raw[offset]
    if kind not in allowed:
        names = " or ".join(repr(chr(byte)) for byte in allowed)
        raise ProtocolError(f"expected {names}, found {chr(kind)!r}", offset=offset)
    return kind


def _string(raw: bytes, offset: int) -> tuple[str, int]:
    """The NUL-terminated string at `offset`, and the offset after its NUL."""
    end = raw.index(b"\0", offset)  # ValueError when unterminated
    return raw[offset:end].decode("utf-8"), end + 1


def _insert(raw: bytes) -> Insert:
    (oid,) = _U32.unpack_from(raw, 1)
    if raw[5] != _N:
        _expect(raw, 5, _N)
    new, offset = _tuple(raw, 6)
    if offset != len(raw):
        _end(raw, offset)
    return Insert(oid, new)


def _update(raw: bytes) -> Update:
    (oid,) = _U32.unpack_from(raw, 1)
    kind = _expect(raw, 5, _N, _K, _O)
    old = old_kind = None
    offset = 6
    if kind != _N:
        old, offset = _tuple(raw, offset)
        old_kind = chr(kind)
        _expect(raw, offset, _N)
        offset += 1
    new, offset = _tuple(raw, offset)
    _end(raw, offset)
    return Update(oid, old, old_kind, new)


def _delete(raw: bytes) -> Delete:
    (oid,) = _U32.unpack_from(raw, 1)
    kind = _expect(raw, 5, _K, _O)
    old, offset = _tuple(raw, 6)
    _end(raw, offset)
    return Delete(oid, old, chr(kind))


def _begin(raw: bytes) -> Begin:
    final_lsn, commit_ts, xid = _BEGIN.unpack_from(raw, 1)
    _end(raw, 1 + _BEGIN.size)
    return Begin(final_lsn, commit_ts + PG_EPOCH_OFFSET_US, xid)


def _commit(raw: bytes) -> Commit:
    flags, commit_lsn, end_lsn, commit_ts = _COMMIT.unpack_from(raw, 1)
    _end(raw, 1 + _COMMIT.size)
    return Commit(flags, commit_lsn, end_lsn, commit_ts + PG_EPOCH_OFFSET_US)


def _origin(raw: bytes) -> Origin:
    (commit_lsn,) = _U64.unpack_from(raw, 1)
    name, offset = _string(raw, 9)
    _end(raw, offset)
    return Origin(commit_lsn, name)


def _relation(raw: bytes) -> Relation:
    (oid,) = _U32.unpack_from(raw, 1)
    namespace, offset = _string(raw, 5)
    name, offset = _string(raw, offset)
    identity = chr(raw[offset])
    (count,) = _I16.unpack_from(raw, offset + 1)
    offset += 3
    columns = []
    for _ in range(count):
        flags = raw[offset]
        column_name, offset = _string(raw, offset + 1)
        type_oid, type_modifier = _COLUMN_TAIL.unpack_from(raw, offset)
        offset += _COLUMN_TAIL.size
        columns.append(Column(bool(flags & 1), column_name, type_oid, type_modifier))
    _end(raw, offset)
    return Relation(oid, namespace, name, identity, tuple(columns))


def _type(raw: bytes) -> TypeInfo:
    (oid,) = _U32.unpack_from(raw, 1)
    namespace, offset = _string(raw, 5)
    name, offset = _string(raw, offset)
    _end(raw, offset)
    return TypeInfo(oid, namespace, name)


def _truncate(raw: bytes) -> Truncate:
    count, options = _U32_U8.unpack_from(raw, 1)
    offset = 1 + _U32_U8.size
    if len(raw) != offset + 4 * count:
        raise ProtocolError(
            f"{count} relations need {4 * count} bytes, found {len(raw) - offset}", offset=offset
        )
    return Truncate(options, struct.unpack_from(f">{count}I", raw, offset))


def _message(raw: bytes) -> Message:
    flags, lsn = _MESSAGE_HEAD.unpack_from(raw, 1)
    prefix, offset = _string(raw, 1 + _MESSAGE_HEAD.size)
    (length,) = _U32.unpack_from(raw, offset)
    offset += 4
    if offset + length != len(raw):
        raise ProtocolError(f"content of {length} bytes, found {len(raw) - offset}", offset=offset - 4)
    return Message(bool(flags & 1), lsn, prefix, raw[offset:])


_DECODERS = {
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("T"): _truncate,
    ord("M"): _message,
}
