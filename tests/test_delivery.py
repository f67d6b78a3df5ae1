"""Deliveries read from the log: version 2 payloads go out as stored, and agree with decoding."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings

from agent.change import Change, ChangeFormatError, encode_change
from agent.delivery import Delivery, batch_idempotency_key, envelope, envelope_json, idempotency_key
from agent.destinations.base import PermanentError
from agent.formats import get_format
from tests.test_change import changes, typical_insert


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
