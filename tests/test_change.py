"""Change records: the dataclass, its dict form, and the versioned payload bytes of docs/format.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.change import (
    OPS,
    Change,
    ChangeFormatError,
    decode_change,
    encode_change,
    is_change_payload,
)

FORMAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"

# The version 1 prefix and field order as docs/format.md spells them, typed in independently.
DOCUMENTED_PREFIX = b"\xc1\x01"
DOCUMENTED_FIELDS = (
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

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
json_scalars = (
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
rows = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
lsns = st.builds(lambda high, low: f"{high:X}/{low:X}", st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
changes = st.builds(
    Change,
    table=st.text(max_size=20),
    op=st.sampled_from(OPS),
    source=st.text(max_size=10),
    key=st.none() | rows,
    before=st.none() | rows,
    after=st.none() | rows,
    lsn=st.none() | lsns,
    commit_lsn=st.none() | lsns,
    xid=st.none() | st.integers(0, 2**32 - 1),
    commit_ts=st.none() | st.just("2026-11-23T10:00:00.123456Z"),
    unchanged=st.lists(st.text(max_size=8), max_size=3),
    txn_index=st.integers(0, 2**31),
    message=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)


def typical_insert() -> Change:
    """A 6-column insert, as the PostgreSQL source makes it."""
    return Change(
        table="public.orders",
        op="insert",
        source="pg-main",
        key={"id": 123456},
        after={
            "id": 123456,
            "customer": "Ada Lovelace",
            "amount": "129.95",
            "paid": True,
            "created_at": "2026-11-23T10:00:00.123456Z",
            "note": None,
        },
        lsn="16/B374D848",
        commit_lsn="16/B374D9A0",
        xid=748213,
        commit_ts="2026-11-23T10:00:00.123456Z",
        txn_index=3,
    )


def payload_with(fields: list[object], prefix: bytes = DOCUMENTED_PREFIX) -> bytes:
    return prefix + json.dumps(fields).encode()


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=300)
@given(changes)
def test_encode_decode_round_trip(change: Change) -> None:
    assert decode_change(encode_change(change)) == change


@settings(max_examples=100)
@given(changes)
def test_dict_round_trip_through_json(change: Change) -> None:
    text = json.dumps(change.to_dict())
    assert Change.from_dict(json.loads(text)) == change


def test_to_dict_has_every_field() -> None:
    change = typical_insert()
    assert set(change.to_dict()) == set(DOCUMENTED_FIELDS)
    assert change.to_dict()["op"] == "insert" and change.to_dict()["unchanged"] == []


@pytest.mark.parametrize("op", OPS)
def test_every_op_round_trips_with_defaults_only(op: str) -> None:
    change = Change(table="", op=op, source="s")
    payload = encode_change(change)
    assert payload == DOCUMENTED_PREFIX + f'[{OPS.index(op)},"","s"]'.encode()
    decoded = decode_change(payload)
    assert decoded == change
    decoded.unchanged.append("x")  # the decoder's default list is the change's own
    assert decode_change(payload).unchanged == []


def test_values_survive_exactly() -> None:
    row = {
        "big": 2**63 - 1,
        "small": -(2**63),
        "float": 0.1,
        "unicode": "héllo ✓ 😀 \x00",
        "nested": [[1, None], {"a": [True, False]}, []],
        "none": None,
    }
    change = Change("s.t", "update", "src", key={"big": 2**63 - 1}, before=row, after=row, unchanged=["doc"])
    assert decode_change(encode_change(change)) == change


def test_trailing_defaults_are_left_out() -> None:
    change = typical_insert()
    fields = json.loads(encode_change(change)[2:])
    assert len(fields) == DOCUMENTED_FIELDS.index("after") + 1
    change.message = {"prefix": "p"}
    fields = json.loads(encode_change(change)[2:])
    assert len(fields) == len(DOCUMENTED_FIELDS)
    assert fields[DOCUMENTED_FIELDS.index("before")] is None
    assert fields[DOCUMENTED_FIELDS.index("unchanged")] == []


def test_empty_dicts_are_not_taken_for_missing() -> None:
    change = Change("s.t", "delete", "src", key={}, before={})
    assert decode_change(encode_change(change)) == change


# --- the bytes --------------------------------------------------------------------------------


def test_payload_is_the_prefix_then_the_documented_array() -> None:
    change = typical_insert()
    payload = encode_change(change)
    assert payload[:2] == DOCUMENTED_PREFIX
    fields = json.loads(payload[2:])
    as_dict = change.to_dict()
    as_dict["op"] = OPS.index(change.op)
    assert fields == [as_dict[name] for name in DOCUMENTED_FIELDS[: len(fields)]]


def test_op_codes_are_the_documented_ones() -> None:
    assert OPS == ("insert", "update", "delete", "truncate", "snapshot", "ddl", "message")


def test_payload_is_smaller_than_the_json_dict() -> None:
    change = typical_insert()
    payload = encode_change(change)
    plain = json.dumps(change.to_dict())
    # 237 bytes against 408 when this was written: a ratio of 0.58.
    assert len(payload) < 0.65 * len(plain), (len(payload), len(plain))


def _documented_change_hexdump() -> bytes:
    text = FORMAT_DOC.read_text()
    match = re.search(r"<!-- change-hexdump.*?-->\n```\n(.*?)```", text, re.S)
    assert match, "docs/format.md lost its worked change record"
    data = b""
    for line in match.group(1).splitlines():
        offset, _, rest = line.partition("  ")
        assert int(offset, 16) == len(data), f"hexdump line {line!r} is at the wrong offset"
        data += bytes.fromhex(rest.split("|")[0])
    return data


def test_documented_example_is_what_encode_change_makes() -> None:
    change = Change(
        table="public.users",
        op="update",
        source="pg",
        key={"id": 7},
        after={"id": 7, "name": "Zoë"},
        lsn="0/16B3748",
        commit_lsn="0/16B37A0",
        xid=734,
        commit_ts="2026-11-23T10:00:00.123456Z",
        txn_index=1,
    )
    assert encode_change(change) == _documented_change_hexdump()


# --- telling change payloads apart ------------------------------------------------------------


def test_is_change_payload() -> None:
    assert is_change_payload(encode_change(typical_insert()))
    assert is_change_payload(b"\xc1\x02anything")  # a later version is still a change
    for other in (b"", b"hello", b'{"op": "insert"}', b"[0]", "é".encode()):
        assert not is_change_payload(other)


@given(st.text(min_size=1))
def test_no_utf8_text_starts_like_a_change(text: str) -> None:
    assert not is_change_payload(text.encode("utf-8"))


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "does not start with 0xC1"),
        (b"\xc1", "does not start with 0xC1"),
        (b'[0,"t","s"]', "does not start with 0xC1"),
        (b'\xc1\x02[0,"t","s"]', "unsupported change record version 2"),
        (b'\xc1\x00[0,"t","s"]', "unsupported change record version 0"),
        (b"\xc1\x01", "invalid JSON"),
        (b'\xc1\x01[0,"t",', "invalid JSON"),
        (b"\xc1\x01\xff\xfe", "invalid JSON"),
        (payload_with({"op": 0}), "JSON array of 3 to 13 fields"),  # type: ignore[arg-type]
        (payload_with([0, "t"]), "JSON array of 3 to 13 fields"),
        (payload_with([0, "t", "s", *[None] * 11]), "JSON array of 3 to 13 fields"),
        (payload_with([7, "t", "s"]), "unknown op code 7"),
        (payload_with([-1, "t", "s"]), "unknown op code -1"),
        (payload_with(["insert", "t", "s"]), "unknown op code 'insert'"),
        (payload_with([True, "t", "s"]), "unknown op code True"),
        (payload_with([0, 5, "s"]), "'table' has the wrong type: int"),
        (payload_with([0, "t", None]), "'source' has the wrong type: NoneType"),
        (payload_with([0, "t", "s", 5]), "'lsn' has the wrong type: int"),
        (payload_with([0, "t", "s", None, None, "x"]), "'xid' has the wrong type: str"),
        (payload_with([0, "t", "s", None, None, True]), "'xid' has the wrong type: bool"),
        (payload_with([0, "t", "s", None, None, None, None, None]), "'txn_index' has the wrong type"),
        (payload_with([0, "t", "s", None, None, None, None, 0, [1]]), "'key' has the wrong type: list"),
        (payload_with([0, "t", "s", None, None, None, None, 0, None, "row"]), "'after' has the wrong type"),
        (payload_with([0, "t", "s", None, None, None, None, 0, None, None, None, None]), "'unchanged'"),
        (payload_with([0, "t", "s", None, None, None, None, 0, None, None, None, [1]]), "column names"),
        (payload_with([0, "t", "s", None, None, None, None, 0, None, None, None, [], "m"]), "'message'"),
    ],
)
def test_decode_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(ChangeFormatError, match=re.escape(reason)) as caught:
        decode_change(payload)
    assert "\n" not in str(caught.value)


def test_change_format_error_is_a_value_error() -> None:
    assert issubclass(ChangeFormatError, ValueError)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (Change("t", "upsert", "s"), "unknown op 'upsert'"),
        (Change("t", "insert", "s", after={"blob": b"\x00"}), "not JSON-encodable"),
        (Change("t", "insert", "s", after={"when": {1, 2}}), "not JSON-encodable"),
        (Change("t", "insert", "s", after={"huge": 2**64}), "not JSON-encodable"),
        (Change("t", "insert", "s", after={"text": "\ud800"}), "not JSON-encodable"),
    ],
)
def test_encode_errors(change: Change, reason: str) -> None:
    with pytest.raises(ChangeFormatError, match=re.escape(reason)):
        encode_change(change)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "must be a JSON object"),
        ({"op": "insert", "source": "s"}, "lacks required field(s): table"),
        ({"table": "t", "op": "insert", "source": "s", "colour": 1}, "unknown change field(s): colour"),
        ({"table": "t", "op": "merge", "source": "s"}, "unknown op 'merge'"),
        ({"table": "t", "op": "insert", "source": "s", "after": [1]}, "'after' has the wrong type"),
    ],
)
def test_from_dict_errors(data: object, reason: str) -> None:
    with pytest.raises(ChangeFormatError, match=re.escape(reason)):
        Change.from_dict(data)  # type: ignore[arg-type]


def test_from_dict_fills_defaults() -> None:
    change = Change.from_dict({"table": "t", "op": "truncate", "source": "s", "unchanged": None})
    assert change == Change("t", "truncate", "s")


def test_orjson_would_hide_nan_so_types_must_not_make_it() -> None:
    # The reason agent.sources.postgres.types keeps "NaN" and "Infinity" as strings.
    assert orjson.dumps(float("nan")) == b"null"
