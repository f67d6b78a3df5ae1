"""wal2json as an oracle for the PostgreSQL source: a generated workload over many column types
goes through both the agent (pgoutput) and a wal2json slot created at the same point, and the
changes must agree one for one, in order, transaction by transaction.

The workload comes from a seeded generator (set WALLABY_ORACLE_SEED to try another one; the seed
is in every failure message): inserts of one to three rows, updates of some columns, key changes,
updates and deletes of many rows, truncates, transactional and non-transactional logical
messages, subtransactions committed and rolled back, and whole transactions rolled back. Three
tables: `kitchen` (a column of each type, arrays of many), `ledger` (REPLICA IDENTITY FULL) and
`pairs` (no primary key: REPLICA IDENTITY USING INDEX over a text and an int column, with
non-ASCII column names). Each has a dropped column and generated columns, which pgoutput leaves
out. Large values sit in STORAGE EXTERNAL columns, so updates that leave them alone send them as
unchanged TOAST. How the two sides' values are made comparable is described in
tests/oracle_helpers.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import random
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest

from agent.sources.postgres.lsn import parse_lsn
from tests.agent_harness import (
    agent_config,
    changes_of,
    execute,
    query,
    running_agent,
    slot_confirmed_lsn,
    source_config,
    wait_for,
)
from tests.oracle_helpers import (
    CANONICAL_SESSION,
    SPECIAL_NUMBERS,
    TEXT_TWIN_SUFFIX,
    Normaliser,
    first_difference,
    read_wal2json,
    transactions,
)

SEED = int(os.environ.get("WALLABY_ORACLE_SEED", "20261123"))
TRANSACTIONS = 250
AGENT_SLOT = "wallaby_test"
ORACLE_SLOT = "oracle"
# wal2json prints values in the reading session's style: a zone with a half-hour offset and the
# verbose interval style, so that only PostgreSQL's own parsing can make its text and the agent's
# ISO 8601 meet. DateStyle stays ISO because dates are compared as text.
WAL2JSON_SESSION = "-c TimeZone=Asia/Kolkata -c IntervalStyle=postgres_verbose -c DateStyle=ISO"
NULL_CHANCE = 0.1

Generator = Callable[[random.Random], str | None]

# --- values ------------------------------------------------------------------------------------

# Pieces of text: quoting and array syntax, whitespace, and unicode that is more than one byte,
# more than one code point per glyph (combining marks, ZWJ sequences) or outside the BMP.
_PIECES = (
    *"aZ7 ",
    '"', "'", "\\", ",", "{", "}", "(", ")", ";", "NULL", "null", "\t", "\n",
    "é", "ß", "Ω", "日本", "😀", "👩‍👩‍👧", "e\u0301", "a\u0308\u0304", "\u200b", "𝄞", "İ",
)  # fmt: skip
_BIG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 éß日😀\u0301"


def _text(rng: random.Random, max_chars: int = 24) -> str:
    """Up to `max_chars` code points of tricky text."""
    wanted = rng.randint(0, max_chars)
    out = ""
    while len(out) < wanted:
        out += rng.choice(_PIECES)
    return out[:wanted]


def _big_text(rng: random.Random) -> str | None:
    """NULL, a short text, or one long enough to be stored out of line (TOASTed)."""
    roll = rng.random()
    if roll < NULL_CHANCE:
        return None
    if roll < 0.3:
        return _text(rng, 30)
    return "".join(rng.choices(_BIG_ALPHABET, k=rng.randint(3_000, 12_000)))


def _int(bits: int) -> Generator:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda rng: str(rng.choice([low, high, 0, -1, rng.randint(low, high), rng.randint(-1000, 1000)]))


def _numeric(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(sorted(SPECIAL_NUMBERS))
    if roll < 0.2:
        return rng.choice(
            ["0", "-0.000", "1e-30", "123.4500", "99999999999999999999999999999999.99999999999"]
        )
    whole = str(rng.randint(0, 10 ** rng.randint(0, 40)))
    fraction = "".join(rng.choices("0123456789", k=rng.randint(0, 30)))
    return ("-" if rng.random() < 0.4 else "") + whole + (f".{fraction}" if fraction else "")


def _float_from_bits(rng: random.Random, fmt: str, bits: int) -> str:
    """A finite float of `bits` bits made of random bits, as the shortest text that reads back to it."""
    while True:
        value = struct.unpack(fmt, rng.getrandbits(bits).to_bytes(bits // 8, "little"))[0]
        if math.isfinite(value):
            return repr(value)


def _double(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(
            [
                *sorted(SPECIAL_NUMBERS),
                "-0",
                "0",
                "0.1",
                "5e-324",
                "2.2250738585072014e-308",
                "1.7976931348623157e+308",
            ]
        )
    if roll < 0.5:
        return repr(rng.uniform(-1e6, 1e6))
    return _float_from_bits(rng, "<d", 64)


def _real(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(
            [*sorted(SPECIAL_NUMBERS), "-0", "0.1", "3.4028235e+38", "1.1754944e-38", "16777217"]
        )
    return _float_from_bits(rng, "<f", 32)


def _bytea(rng: random.Random) -> str:
    return "\\x" + rng.randbytes(rng.randint(0, 24)).hex()


def _uuid(rng: random.Random) -> str:
    text = str(uuid.UUID(int=rng.getrandbits(128)))
    return text.upper() if rng.random() < 0.3 else text


_FIRST_DAY = datetime.date(1, 1, 1)
_DAYS_TO_9999 = 3_652_058


def _day(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(["infinity", "-infinity", "0044-03-15 BC", "12345-06-07", "2000-02-29"])
    return (_FIRST_DAY + datetime.timedelta(days=rng.randint(0, _DAYS_TO_9999))).isoformat()


def _clock(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return "24:00:00"
    microseconds = rng.choice([0, rng.randint(0, 999_999), rng.randint(0, 9) * 100_000])
    return f"{rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}.{microseconds:06}"


def _clock_tz(rng: random.Random) -> str:
    return _clock(rng) + rng.choice(["+00", "-08", "+05:30", "+14", "-12:45", "+01:02:03"])


def _moment(rng: random.Random) -> str:
    day = _FIRST_DAY + datetime.timedelta(days=rng.randint(0, _DAYS_TO_9999))
    return f"{day.isoformat()} {_clock(rng).replace('24:00:00', '23:59:59')}"


def _stamp(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(
            [
                "infinity",
                "-infinity",
                "0044-03-15 12:00:00 BC",
                "12345-06-07 08:09:10.123456",
                "2000-02-29 23:59:59.999999",
            ]
        )
    return _moment(rng)


def _stamp_tz(rng: random.Random) -> str:
    """A timestamptz written with an offset, or in the session's zone when there is none."""
    if rng.random() < 0.1:
        return rng.choice(["infinity", "-infinity", "0044-03-15 12:00:00+00 BC", "12345-06-07 08:09:10.5+00"])
    return _moment(rng) + rng.choice(["", "+00", "-08", "+05:30", "+14", "-12:45", "+01:02:03", "Z"])


def _interval(rng: random.Random) -> str:
    parts = [
        f"{rng.randint(-limit, limit)} {unit}"
        for unit, limit in (("years", 200), ("months", 30), ("days", 400), ("hours", 100), ("minutes", 100))
        if rng.random() < 0.5
    ]
    if rng.random() < 0.5:
        parts.append(f"{rng.uniform(-100, 100):.6f} seconds")
    return " ".join(parts) or "0"


def _json_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth >= 3 or roll < 0.5:
        return rng.choice(
            [
                rng.randint(-(2**53), 2**53),
                rng.uniform(-1e6, 1e6),
                rng.choice([0.1, -2.5, 1e-7, 1.5e300, 0]),
                True,
                False,
                None,
                _text(rng, 12),
            ]
        )
    if roll < 0.75:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_text(rng, 8): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _json(rng: random.Random) -> str:
    if rng.random() < 0.1:  # the json type keeps duplicate keys and spacing; the last key wins
        return '{"k": 1,   "k": [true, {"é": null}]}'
    return json.dumps(_json_value(rng), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))


def _json_document(rng: random.Random) -> str:
    """A json or jsonb column's value: never the document `null`, which the agent cannot tell
    from SQL NULL (both are null in the change)."""
    while True:
        document = _json(rng)
        if json.loads(document) is not None:
            return document


def _big_json(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < NULL_CHANCE:
        return None
    if roll < 0.3:
        return _json_document(rng)
    return json.dumps({"items": [_text(rng, 30) for _ in range(rng.randint(200, 500))]}, ensure_ascii=False)


def _inet(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return ".".join(str(rng.randint(0, 255)) for _ in range(4)) + rng.choice(["", "/24", "/32", "/8"])
    return ":".join(f"{rng.getrandbits(16):x}" for _ in range(8)) + rng.choice(["", "/64", "/128"])


def _money(rng: random.Random) -> str:
    cents = rng.randint(-(10**11), 10**11)
    return f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02}"


def _cidr(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(ipaddress.ip_network((rng.getrandbits(32), rng.randint(0, 32)), strict=False))
    return str(ipaddress.ip_network((rng.getrandbits(128), rng.randint(0, 128)), strict=False))


def _macaddr(rng: random.Random) -> str:
    text = ":".join(f"{rng.getrandbits(8):02x}" for _ in range(6))
    return text.upper().replace(":", "-") if rng.random() < 0.3 else text


def _int_range(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return "empty"
    low, high = sorted(rng.randint(-1000, 1000) for _ in range(2))
    return f"{rng.choice('[(')}{low},{high}{rng.choice('])')}"


def _time_range(rng: random.Random) -> str:
    """A tstzrange between two UTC moments (ISO text of four-digit years sorts by time), or open."""
    low, high = sorted(_moment(rng) for _ in range(2))
    low = "" if rng.random() < 0.1 else f"{low}+00"
    return f"[{low},{high}+00)"


def _point(rng: random.Random) -> str:
    return f"({rng.uniform(-100, 100)!r},{rng.randint(-5, 5)})"


def _box(rng: random.Random) -> str:
    return "({},{}),({},{})".format(*(rng.randint(-50, 50) for _ in range(4)))


def _xml(rng: random.Random) -> str:
    text = _text(rng, 12).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<note lang="ü">{text}</note>'


def _quoted(element: str | None) -> str:
    if element is None:
        return "NULL"
    return '"' + element.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array(element: Generator, max_length: int = 5, delimiter: str = ",") -> Generator:
    def generate(rng: random.Random) -> str:
        items = [None if rng.random() < 0.15 else element(rng) for _ in range(rng.randint(0, max_length))]
        return "{" + delimiter.join(_quoted(item) for item in items) + "}"

    return generate


def _grid(rng: random.Random) -> str:
    """A two-dimensional bigint array (rows of equal length)."""
    columns = rng.randint(1, 3)
    element = _int(64)
    rows = [
        "{" + ",".join("NULL" if rng.random() < 0.15 else element(rng) for _ in range(columns)) + "}"
        for _ in range(rng.randint(1, 3))
    ]
    return "{" + ",".join(rows) + "}"


def _of(choices: tuple[str, ...]) -> Generator:
    return lambda rng: rng.choice(choices)


MOODS = ("sad", "ok", "happy", "ünï 😀")
REGIONS = ("north", "Zürich", "東京", "😀", "e\u0301", 'a"b,c', "")

# --- tables ------------------------------------------------------------------------------------


def quote(name: str) -> str:
    """An identifier quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: dict[str, str]  # key column → type
    columns: dict[str, tuple[str, Generator]]  # other columns → (type, generator)
    toasted: tuple[str, ...] = ()  # STORAGE EXTERNAL: large values go out of line, uncompressed
    identity: str = "primary key"  # or "full", or "index": a unique index and no primary key
    number: str = "id"  # an integer key column, for statements that touch many rows

    def schema(self) -> list[str]:
        table = quote(self.name)
        definitions = [f"{quote(name)} {type_name} NOT NULL" for name, type_name in self.key.items()]
        definitions += [f"{quote(name)} {type_name}" for name, (type_name, _) in self.columns.items()]
        # wal2json prints NaN and ±Infinity as null; the twin keeps their text (see oracle_helpers).
        definitions += [
            f"{quote(name + TEXT_TWIN_SUFFIX)} text GENERATED ALWAYS AS ({quote(name)}::text) STORED"
            for name, (type_name, _) in self.columns.items()
            if type_name in ("numeric", "real", "double precision")
        ]
        # A column dropped before the workload: both decoders must skip it.
        definitions.append("dropped integer")
        key = ", ".join(quote(name) for name in self.key)
        if self.identity != "index":
            definitions.append(f"PRIMARY KEY ({key})")
        statements = [
            f"CREATE TABLE {table} ({', '.join(definitions)})",
            f"ALTER TABLE {table} DROP COLUMN dropped",
        ]
        statements += [
            f"ALTER TABLE {table} ALTER COLUMN {quote(c)} SET STORAGE EXTERNAL" for c in self.toasted
        ]
        if self.identity == "full":
            statements.append(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
        elif self.identity == "index":
            statements.append(f"CREATE UNIQUE INDEX {self.name}_identity ON {table} ({key})")
            statements.append(f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX {self.name}_identity")
        return statements


KITCHEN = TableSpec(
    "kitchen",
    {"id": "integer"},
    {
        "small": ("smallint", _int(16)),
        "large": ("bigint", _int(64)),
        "amount": ("numeric", _numeric),
        "ratio": ("real", _real),
        "measure": ("double precision", _double),
        "flag": ("boolean", lambda rng: rng.choice(["true", "false"])),
        "blob": ("bytea", _bytea),
        "ident": ("uuid", _uuid),
        "day": ("date", _day),
        "clock": ("time", _clock),
        "clock_tz": ("timetz", _clock_tz),
        "stamp": ("timestamp", _stamp),
        "stamp_tz": ("timestamptz", _stamp_tz),
        "span": ("interval", _interval),
        "doc": ("json", _json_document),
        "docb": ("jsonb", _json_document),
        "feeling": ("mood", _of(MOODS)),
        "count": ("posint", lambda rng: str(rng.randint(1, 2**31 - 1))),
        "addr": ("inet", _inet),
        "net": ("cidr", _cidr),
        "mac": ("macaddr", _macaddr),
        "bits": ("bit varying(16)", lambda rng: "".join(rng.choices("01", k=rng.randint(0, 16)))),
        "range": ("int4range", _int_range),
        "period": ("tstzrange", _time_range),
        "spot": ("point", _point),
        "markup": ("xml", _xml),
        "price": ("money", _money),
        "code": ("char(5)", lambda rng: _text(rng, 5)),
        "label": ("varchar(20)", lambda rng: _text(rng, 20)),
        "body": ("text", lambda rng: _text(rng, 60)),
        "ints": ("integer[]", _array(_int(32))),
        "texts": ("text[]", _array(lambda rng: _text(rng, 10))),
        "grid": ("bigint[][]", _grid),
        "amounts": ("numeric[]", _array(_numeric, 3)),
        "stamps": ("timestamptz[]", _array(_stamp_tz, 3)),
        "measures": ("double precision[]", _array(_double, 3)),
        "flags": ("boolean[]", _array(lambda rng: rng.choice(["t", "f"]))),
        "blobs": ("bytea[]", _array(_bytea, 3)),
        "docs": ("jsonb[]", _array(_json_document, 3)),
        "days": ("date[]", _array(_day, 3)),
        "spans": ("interval[]", _array(_interval, 3)),
        "uuids": ("uuid[]", _array(_uuid, 3)),
        "feelings": ("mood[]", _array(_of(MOODS), 3)),
        "counts": ("posint[]", _array(lambda rng: str(rng.randint(1, 99)), 3)),
        "boxes": ("box[]", _array(_box, 3, delimiter=";")),
        "big": ("text", _big_text),
        "big_doc": ("jsonb", _big_json),
    },
    toasted=("big", "big_doc"),
)
LEDGER = TableSpec(
    "ledger",
    {"id": "integer"},
    {
        "label": ("text", lambda rng: _text(rng, 30)),
        "amount": ("numeric", _numeric),
        "ratio": ("double precision", _double),
        "flag": ("boolean", lambda rng: rng.choice(["true", "false"])),
        "at": ("timestamptz", _stamp_tz),
        "tags": ("text[]", _array(lambda rng: _text(rng, 10))),
        "blob": ("bytea", _bytea),
        "big": ("text", _big_text),
    },
    toasted=("big",),
    identity="full",
)
PAIRS = TableSpec(
    "pairs",
    {"Région ü": "text", "n": "integer"},
    {
        'Notiz "😀"': ("varchar(40)", lambda rng: _text(rng, 40)),
        "feeling": ("mood", _of(MOODS)),
        "grid": ("integer[]", _array(_int(32))),
        "big": ("text", _big_text),
    },
    toasted=("big",),
    identity="index",
    number="n",
)
TABLES = (KITCHEN, LEDGER, PAIRS)
SCHEMA = [
    f"CREATE TYPE mood AS ENUM ({', '.join(repr(mood) for mood in MOODS)})",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
    *(statement for spec in TABLES for statement in spec.schema()),
]

# --- the workload ------------------------------------------------------------------------------

_ACTIONS = {
    "insert": 4.0,
    "update": 4.0,
    "update_key": 1.5,
    "update_many": 1.0,
    "delete": 1.5,
    "delete_many": 0.5,
    "truncate": 0.15,
    "message": 0.6,
}


class Workload:
    """Random transactions over TABLES; keys are read back from the database, never simulated."""

    def __init__(self, conn: psycopg.Connection, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self._next_number = 1

    def run(self, transactions: int) -> None:
        for number in range(transactions):
            if number == transactions // 2:
                self._every_action()
            else:
                self._transaction()

    def _transaction(self) -> None:
        rng = self.rng
        with self.conn.transaction():
            for _ in range(rng.randint(1, 5)):
                roll = rng.random()
                if roll < 0.1:  # a savepoint rolled back: its changes reach neither decoder
                    with self.conn.transaction() as savepoint:
                        self._statement()
                        raise psycopg.Rollback(savepoint)
                elif roll < 0.2:  # a subtransaction that commits with its parent
                    with self.conn.transaction():
                        self._statement()
                else:
                    self._statement()
            if rng.random() < 0.07:
                raise psycopg.Rollback()

    def _every_action(self) -> None:
        """One transaction doing each kind of statement once, so that every seed covers them all."""
        with self.conn.transaction():
            for action in self.rng.sample(list(_ACTIONS), len(_ACTIONS)):
                getattr(self, f"_{action}")(self.rng.choice(TABLES))

    def _statement(self) -> None:
        action = self.rng.choices(list(_ACTIONS), weights=list(_ACTIONS.values()))[0]
        getattr(self, f"_{action}")(self.rng.choice(TABLES))

    def _new_key(self, spec: TableSpec) -> list[object]:
        self._next_number += 1
        return [self._next_number if name == spec.number else self.rng.choice(REGIONS) for name in spec.key]

    def _value(self, spec: TableSpec, column: str) -> str | None:
        generate = spec.columns[column][1]
        if column in spec.toasted:  # chooses its own NULLs
            return generate(self.rng)
        return None if self.rng.random() < NULL_CHANCE else generate(self.rng)

    def _keys(self, spec: TableSpec) -> list[tuple]:
        columns = ", ".join(quote(name) for name in spec.key)
        return self.conn.execute(
            f"SELECT {columns} FROM {quote(spec.name)} ORDER BY {quote(spec.number)}"
        ).fetchall()

    def _where_key(self, spec: TableSpec) -> str:
        return " AND ".join(f"{quote(name)} = %s" for name in spec.key)

    def _insert(self, spec: TableSpec) -> None:
        names = [*spec.key, *spec.columns]
        count = self.rng.randint(1, 3)
        values: list[object] = []
        for _ in range(count):
            values += [*self._new_key(spec), *(self._value(spec, c) for c in spec.columns)]
        row = "(" + ", ".join(["%s"] * len(names)) + ")"
        self.conn.execute(
            f"INSERT INTO {quote(spec.name)} ({', '.join(map(quote, names))}) VALUES {', '.join([row] * count)}",
            values,
        )

    def _changed_columns(self, spec: TableSpec) -> list[str]:
        """Some ordinary columns; the TOASTed ones only now and then, so most updates leave them unchanged."""
        ordinary = [c for c in spec.columns if c not in spec.toasted]
        chosen = self.rng.sample(ordinary, self.rng.randint(1, min(5, len(ordinary))))
        return chosen + [c for c in spec.toasted if self.rng.random() < 0.25]

    def _update(self, spec: TableSpec, *, new_key: bool = False) -> None:
        keys = self._keys(spec)
        if not keys:
            self._insert(spec)
            return
        columns = self._changed_columns(spec) if not new_key or self.rng.random() < 0.5 else []
        assignments = [f"{quote(c)} = %s" for c in columns]
        values: list[object] = [self._value(spec, c) for c in columns]
        if new_key:
            changed = self.rng.sample(list(spec.key), self.rng.randint(1, len(spec.key)))
            fresh = dict(zip(spec.key, self._new_key(spec), strict=True))
            assignments += [f"{quote(name)} = %s" for name in changed]
            values += [fresh[name] for name in changed]
        self.conn.execute(
            f"UPDATE {quote(spec.name)} SET {', '.join(assignments)} WHERE {self._where_key(spec)}",
            [*values, *self.rng.choice(keys)],
        )

    def _update_key(self, spec: TableSpec) -> None:
        self._update(spec, new_key=True)

    def _update_many(self, spec: TableSpec) -> None:
        columns = self._changed_columns(spec)
        self.conn.execute(
            f"UPDATE {quote(spec.name)} SET {', '.join(f'{quote(c)} = %s' for c in columns)}"
            f" WHERE mod({quote(spec.number)}, 4) = %s",
            [*(self._value(spec, c) for c in columns), self.rng.randint(0, 3)],
        )

    def _delete(self, spec: TableSpec) -> None:
        keys = self._keys(spec)
        if keys:
            self.conn.execute(
                f"DELETE FROM {quote(spec.name)} WHERE {self._where_key(spec)}", self.rng.choice(keys)
            )

    def _delete_many(self, spec: TableSpec) -> None:
        self.conn.execute(
            f"DELETE FROM {quote(spec.name)} WHERE mod({quote(spec.number)}, 5) = %s",
            [self.rng.randint(0, 4)],
        )

    def _truncate(self, spec: TableSpec) -> None:
        names = ", ".join(quote(s.name) for s in self.rng.sample(TABLES, self.rng.randint(1, 2)))
        self.conn.execute(f"TRUNCATE {names}{self.rng.choice(['', ' RESTART IDENTITY', ' CASCADE'])}")

    def _message(self, spec: TableSpec) -> None:
        self.conn.execute(
            "SELECT pg_logical_emit_message(%s, %s, %s)",
            [self.rng.random() < 0.7, self.rng.choice(["oracle", "oracle.ünï", "😀"]), _text(self.rng, 40)],
        )


# --- the test ----------------------------------------------------------------------------------


def test_the_agent_decodes_every_change_as_wal2json_does(pg_dsn, tmp_path):
    execute(pg_dsn, *SCHEMA)
    tables = [f"public.{spec.name}" for spec in TABLES]
    config = agent_config(str(tmp_path / "data"), source_config(pg_dsn, publication_tables=tables))
    with running_agent(config) as agent:
        wait_for(lambda: agent.sources[0].status.state == "streaming", what="streaming")
        # Both slots now exist, so both decode every transaction of the workload.
        execute(pg_dsn, f"SELECT pg_create_logical_replication_slot('{ORACLE_SLOT}', 'wal2json')")
        with psycopg.connect(pg_dsn) as conn:
            Workload(conn, random.Random(SEED)).run(TRANSACTIONS)
        # The insert position, not pg_current_wal_lsn(): with synchronous_commit off, the last
        # commits may not have been written yet, and the agent must have seen them too.
        end = parse_lsn(query(pg_dsn, "SELECT pg_current_wal_insert_lsn()::text")[0][0])
        wait_for(
            lambda: (slot_confirmed_lsn(pg_dsn, AGENT_SLOT) or 0) >= end,
            what="the agent to confirm the workload",
        )
    with psycopg.connect(pg_dsn, autocommit=True, options=WAL2JSON_SESSION) as conn:
        records = read_wal2json(conn, ORACLE_SLOT, tables)
    with psycopg.connect(pg_dsn, autocommit=True, options=CANONICAL_SESSION) as conn:
        normaliser = Normaliser(conn, tables)
        expected = normaliser.from_wal2json(records)
        actual = normaliser.from_agent(changes_of(config.data_dir))

    # The workload reached what it is meant to exercise, or agreement would prove little.
    assert {e["op"] for e in expected} == {"insert", "update", "delete", "truncate", "message"}
    assert any(e["unchanged"] for e in expected), "no update left a TOASTed value unchanged"
    assert any(e["op"] == "update" and e["old"] != e["key"] for e in expected), "no key or full-row update"
    specials = [(kind, word) for kind in ("float", "numeric") for word in SPECIAL_NUMBERS]
    written = [value for e in expected for value in (e["new"] or {}).values()]
    assert any(value in specials for value in written), "no NaN or infinity written"

    # Transactions first: a missing or merged one is clearer here than as a shifted change.
    txns_actual, txns_expected = transactions(actual), transactions(expected)
    for position, (mine, theirs) in enumerate(zip(txns_actual, txns_expected, strict=False)):
        if mine != theirs:
            pytest.fail(
                f"seed {SEED}: transaction {position} of {len(txns_expected)} differs"
                f" (xid, commit LSN, commit time, changes):\n  agent:    {mine}\n  wal2json: {theirs}"
            )
    difference = first_difference(actual, expected)
    if difference is not None:
        pytest.fail(f"seed {SEED}: {difference}")
