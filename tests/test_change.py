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
    encode_row_change,
    is_change_payload,
    stored_idempotency_key,
)
from agent.delivery import idempotency_key

FORMAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"

# The prefixes and field orders as docs/format.md spells them, typed in independently.
DOCUMENTED_PREFIX = b"\xc1\x02"
DOCUMENTED_FIELDS = (
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
V1_PREFIX = b"\xc1\x01"

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


def payload_with(fields: object, prefix: bytes = V1_PREFIX) -> bytes:
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
    assert list(change.to_dict()) == [name for name in DOCUMENTED_FIELDS if name != "idempotency_key"]
    assert change.to_dict()["op"] == "insert" and change.to_dict()["unchanged"] == []


@pytest.mark.parametrize("op", OPS)
def test_every_op_round_trips_with_defaults_only(op: str) -> None:
    change = Change(table="", op=op, source="s")
    payload = encode_change(change)
    assert payload[:2] == DOCUMENTED_PREFIX
    assert orjson.loads(payload[2:]) == {
        **{name: None for name in DOCUMENTED_FIELDS},
        "table": "",
        "op": op,
        "source": "s",
        "unchanged": [],
        "txn_index": 0,
    }
    decoded = decode_change(payload)
    assert decoded == change
    decoded.unchanged.append("x")  # the decoder's list is the change's own
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


def test_empty_dicts_are_not_taken_for_missing() -> None:
    change = Change("s.t", "delete", "src", key={}, before={})
    assert decode_change(encode_change(change)) == change


# --- the bytes --------------------------------------------------------------------------------


def test_payload_is_the_prefix_then_the_documented_object() -> None:
    change = typical_insert()
    payload = encode_change(change)
    assert payload[:2] == DOCUMENTED_PREFIX
    fields = json.loads(payload[2:])
    assert list(fields) == list(DOCUMENTED_FIELDS)
    assert fields == {**change.to_dict(), "idempotency_key": idempotency_key(change, 1)}


def test_row_changes_encode_like_changes() -> None:
    change = typical_insert()
    assert encode_row_change(
        change.op,
        change.table,
        change.source,
        change.lsn,
        change.commit_lsn,
        change.xid,
        change.commit_ts,
        change.txn_index,
        change.key,
        change.after,  # type: ignore[arg-type]
    ) == encode_change(change)


@settings(max_examples=200)
@given(changes)
def test_the_stored_key_is_the_idempotency_key_when_it_does_not_depend_on_the_sequence(
    change: Change,
) -> None:
    payload = encode_change(change)
    stored = stored_idempotency_key(payload)
    if change.key is not None and change.lsn is not None:
        assert stored == idempotency_key(change, 1) == idempotency_key(change, 99)
    else:
        assert stored is None
        assert orjson.loads(payload[2:])["idempotency_key"] is None


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1\x02", b"plain text", b'{"idempotency_key":"0123"}', b'\xc1\x01[0,"t","s"]', b"x" * 60],
)
def test_no_stored_key_is_read_from_other_payloads(payload: bytes) -> None:
    assert stored_idempotency_key(payload) is None


def test_op_codes_are_the_documented_ones() -> None:
    assert OPS == ("insert", "update", "delete", "truncate", "snapshot", "ddl", "message")


def _documented_block(marker: str) -> str:
    text = FORMAT_DOC.read_text()
    match = re.search(re.escape(marker) + r".*?-->\n```\n(.*?)```", text, re.S)
    assert match, f"docs/format.md lost its {marker} block"
    return match.group(1)


def _documented_v1_hexdump() -> bytes:
    data = b""
    for line in _documented_block("<!-- change-hexdump").splitlines():
        offset, _, rest = line.partition("  ")
        assert int(offset, 16) == len(data), f"hexdump line {line!r} is at the wrong offset"
        data += bytes.fromhex(rest.split("|")[0])
    return data


def _example() -> Change:
    return Change(
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


def test_documented_example_is_what_encode_change_makes() -> None:
    documented = _documented_block("<!-- change-v2-example").strip().encode()
    assert encode_change(_example()) == DOCUMENTED_PREFIX + documented


def test_the_documented_version_1_record_still_decodes() -> None:
    payload = _documented_v1_hexdump()
    assert payload[:2] == V1_PREFIX
    assert decode_change(payload) == _example()


@settings(max_examples=100)
@given(changes)
def test_version_1_arrays_decode_to_the_same_change(change: Change) -> None:
    as_dict = change.to_dict()
    as_dict["op"] = OPS.index(change.op)
    order = ("op", "table", "source", "lsn", "commit_lsn", "xid", "commit_ts", "txn_index", "key", "after")
    order += ("before", "unchanged", "message")
    assert decode_change(payload_with([as_dict[name] for name in order])) == change


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
        (b'\xc1\x03{"table":"t"}', "unsupported change record version 3"),
        (b'\xc1\x02[0,"t","s"]', "must be a JSON object"),
        (b'\xc1\x02{"table":"t"', "invalid JSON"),
        (b'\xc1\x02{"table":"t","op":"insert","source":"s"}', "lacks the field 'key'"),
        (
            payload_with({**dict.fromkeys(DOCUMENTED_FIELDS), "colour": 1}, DOCUMENTED_PREFIX),
            "unknown field(s): colour",
        ),
        (
            payload_with(
                {**dict.fromkeys(DOCUMENTED_FIELDS), "table": "t", "op": "merge", "source": "s"},
                DOCUMENTED_PREFIX,
            ),
            "unknown op 'merge'",
        ),
        (
            payload_with(
                {
                    **dict.fromkeys(DOCUMENTED_FIELDS),
                    "table": "t",
                    "op": "insert",
                    "source": "s",
                    "unchanged": [],
                    "txn_index": "1",
                },
                DOCUMENTED_PREFIX,
            ),
            "'txn_index' has the wrong type: str",
        ),
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


@settings(max_examples=500)
@given(changes.filter(lambda c: c.after is not None))
def test_the_row_encoder_makes_the_bytes_encode_change_makes(change: Change) -> None:
    """agent._wire builds row payloads in C; they must be encode_change's bytes exactly."""
    change.before, change.unchanged, change.message = None, [], None
    made = encode_row_change(
        change.op,
        change.table,
        change.source,
        change.lsn,
        change.commit_lsn,
        change.xid,
        change.commit_ts,
        change.txn_index,
        change.key,
        change.after,  # type: ignore[arg-type]
    )
    assert made == encode_change(change)
    assert decode_change(made) == change


@settings(max_examples=300)
@given(st.text(), st.text(), rows, lsns)
def test_the_c_digest_is_blake2b(source: str, table: str, key: dict, lsn: str) -> None:
    from agent import idempotency

    assert idempotency.row_key(source, table, key, lsn) == idempotency._digest(
        "k", source, table, orjson.dumps(key, option=orjson.OPT_SORT_KEYS), lsn
    )
    assert idempotency.sequence_key(source, 7) == idempotency._digest("s", source, "7")


def test_the_row_encoder_refuses_what_encode_change_refuses() -> None:
    for after in ({"blob": b"\x00"}, {"huge": 2**64}, {"text": "\ud800"}):
        with pytest.raises(ChangeFormatError, match="not JSON-encodable"):
            encode_row_change("insert", "t", "s", "0/1", "0/1", 1, None, 0, {"id": 1}, after)
    with pytest.raises(ChangeFormatError, match="not JSON-encodable"):
        encode_row_change("insert", "t\ud800", "s", "0/1", "0/1", 1, None, 0, {"id": 1}, {"id": 1})
    with pytest.raises(ChangeFormatError, match="unknown op"):
        encode_row_change("upsert", "t", "s", "0/1", "0/1", 1, None, 0, {"id": 1}, {"id": 1})
