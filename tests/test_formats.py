"""Wire formats: every body decodes back to the envelopes that went in, and the ecosystem reads it."""

from __future__ import annotations

import io
import math
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import formats
from agent.change import Change
from agent.delivery import Delivery, envelope, idempotency_key
from agent.formats import FormatError, get_format

FORMATS = ("json", "jsonl", "arrow", "parquet", "avro")
TYPED = ("arrow", "parquet", "avro")
INT64_MAX = 2**63 - 1
ENVELOPE_COLUMNS = [
    "table", "op", "source", "key", "before", "after", "lsn", "commit_lsn", "xid", "commit_ts",
    "unchanged", "txn_index", "message", "seq", "idempotency_key", "_absent",
]  # fmt: skip


def deliveries(*changes: Change, first_seq: int = 1) -> list[Delivery]:
    return [
        Delivery(seq, change, idempotency_key(change, seq))
        for seq, change in enumerate(changes, start=first_seq)
    ]


def row(op: str, table: str = "public.orders", **fields: Any) -> Change:
    fields.setdefault("lsn", "0/16B3748")
    fields.setdefault("commit_lsn", "0/16B3790")
    fields.setdefault("xid", 771)
    fields.setdefault("commit_ts", "2026-11-23T10:00:00.123456Z")
    return Change(table, op, "pg", **fields)


def strict(value: Any) -> bytes:
    """A type-strict fingerprint: True, 1 and 1.0 differ here though Python's == calls them equal."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def assert_round_trip(name: str, batch: list[Delivery]) -> None:
    fmt = get_format(name)
    body = fmt.encode(batch)
    assert isinstance(body, bytes)
    decoded = fmt.decode(body)
    expected = [envelope(delivery) for delivery in batch]
    assert decoded == expected
    assert strict(decoded) == strict(expected)


CASES: dict[str, list[Change]] = {
    "insert": [
        row("insert", key={"id": 1}, after={"id": 1, "name": "widget", "price": 9.5, "paid": True}),
        row("insert", key={"id": 2}, after={"id": 2, "name": "gadget", "price": 0.25, "paid": False}),
    ],
    "update_with_before": [
        row(
            "update",
            key={"id": 1},
            before={"id": 1, "name": "widget", "price": 9.5},
            after={"id": 1, "name": "widget v2", "price": 10.0},
            txn_index=3,
        ),
    ],
    "delete": [row("delete", key={"id": 7}, before={"id": 7}, after=None)],
    "truncate": [
        row("truncate", key=None, message={"tables": ["public.orders"], "cascade": False, "restart": True})
    ],
    "ddl": [row("ddl", table="", lsn=None, message={"command": "ALTER TABLE t ADD c int", "tag": "ALTER"})],
    "message": [row("message", table="", message={"prefix": "app", "content": "héllo", "transactional": 1})],
    "unicode": [
        row("insert", table="public.çafé", key={"名前": "ü"}, after={"名前": "ü", "emoji": "😀\u2028\x00"}),
    ],
    "none_values": [
        row("insert", key={"id": 1}, after={"id": 1, "note": None, "qty": None}, xid=None, commit_ts=None),
        row("insert", key={"id": 2}, after={"id": 2, "note": None, "qty": 5}),
    ],
    "toast_unchanged": [
        row("insert", key={"id": 1}, after={"id": 1, "body": "x" * 5000, "n": 1}),
        row("update", key={"id": 1}, after={"id": 1, "n": 2}, unchanged=["body"]),
    ],
    "big_ints": [
        row("insert", key={"id": INT64_MAX}, after={"id": INT64_MAX, "low": -(2**63)}),
        row("insert", key={"id": 0}, after={"id": 0, "low": INT64_MAX - 1}, xid=2**32 - 1),
    ],
    "floats": [
        row("insert", after={"f": 0.1, "g": -0.0}),
        row("insert", after={"f": 1e308, "g": 5e-324}),
    ],
    "nested_json": [
        row("insert", after={"doc": {"a": [1, 2, {"b": None}]}, "tags": ["x", "y"], "arr": []}),
        row("insert", after={"doc": {}, "tags": [], "arr": [[1.5], [True]]}),
    ],
    "json_looking_strings": [
        # "doc" mixes a list and strs, so it is JSON-carried: its strs must come back as strs.
        row("insert", after={"doc": [1], "text": "[1]"}),
        row("insert", after={"doc": "[1]", "text": '{"a": 1}'}),
        row("insert", after={"doc": "null", "text": "null"}),
    ],
    "mixed_int_float": [row("insert", after={"n": 1}), row("insert", after={"n": 1.0})],
    "mixed_bool_int": [row("insert", after={"n": True}), row("insert", after={"n": 1})],
    "bools": [row("insert", after={"ok": True}), row("insert", after={"ok": False}), row("insert", after={})],
    "new_column_mid_batch": [
        row("insert", key={"id": 1}, after={"id": 1}),
        row("insert", key={"id": 2}, after={"id": 2, "added": "later"}),
        row("update", key={"id": 2}, before={"added": "later", "id": 2}, after={"added": None, "id": 2}),
    ],
    "empty_images": [row("insert", key={}, after={}), row("delete", key={}, before={})],
    "avro_unsafe_names": [
        row("insert", table="my schema.1st-table", after={"a-b": 1, "a_b": 2, "1x": "y", "": False}),
    ],
    "empty_batch": [],
}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(name: str, case: str) -> None:
    assert_round_trip(name, deliveries(*CASES[case], first_seq=41))


@pytest.mark.parametrize("name", TYPED)
def test_nan_and_infinity_in_a_float_column_round_trip(name: str) -> None:
    # JSON has no form for these, so only the typed formats carry them (in a double column).
    batch = deliveries(
        row("insert", after={"f": math.nan}),
        row("insert", after={"f": math.inf}),
        row("insert", after={"f": -math.inf}),
    )
    fmt = get_format(name)
    decoded = fmt.decode(fmt.encode(batch))
    assert math.isnan(decoded[0]["after"]["f"])
    assert decoded[1:] == [envelope(delivery) for delivery in batch[1:]]


# JSON-native values as PostgreSQL converters produce them: no NaN/infinity inside JSON values
# (JSON has no form for them), ints within 64 bits, strs without lone surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def table_batches(draw: st.DrawFn) -> list[Delivery]:
    table = draw(st.sampled_from(["public.orders", "", "a.b.c", "x y"]))
    columns = draw(st.lists(texts, min_size=0, max_size=5, unique=True))
    # Per column, either one scalar kind (a typed column) or anything (a JSON-carried one).
    kinds = {
        column: draw(st.sampled_from([scalars, json_values, st.booleans(), texts])) for column in columns
    }
    image = (
        st.lists(st.sampled_from(columns), unique=True).flatmap(
            lambda names: st.fixed_dictionaries({name: kinds[name] for name in names})
        )
        if columns
        else st.just({})
    )
    images = st.none() | image
    changes = draw(
        st.lists(
            st.builds(
                Change,
                table=st.just(table),
                op=st.sampled_from(["insert", "update", "delete", "truncate", "snapshot", "ddl", "message"]),
                source=texts,
                key=images,
                before=images,
                after=images,
                lsn=st.none() | texts,
                commit_lsn=st.none() | texts,
                xid=st.none() | st.integers(0, 2**32 - 1),
                commit_ts=st.none() | texts,
                unchanged=st.lists(texts, max_size=2),
                txn_index=st.integers(0, 2**31),
                message=st.none() | st.dictionaries(texts, json_values, max_size=3),
            ),
            max_size=8,
        )
    )
    return deliveries(*changes, first_seq=draw(st.integers(1, 2**40)))


@pytest.mark.parametrize("name", FORMATS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=table_batches())
def test_round_trip_property(name: str, batch: list[Delivery]) -> None:
    assert_round_trip(name, batch)


@pytest.mark.parametrize("name", FORMATS)
def test_single_table_flag(name: str) -> None:
    assert get_format(name).single_table is (name in TYPED)


@pytest.mark.parametrize("name", TYPED)
def test_mixed_tables_are_refused(name: str) -> None:
    batch = deliveries(row("insert", after={"id": 1}), row("insert", table="public.users", after={"id": 1}))
    with pytest.raises(ValueError, match="split it by table") as info:
        get_format(name).encode(batch)
    assert not isinstance(info.value, FormatError)


@pytest.mark.parametrize("name", ("json", "jsonl"))
def test_json_formats_take_mixed_tables(name: str) -> None:
    assert_round_trip(
        name, deliveries(row("insert", after={"a": 1}), row("insert", table="t", after={"a": "x"}))
    )


@pytest.mark.parametrize("name", TYPED)
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70])
def test_int_beyond_int64_is_a_format_error(name: str, value: int) -> None:
    batch = deliveries(
        row("insert", after={"id": 1, "amount": 3}), row("insert", after={"id": 2, "amount": value})
    )
    with pytest.raises(FormatError) as info:
        get_format(name).encode(batch)
    message = str(info.value)
    assert "'public.orders'" in message and "'after.amount'" in message and "\n" not in message


@pytest.mark.parametrize("name", FORMATS)
def test_int_beyond_64_bits_in_a_json_column_is_a_format_error(name: str) -> None:
    batch = deliveries(row("insert", after={"doc": [2**65]}))
    with pytest.raises(FormatError):
        get_format(name).encode(batch)


def test_get_format_knows_every_format_and_refuses_others() -> None:
    classes = {
        "json": formats.JsonFormat,
        "jsonl": formats.JsonLinesFormat,
        "arrow": formats.ArrowFormat,
        "parquet": formats.ParquetFormat,
        "avro": formats.AvroFormat,
    }
    for name, cls in classes.items():
        fmt = get_format(name)
        assert type(fmt) is cls and fmt.name == name and cls.__name__ in formats.__all__
        assert fmt.extension.startswith(".") and "/" in fmt.content_type
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        get_format("xml")


def sample_batch() -> list[Delivery]:
    return deliveries(
        row("insert", key={"id": 1}, after={"id": 1, "name": "a", "price": 1.5, "tags": ["x"]}),
        row("update", key={"id": 1}, after={"id": 1, "name": "b", "price": 2.0, "tags": []}),
    )


def check_arrow_table(table: pa.Table) -> None:
    assert table.column_names == ENVELOPE_COLUMNS
    after = table.schema.field("after").type
    assert [(f.name, str(f.type)) for f in after] == [
        ("id", "int64"),
        ("name", "string"),
        ("price", "double"),
        ("tags", "string"),
    ]
    assert after.field("tags").metadata == {b"wallaby.encoding": b"json"}
    assert after.field("name").metadata is None
    assert table.column("after").to_pylist()[1] == {"id": 1, "name": "b", "price": 2.0, "tags": "[]"}
    assert table.column("seq").to_pylist() == [1, 2]


def test_arrow_body_reads_with_pyarrow_ipc() -> None:
    check_arrow_table(pyarrow.ipc.open_stream(get_format("arrow").encode(sample_batch())).read_all())


def test_parquet_body_reads_with_pyarrow_parquet() -> None:
    check_arrow_table(pq.read_table(io.BytesIO(get_format("parquet").encode(sample_batch()))))


def test_avro_body_reads_with_fastavro() -> None:
    reader = fastavro.reader(io.BytesIO(get_format("avro").encode(sample_batch())))
    schema = reader.writer_schema
    assert schema["name"] == "wallaby.public.orders"
    assert [f["name"] for f in schema["fields"]] == ENVELOPE_COLUMNS
    after = next(f for f in schema["fields"] if f["name"] == "after")["type"][1]
    assert [(f["name"], f["type"]) for f in after["fields"]] == [
        ("id", ["null", "long"]),
        ("name", ["null", "string"]),
        ("price", ["null", "double"]),
        ("tags", ["null", "string"]),
    ]
    assert after["fields"][3]["wallaby.encoding"] == "json"
    records = list(reader)
    assert [r["after"] for r in records] == [
        {"id": 1, "name": "a", "price": 1.5, "tags": '["x"]'},
        {"id": 1, "name": "b", "price": 2.0, "tags": "[]"},
    ]


def test_avro_names_are_derived_from_table_and_columns() -> None:
    batch = deliveries(row("insert", table="my schema.1st-table", after={"a-b": 1, "a_b": 2, "é": 3}))
    schema = fastavro.reader(io.BytesIO(get_format("avro").encode(batch))).writer_schema
    assert schema["name"] == "wallaby.my_schema._1st_table"
    after = next(f for f in schema["fields"] if f["name"] == "after")["type"][1]
    assert [(f["name"], f.get("wallaby.column")) for f in after["fields"]] == [
        ("a_b_2", "a-b"),
        ("a_b", None),
        ("_", "é"),
    ]
    message = deliveries(row("message", table="", message={"prefix": "p"}))
    assert (
        fastavro.reader(io.BytesIO(get_format("avro").encode(message))).writer_schema["name"]
        == "wallaby.change"
    )


def after_columns(name: str, body: bytes) -> list[str]:
    if name == "avro":
        schema = fastavro.reader(io.BytesIO(body)).writer_schema
        after = next(f for f in schema["fields"] if f["name"] == "after")["type"][1]
        return [f["name"] for f in after["fields"]]
    if name == "arrow":
        schema = pyarrow.ipc.open_stream(body).schema
    else:
        schema = pq.ParquetFile(io.BytesIO(body)).schema_arrow
    return [f.name for f in schema.field("after").type]


@pytest.mark.parametrize("name", TYPED)
def test_schema_follows_the_columns_of_each_body(name: str) -> None:
    fmt = get_format(name)
    first = fmt.encode(deliveries(row("insert", after={"id": 1})))
    second = fmt.encode(deliveries(row("insert", after={"id": 2, "added": "x"})))
    assert after_columns(name, first) == ["id"]
    assert after_columns(name, second) == ["id", "added"]
