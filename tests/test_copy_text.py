"""agent._copy: stored version 2 inserts to PostgreSQL COPY text, against a Python model of the rules.

The model decodes each record with orjson and writes each value as the postgres destination's
general path does (`_copy_converter`, psycopg's COPY text): a string as its text, null as \\N,
true/false as t/f in a parsed column, any other value as its JSON text. Whatever the model says
does not fit (another op, table, source, key or column list, a NUL, an object in a parsed
column, a column name that JSON escapes), the C function must answer None for, so the general
path decides.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.change import Change, encode_change

try:
    from agent import _copy
except ImportError as exc:  # fail, with the reason, rather than skip
    raise ImportError(
        "agent._copy was not compiled: `make install` builds it (needs gcc and Python headers)"
    ) from exc

copy_text = _copy.copy_text
PARSED, TEXT, JSON = _copy.MODE_PARSED, _copy.MODE_TEXT, _copy.MODE_JSON


class NotFit(Exception):
    pass


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _field(value, mode: int) -> str:
    if value is None:
        return "\\N"
    if mode == JSON:
        text = orjson.dumps(value).decode()
    elif isinstance(value, str):
        text = value
    elif mode == TEXT:
        text = orjson.dumps(value).decode()
    elif isinstance(value, (dict, list)):
        raise NotFit
    elif isinstance(value, bool):
        text = "t" if value else "f"
    else:
        text = orjson.dumps(value).decode()
    if "\x00" in text:
        raise NotFit
    return _escape(text)


def model(payloads, table, source, key, columns, modes, seqs):
    if any(orjson.dumps(name)[1:-1] != name.encode() for name in key + columns):
        return None  # a name JSON escapes is not matched in its escaped form: the general path
    lines = []
    for i, payload in enumerate(payloads):
        record = orjson.loads(payload[2:])
        after = record["after"]
        if (
            record["table"] != table
            or record["source"] != source
            or record["op"] not in ("insert", "snapshot")
            or tuple(record["key"] or ()) != key
            or not isinstance(after, dict)
            or tuple(after) != columns
        ):
            return None
        try:
            fields = [_field(after[c], m) for c, m in zip(columns, modes, strict=True)]
        except NotFit:
            return None
        if seqs is not None:
            fields += ["now", "false", record["op"], str(seqs[i])]
        lines.append("\t".join(fields) + "\n")
    return "".join(lines).encode()


def call(payloads, table, source, key, columns, modes, seqs=None):
    return copy_text(
        payloads,
        orjson.dumps(table),
        orjson.dumps(source),
        tuple(k.encode() for k in key),
        tuple(c.encode() for c in columns),
        bytes(modes),
        seqs,
    )


def insert(after, key=("id",), table="public.t", op="insert", source="app", **fields):
    return Change(
        table=table,
        op=op,
        source=source,
        key={k: after.get(k) for k in key} if key else None,
        after=after,
        lsn="0/16B3748",
        **fields,
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
names = st.text(min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    columns=st.lists(names, min_size=1, max_size=5, unique=True),
    data=st.data(),
    meta=st.booleans(),
)
def test_the_text_is_the_models_for_any_values(columns, data, meta):
    modes = data.draw(
        st.lists(st.sampled_from([PARSED, TEXT, JSON]), min_size=len(columns), max_size=len(columns))
    )
    rows = data.draw(st.lists(st.fixed_dictionaries({c: values for c in columns}), min_size=1, max_size=5))
    key = (columns[0],)
    payloads = [
        encode_change(insert(row, key, op=data.draw(st.sampled_from(["insert", "snapshot"])))) for row in rows
    ]
    seqs = list(range(100, 100 + len(rows))) if meta else None
    expected = model(payloads, "public.t", "app", key, tuple(columns), modes, seqs)
    assert call(payloads, "public.t", "app", key, columns, modes, seqs) == expected


def test_escapes_and_unicode_arrive_as_their_text():
    row = {
        "id": 1,
        "s": 'tab\there "q" back\\slash\nnew\rret \b\f é ✓ 😀 \u2028 /',
        "n": -12.5e-3,
        "b": False,
        "doc": {"k": ["x\\y", None, True]},
    }
    payloads = [encode_change(insert(row))]
    got = call(payloads, "public.t", "app", ("id",), tuple(row), [PARSED, TEXT, PARSED, PARSED, JSON])
    assert got == model(
        payloads, "public.t", "app", ("id",), tuple(row), [PARSED, TEXT, PARSED, PARSED, JSON], None
    )
    assert got.startswith(b'1\ttab\\there "q" back\\\\slash\\nnew\\rret \x08\x0c \xc3\xa9 ')
    assert got.endswith(b'\t-0.0125\tf\t{"k":["x\\\\\\\\y",null,true]}\n')


@pytest.mark.parametrize(
    "odd",
    [
        insert({"id": 1, "v": "x"}, op="update"),
        insert({"id": 1, "v": "x"}, table="public.other"),
        insert({"id": 1, "v": "x"}, source="elsewhere"),
        insert({"v": "x", "id": 1}),  # the same columns in another order
        insert({"id": 1, "v": "x", "w": 2}),  # one more column
        insert({"id": 1}),  # one fewer
        insert({"id": 1, "v": "x"}, key=("v",)),  # another key
        insert({"id": 1, "v": "x"}, key=()),  # no key
        insert({"id": 1, "v": "nul \x00 inside"}),  # PostgreSQL text holds no NUL
        insert({"id": 1, "v": {"an": "object"}}),  # an object where the target parses a value
    ],
)
def test_a_record_of_another_shape_makes_the_whole_answer_none(odd):
    good = encode_change(insert({"id": 2, "v": "y"}))
    assert call([good], "public.t", "app", ("id",), ("id", "v"), [PARSED, PARSED]) is not None
    assert call([good, encode_change(odd)], "public.t", "app", ("id",), ("id", "v"), [PARSED, PARSED]) is None


def test_a_keyless_table_takes_a_null_or_empty_key():
    payloads = [
        encode_change(insert({"id": 1}, key=())),
        b"\xc1\x02" + orjson.dumps({**orjson.loads(encode_change(insert({"id": 2}, key=()))[2:]), "key": {}}),
    ]
    assert call(payloads, "public.t", "app", (), ("id",), [PARSED]) == b"1\n2\n"


def _envelope(**changes):
    record = orjson.loads(encode_change(insert({"id": 1, "v": "x"}))[2:])
    record.update(changes)
    return b"\xc1\x02" + orjson.dumps(record)


@pytest.mark.parametrize(
    "payload",
    [
        _envelope(xid=1.5),  # the general path refuses these: agent.change._check
        _envelope(txn_index=None),
        _envelope(lsn=5),
        _envelope(before=[1]),
        _envelope(message="text"),
        _envelope(unchanged=[1]),
        _envelope(extra=True),
        _envelope(after=None),
        b"\xc1\x01" + encode_change(insert({"id": 1, "v": "x"}))[2:],  # not version 2
        encode_change(insert({"id": 1, "v": "x"}))[:-1] + b",}",  # a trailing comma
        encode_change(insert({"id": 1, "v": "x"})).replace(b'"v":"x"', b'"v":01'),  # not a JSON number
        encode_change(insert({"id": 1, "v": "x"})).replace(b'"v":"x"', b'"v":"\\ud800"'),  # lone surrogate
        encode_change(insert({"id": 1, "v": "x"})).replace(b'"op":"insert"', b'"op":"insert","op":"insert"'),
        b"",
        b"\xc1\x02",
    ],
)
def test_what_the_decoder_refuses_does_not_fit(payload):
    assert call([payload], "public.t", "app", ("id",), ("id", "v"), [PARSED, PARSED]) is None


def test_a_payload_that_is_not_bytes_does_not_fit():
    assert call([None], "public.t", "app", ("id",), ("id",), [PARSED]) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400))
def test_any_bytes_give_text_or_none_never_a_crash(noise, at):
    base = encode_change(insert({"id": 1, "v": "x"}))
    at = min(at, len(base))
    for payload in (base[:at] + noise, base[:at] + noise + base[at:], b"\xc1\x02" + noise):
        got = call([payload], "public.t", "app", ("id",), ("id", "v"), [TEXT, JSON])
        assert got is None or (isinstance(got, bytes) and got.endswith(b"\n"))


def test_modes_and_columns_must_agree():
    with pytest.raises(ValueError, match="one mode per column"):
        copy_text([], b'"t"', b'"s"', (), (b"a",), b"", None)
    with pytest.raises(ValueError, match="unknown mode"):
        copy_text([], b'"t"', b'"s"', (), (b"a",), b"\x07", None)
    with pytest.raises(ValueError, match="one seq per payload"):
        copy_text([b"x"], b'"t"', b'"s"', (), (b"a",), b"\x00", [])
