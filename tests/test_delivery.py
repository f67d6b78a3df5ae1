"""Deliveries read from the log: version 2 payloads go out as stored, and agree with decoding."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import wire
from agent.change import Change, ChangeFormatError, encode_change
from agent.delivery import (
    Delivery,
    LogBatch,
    batch_idempotency_key,
    envelope,
    envelope_json,
    idempotency_key,
)
from agent.destinations.base import PermanentError
from agent.formats import get_format
from tests.test_change import changes, typical_insert
from wal import Record


def _pair(change: Change, seq: int) -> tuple[Delivery, Delivery]:
    """The same record twice: decoded up front, and read from its payload."""
    return Delivery(seq, change, idempotency_key(change, seq)), Delivery.from_record(
        seq, 0, encode_change(change)
    )


@settings(max_examples=300)
@given(changes)
def test_a_stored_envelope_equals_the_encoded_one(change: Change) -> None:
    decoded, stored = _pair(change, 41)
    assert stored.idempotency_key == decoded.idempotency_key
    assert stored.change == change and stored.table == change.table
    as_sent = orjson.loads(envelope_json(stored, orjson.dumps))
    assert as_sent == envelope(decoded)
    assert orjson.dumps(as_sent, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        envelope(decoded), option=orjson.OPT_SORT_KEYS
    )


@settings(max_examples=50)
@given(changes, changes)
def test_batch_keys_and_bodies_agree_whichever_way_the_records_came(first: Change, second: Change) -> None:
    decoded, stored = zip(_pair(first, 7), _pair(second, 8), strict=True)
    assert batch_idempotency_key(stored) == batch_idempotency_key(decoded)
    for name in ("json", "jsonl"):
        fmt = get_format(name)
        assert fmt.decode(fmt.encode(list(stored))) == fmt.decode(fmt.encode(list(decoded)))


def test_a_version_2_payload_is_not_decoded_until_something_asks() -> None:
    payload = encode_change(typical_insert())
    delivery = Delivery.from_record(5, 123, payload)
    assert delivery._change is None
    assert delivery.table == "public.orders" and delivery.idempotency_key and delivery._change is None
    envelope_json(delivery, orjson.dumps)
    assert delivery._change is None
    assert delivery.change.after == typical_insert().after


def test_records_without_a_stored_key_get_the_sequence_key() -> None:
    ddl = Change(table="public.t", op="ddl", source="app", message={"statement": "ALTER TABLE t"})
    delivery = Delivery.from_record(9, 0, encode_change(ddl))
    assert delivery.stored_key_bytes() is None
    assert delivery.idempotency_key == idempotency_key(ddl, 9) != idempotency_key(ddl, 10)
    assert orjson.loads(envelope_json(delivery, orjson.dumps))["idempotency_key"] == delivery.idempotency_key


@pytest.mark.parametrize("payload", [b"", b"plain", b'{"op":"insert"}', b"\xc1\x03{}", b"\xc1\x01[0,"])
def test_payloads_that_are_not_changes_are_refused_up_front(payload: bytes) -> None:
    with pytest.raises(ChangeFormatError):
        Delivery.from_record(1, 0, payload)


def test_a_change_shaped_payload_that_does_not_decode_is_a_permanent_error_when_used() -> None:
    delivery = Delivery.from_record(3, 0, b'\xc1\x02{"table":"t","op":"insert"}')
    assert delivery.table == "t"
    with pytest.raises(PermanentError, match="record 3 is not a valid change record"):
        delivery.change  # noqa: B018
    with pytest.raises(PermanentError):
        delivery.idempotency_key  # noqa: B018


def test_a_delivery_needs_a_change_or_a_payload() -> None:
    with pytest.raises(ValueError, match="needs a change or a payload"):
        Delivery(1)


# --- pre-made bodies (agent.wire) -------------------------------------------------------------

SPLICES = {"json": (b"[", b",", b"]"), "jsonl": (b"", b"\n", b"\n")}


def _records(*changes_: Change, first_seq: int = 1) -> list[Record]:
    return [Record(seq, 0, encode_change(c), "seg", 16, False) for seq, c in enumerate(changes_, first_seq)]


def test_the_extension_is_built_here() -> None:
    assert wire.native, (
        "agent._wire was not compiled: `make install` builds it (needs gcc and Python headers)"
    )


@settings(max_examples=200)
@given(st.lists(changes, min_size=1, max_size=5), st.integers(1, 2**62))
def test_a_made_body_is_what_the_format_encodes(batch: list[Change], first_seq: int) -> None:
    records = _records(*batch, first_seq=first_seq)
    deliveries = [Delivery.from_record(r.seq, r.timestamp_ms, r.payload) for r in records]
    for name, splice in SPLICES.items():
        native = wire.json_body(records, *splice)
        python = wire._python_json_body(records, *splice)
        if any(c.key is None or c.lsn is None for c in batch):
            assert native is None and python is None  # a key that needs the seq: the general path
            continue
        assert native == python
        assert native is not None
        body, keys = native
        assert body == get_format(name).encode(deliveries)
        made = LogBatch(records, name, body, keys)
        assert get_format(name).encode(made) == body
        assert batch_idempotency_key(made) == batch_idempotency_key(deliveries)
        assert [d.seq for d in made] == [r.seq for r in records] and made[-1].change == batch[-1]


@pytest.mark.parametrize(
    "bad",
    [
        b"plain",
        encode_change(Change(table="t", op="ddl", source="s")),  # no stored key
        encode_change(typical_insert())[:-3] + b'g"}',  # not a hex key
        encode_change(typical_insert()).replace(b"\xc1\x02", b"\xc1\x01", 1),
        b'\xc1\x02{"table":"t"}',
    ],
)
def test_one_record_without_a_stored_key_sends_the_whole_batch_the_general_way(bad: bytes) -> None:
    records = [*_records(typical_insert()), Record(2, 0, bad, "seg", 16, False)]
    for splice in SPLICES.values():
        assert wire.json_body(records, *splice) is None
        assert wire._python_json_body(records, *splice) is None


def test_a_log_batch_sliced_is_a_plain_list_encoded_again() -> None:
    records = _records(typical_insert(), typical_insert(), first_seq=10)
    body, keys = wire.json_body(records, *SPLICES["json"])
    made = LogBatch(records, "json", body, keys)
    half = made[:1]
    assert type(half) is list and get_format("json").encode(half) != body
    assert get_format("jsonl").encode(made) == wire.json_body(records, *SPLICES["jsonl"])[0]
