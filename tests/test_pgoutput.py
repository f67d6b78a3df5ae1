"""pgoutput v1 decoding: hand-built messages for every type, malformed input, and a real server's stream."""

from __future__ import annotations

import copy
import pickle
import struct
import time

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.postgres.errors import ProtocolError
from agent.sources.postgres.lsn import PG_EPOCH_OFFSET_US
from agent.sources.postgres.pgoutput import (
    TRUNCATE_CASCADE,
    TRUNCATE_RESTART_IDENTITY,
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    decode_message,
)
from agent.sources.postgres.replication import Keepalive, ReplicationConnection, XLogData

# Builders that follow "Logical Replication Message Formats" in PostgreSQL's documentation.


def text(value: str) -> bytes:
    encoded = value.encode()
    return b"t" + struct.pack(">i", len(encoded)) + encoded


def binary(value: bytes) -> bytes:
    return b"b" + struct.pack(">i", len(value)) + value


NULL, TOASTED = b"n", b"u"


def tuple_data(*columns: bytes) -> bytes:
    return struct.pack(">h", len(columns)) + b"".join(columns)


def cstring(value: str) -> bytes:
    return value.encode() + b"\0"


# 2024-01-02 03:04:05.678901 UTC in microseconds since 2000-01-01.
COMMIT_TS_PG = 757_479_845_678_901
COMMIT_TS_UNIX = 1_704_164_645_678_901

BEGIN = b"B" + struct.pack(">QqI", 0x16_B374D848, COMMIT_TS_PG, 7421)
COMMIT = b"C" + struct.pack(">BQQq", 0, 0x16_B374D848, 0x16_B374D878, COMMIT_TS_PG)
ORIGIN = b"O" + struct.pack(">Q", 0x16_B374D848) + cstring("node_a")
RELATION = (
    b"R"
    + struct.pack(">I", 16385)
    + cstring("public")
    + cstring("orders")
    + b"d"
    + struct.pack(">h", 2)
    + b"\x01" + cstring("id") + struct.pack(">Ii", 23, -1)
    + b"\x00" + cstring("price") + struct.pack(">Ii", 1700, 655366)
)  # fmt: skip
TYPE = b"Y" + struct.pack(">I", 16390) + cstring("public") + cstring("mood")
INSERT = b"I" + struct.pack(">I", 16385) + b"N" + tuple_data(text("1"), NULL, TOASTED, binary(b"\x00\xff"))
UPDATE_PLAIN = b"U" + struct.pack(">I", 16385) + b"N" + tuple_data(text("1"), text("9.50"))
UPDATE_KEY = (
    b"U"
    + struct.pack(">I", 16385)
    + b"K"
    + tuple_data(text("1"), NULL)
    + b"N"
    + tuple_data(text("2"), TOASTED)
)
UPDATE_OLD = (
    b"U"
    + struct.pack(">I", 16385)
    + b"O"
    + tuple_data(text("1"), text("9"))
    + b"N"
    + tuple_data(text("1"), text("10"))
)
DELETE_KEY = b"D" + struct.pack(">I", 16385) + b"K" + tuple_data(text("1"), NULL)
DELETE_OLD = b"D" + struct.pack(">I", 16385) + b"O" + tuple_data(text("1"), text("9"))
TRUNCATE = b"T" + struct.pack(">IB", 2, 3) + struct.pack(">II", 16385, 16399)
MESSAGE = b"M" + struct.pack(">BQ", 1, 0x16_B374D848) + cstring("wallaby") + struct.pack(">I", 3) + b"a\x00b"

SAMPLES = {
    "begin": (BEGIN, Begin(0x16_B374D848, COMMIT_TS_UNIX, 7421)),
    "commit": (COMMIT, Commit(0, 0x16_B374D848, 0x16_B374D878, COMMIT_TS_UNIX)),
    "origin": (ORIGIN, Origin(0x16_B374D848, "node_a")),
    "relation": (
        RELATION,
        Relation(
            16385, "public", "orders", "d", (Column(True, "id", 23, -1), Column(False, "price", 1700, 655366))
        ),
    ),
    "type": (TYPE, TypeInfo(16390, "public", "mood")),
    "insert": (INSERT, Insert(16385, ("1", None, UNCHANGED, b"\x00\xff"))),
    "update": (UPDATE_PLAIN, Update(16385, None, None, ("1", "9.50"))),
    "update-key": (UPDATE_KEY, Update(16385, ("1", None), "K", ("2", UNCHANGED))),
    "update-old": (UPDATE_OLD, Update(16385, ("1", "9"), "O", ("1", "10"))),
    "delete-key": (DELETE_KEY, Delete(16385, ("1", None), "K")),
    "delete-old": (DELETE_OLD, Delete(16385, ("1", "9"), "O")),
    "truncate": (TRUNCATE, Truncate(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY, (16385, 16399))),
    "message": (MESSAGE, Message(True, 0x16_B374D848, "wallaby", b"a\x00b")),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_decodes_each_message_type(name: str) -> None:
    raw, expected = SAMPLES[name]
    assert decode_message(raw) == expected
    # XLogData hands over a slice of a larger buffer: decoding must not depend on offset 0.
    assert decode_message(memoryview(b"w" + bytes(24) + raw)[25:]) == expected


def test_commit_timestamp_is_converted_to_the_unix_epoch() -> None:
    assert COMMIT_TS_UNIX - COMMIT_TS_PG == PG_EPOCH_OFFSET_US == 946_684_800 * 1_000_000
    assert decode_message(BEGIN).commit_ts_us == COMMIT_TS_UNIX


def test_text_values_keep_non_ascii_characters() -> None:
    raw = b"I" + struct.pack(">I", 1) + b"N" + tuple_data(text("größe"), text("日本"), binary(b"\xc3"))
    assert decode_message(raw) == Insert(1, ("größe", "日本", b"\xc3"))


def test_relation_names_its_table_and_key_columns() -> None:
    relation = decode_message(RELATION)
    assert isinstance(relation, Relation)
    assert relation.table == "public.orders"
    assert [column.key for column in relation.columns] == [True, False]


def test_unchanged_is_one_singleton_through_copy_and_pickle() -> None:
    assert repr(UNCHANGED) == "UNCHANGED"
    assert copy.deepcopy(UNCHANGED) is UNCHANGED
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED


def test_messages_are_frozen() -> None:
    insert = decode_message(INSERT)
    with pytest.raises(AttributeError):
        insert.relation_oid = 1  # type: ignore[misc]


# Malformed input: always ProtocolError, never IndexError or struct.error.


@pytest.mark.parametrize("name", SAMPLES)
def test_every_truncation_is_a_protocol_error(name: str) -> None:
    raw, _ = SAMPLES[name]
    for length in range(len(raw)):
        with pytest.raises(ProtocolError):
            decode_message(raw[:length])


@pytest.mark.parametrize("name", SAMPLES)
def test_trailing_bytes_are_a_protocol_error(name: str) -> None:
    raw, _ = SAMPLES[name]
    # Messages with a length field (Truncate, Message) see it as a length mismatch instead.
    with pytest.raises(ProtocolError, match=r"after the end|found"):
        decode_message(raw + b"\0")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"Z\x00\x00", "unknown pgoutput message type 'Z'"),
        (b"S" + bytes(8), "unknown pgoutput message type 'S'"),  # protocol 2's stream start
        (b"I" + struct.pack(">I", 1) + b"X" + tuple_data(text("1")), "expected 'N', found 'X'"),
        (b"D" + struct.pack(">I", 1) + b"N" + tuple_data(text("1")), "expected 'K' or 'O', found 'N'"),
        (
            b"U" + struct.pack(">I", 1) + b"K" + tuple_data(text("1")) + b"K" + tuple_data(text("2")),
            "expected 'N'",
        ),
        (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"x"), "unknown column kind 'x'"),
        (
            b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", -1),
            "overrun the message by 4294967295 bytes",
        ),
        (
            b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 9) + b"abc",
            "overrun the message by 6 bytes",
        ),
        (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"t" + struct.pack(">i", 1) + b"\xff"), "garbled"),
        (b"T" + struct.pack(">IB", 3, 0) + struct.pack(">I", 1), "3 relations need 12 bytes"),
        (b"M" + struct.pack(">BQ", 0, 1) + cstring("p") + struct.pack(">I", 5) + b"ab", "content of 5 bytes"),
        (b"Y" + struct.pack(">I", 1) + b"public\0mood", "garbled"),  # name without its NUL
    ],
)
def test_malformed_messages_name_the_problem(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_message(raw)


def test_protocol_error_says_where() -> None:
    raw = b"I" + struct.pack(">I", 1) + b"N" + tuple_data(text("1"), b"x")
    with pytest.raises(ProtocolError) as caught:
        decode_message(raw)
    assert caught.value.message_type == "I"
    assert caught.value.offset == 14  # 'I', oid:4, 'N', ncols:2, then 't', length:4, "1"
    assert str(caught.value) == "'I' message at byte 14: unknown column kind 'x'"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from(sorted(SAMPLES)), st.integers(min_value=0, max_value=80))
def test_garbage_decodes_or_raises_protocol_error(garbage: bytes, name: str, position: int) -> None:
    for raw in (garbage, bytes(SAMPLES[name][0][:1]) + garbage, _splice(SAMPLES[name][0], position, garbage)):
        try:
            decode_message(raw)
        except ProtocolError:
            pass


def _splice(raw: bytes, position: int, garbage: bytes) -> bytes:
    position = min(position, len(raw))
    return raw[:position] + garbage[:4] + raw[position + len(garbage[:4]) :]


# Against a real server: every kind of change, streamed through ReplicationConnection.

LARGE_VALUE_SQL = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) AS i)"  # ~12 kB, TOASTed


def _stream_until_end_marker(
    dsn: str, slot: str, publication: str, timeout_s: float = 15.0
) -> list[tuple[int, object]]:
    """(wal_start, decoded message) pairs up to the Commit after a Message whose content is b"end"."""
    decoded: list[tuple[int, object]] = []
    seen_end = False
    deadline = time.monotonic() + timeout_s
    with ReplicationConnection(dsn) as repl:
        repl.start(slot, 0, publication)
        while time.monotonic() < deadline:
            message = repl.read(timeout_s=0.5)
            if isinstance(message, Keepalive) and message.reply_requested:
                repl.send_status(message.wal_end, 0, 0)
            if not isinstance(message, XLogData):
                continue
            item = decode_message(message.data)
            decoded.append((message.wal_start, item))
            if isinstance(item, Message) and item.content == b"end":
                seen_end = True
            elif isinstance(item, Commit) and seen_end:
                return decoded
    raise AssertionError(f"no end marker within {timeout_s} s; decoded {decoded}")


def test_real_stream_decodes_every_kind_of_change(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');"
            "CREATE TABLE items (id int PRIMARY KEY, name text, feeling mood, big text, note text, blob bytea);"
            "CREATE TABLE audit (id int, detail text);"
            "ALTER TABLE audit REPLICA IDENTITY FULL;"
            "CREATE PUBLICATION everything FOR ALL TABLES"
        )
        with ReplicationConnection(pg_dsn) as repl:
            repl.create_slot("decode_all")
        started_us = time.time_ns() // 1000
        run = conn.execute
        run(f"INSERT INTO items VALUES (1, 'one', 'happy', {LARGE_VALUE_SQL}, NULL, '\\x00ff')")
        run("UPDATE items SET name = 'uno' WHERE id = 1")  # big stays TOASTed and unchanged
        run("UPDATE items SET id = 10 WHERE id = 1")  # a key change sends the old key
        run("INSERT INTO audit VALUES (1, 'created'); UPDATE audit SET detail = 'changed'; DELETE FROM audit")
        run("DELETE FROM items WHERE id = 10")
        run("SELECT pg_logical_emit_message(false, 'wallaby', 'outside')")
        run("INSERT INTO items (id) VALUES (2)")
        run("TRUNCATE items, audit RESTART IDENTITY CASCADE")
        run("BEGIN; SELECT pg_logical_emit_message(true, 'wallaby', 'end'); COMMIT")
        items_oid, audit_oid, mood_oid = run(
            "SELECT 'items'::regclass::oid, 'audit'::regclass::oid, 'mood'::regtype::oid"
        ).fetchone()

    stream = _stream_until_end_marker(pg_dsn, "decode_all", "everything")
    messages = [item for _, item in stream]
    kinds = [type(item).__name__ for item in messages]
    assert kinds == [
        *("Begin", "TypeInfo", "Relation", "Insert", "Commit"),
        *("Begin", "Update", "Commit"),
        *("Begin", "Update", "Commit"),
        *("Begin", "Relation", "Insert", "Update", "Delete", "Commit"),
        *("Begin", "Delete", "Commit"),
        "Message",  # non-transactional: outside any Begin/Commit
        *("Begin", "Insert", "Commit"),
        *("Begin", "TypeInfo", "Relation", "Relation", "Truncate", "Commit"),  # TRUNCATE resends schemas
        *("Begin", "Message", "Commit"),
    ]
    begin, type_info, items = messages[0], messages[1], messages[2]
    assert begin.commit_ts_us == pytest.approx(started_us, abs=60_000_000)
    assert type_info == TypeInfo(mood_oid, "public", "mood")
    assert items.oid == items_oid and items.table == "public.items" and items.replica_identity == "d"
    assert [(c.name, c.key, c.type_oid) for c in items.columns] == [
        ("id", True, 23),
        ("name", False, 25),
        ("feeling", False, mood_oid),
        ("big", False, 25),
        ("note", False, 25),
        ("blob", False, 17),
    ]
    inserted = messages[3]
    assert inserted.relation_oid == items_oid
    assert inserted.new[:3] == ("1", "one", "happy")
    assert len(inserted.new[3]) == 12_800 and inserted.new[4] is None and inserted.new[5] == "\\x00ff"
    assert messages[6] == Update(items_oid, None, None, ("1", "uno", "happy", UNCHANGED, None, "\\x00ff"))
    # 'K': the replica identity's columns, every other column None.
    assert messages[9] == Update(items_oid, ("1", None, None, None, None, None), "K", ("10", "uno", "happy", UNCHANGED, None, "\\x00ff"))  # fmt: skip
    assert messages[12].replica_identity == "f"
    assert messages[13:16] == [
        Insert(audit_oid, ("1", "created")),
        Update(audit_oid, ("1", "created"), "O", ("1", "changed")),
        Delete(audit_oid, ("1", "changed"), "O"),
    ]
    assert messages[18] == Delete(items_oid, ("10", None, None, None, None, None), "K")
    outside = messages[20]
    assert outside.transactional is False and (outside.prefix, outside.content) == ("wallaby", b"outside")
    assert messages[22] == Insert(items_oid, ("2", None, None, None, None, None))
    assert messages[28] == Truncate(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY, (items_oid, audit_oid))
    end = messages[31]
    assert end.transactional is True and end.prefix == "wallaby"
    commits = [item for item in messages if isinstance(item, Commit)]
    begins = [item for item in messages if isinstance(item, Begin)]
    assert [b.final_lsn for b in begins] == [c.commit_lsn for c in commits]


def test_wal_start_of_each_message_type(pg_dsn: str) -> None:
    """What XLogData.wal_start holds, which the source uses as a change's position (PostgreSQL 15)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR ALL TABLES")
        with ReplicationConnection(pg_dsn) as repl:
            repl.create_slot("positions")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        with conn.cursor().copy("COPY t FROM STDIN") as rows:
            rows.write_row((4, "d"))
            rows.write_row((5, "e"))
        conn.execute(
            "BEGIN; SELECT pg_logical_emit_message(true, 'wallaby', 'm'); INSERT INTO t VALUES (6, 'f'); COMMIT"
        )
        conn.execute("SELECT pg_logical_emit_message(true, 'wallaby', 'end')")
    stream = _stream_until_end_marker(pg_dsn, "positions", "pub")

    (b1, begin), (r1, _), (i1, _), (i2, _), (i3, _), (c1, commit) = stream[:6]
    assert begin.final_lsn == commit.commit_lsn
    assert r1 == 0  # Relation (and Type) messages carry no position
    assert b1 == i1  # Begin goes out with the first change, at that change's position
    assert i1 < i2 < i3  # rows of one INSERT ... VALUES are separate WAL records
    assert commit.commit_lsn < c1 == commit.end_lsn  # Commit sits at the transaction's end
    (b2, _), (i4, _), (i5, _), (c2, _) = stream[6:10]
    assert b2 == i4 == i5 < c2  # COPY's rows share one multi-insert record: one position for all
    (b3, _), (m, message), (i6, _), (c3, _) = stream[10:14]
    # A transactional message's position (and its lsn field) is the end of its record, where the
    # next record starts: the following change usually has the same wal_start.
    assert b3 == m == message.lsn <= i6 < c3
