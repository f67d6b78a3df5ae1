"""PostgreSQL text output to JSON values (agent.sources.postgres.types), by the rules in docs/format.md.

The texts below were captured from pgoutput itself (proto_version 1, PostgreSQL 15) with the
source's session settings: TimeZone=UTC, DateStyle=ISO, IntervalStyle=iso_8601,
extra_float_digits=3. The enum `mood`, the domain `posint` (over int4) and their arrays had the
OIDs shown in that database; pgoutput's Type messages named them as the `name` column says.
"""

from __future__ import annotations

import math
import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sources.postgres.types import convert_value, converter_for, parse_array

MOOD, POSINT, MOOD_ARRAY, POSINT_ARRAY = 16389, 16394, 16388, 16393

# (label, type OID, type name from pgoutput's Type message, text pgoutput sent, expected value)
PGOUTPUT_CASES = [
    ("int2", 21, None, "32767", 32767),
    ("int4", 23, None, "-2147483648", -2147483648),
    ("int8", 20, None, "9223372036854775807", 9223372036854775807),
    ("oid", 26, None, "4294967295", 4294967295),
    ("numeric", 1700, None, "123.4500", "123.4500"),
    ("numeric NaN", 1700, None, "NaN", "NaN"),
    ("numeric -Infinity", 1700, None, "-Infinity", "-Infinity"),
    ("float4", 700, None, "1.1", 1.1),
    ("float4 NaN", 700, None, "NaN", "NaN"),
    ("float8", 701, None, "0.1", 0.1),
    ("float8 big", 701, None, "1e+300", 1e300),
    ("float8 small", 701, None, "1.5e-10", 1.5e-10),
    ("float8 -Infinity", 701, None, "-Infinity", "-Infinity"),
    ("float8 Infinity", 701, None, "Infinity", "Infinity"),
    ("bool true", 16, None, "t", True),
    ("bool false", 16, None, "f", False),
    ("text", 25, None, "héllo", "héllo"),
    ("varchar", 1043, None, "v", "v"),
    ("bpchar keeps its padding", 1042, None, "ab  ", "ab  "),
    ("name", 19, None, "nm", "nm"),
    ('"char"', 18, None, "c", "c"),
    ("json", 114, None, '{"a": [1, 2.5, "x"], "b": null}', {"a": [1, 2.5, "x"], "b": None}),
    ("jsonb", 3802, None, '{"a": [1, 2.5, "x"], "b": null}', {"a": [1, 2.5, "x"], "b": None}),
    ("uuid", 2950, None, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("bytea", 17, None, "\\x0a0bff", "Cgv/"),
    ("bytea empty", 17, None, "\\x", ""),
    ("date", 1082, None, "2024-01-02", "2024-01-02"),
    ("date -infinity", 1082, None, "-infinity", "-infinity"),
    ("date BC", 1082, None, "0044-03-15 BC", "0044-03-15 BC"),
    ("timestamp", 1114, None, "2024-01-02 03:04:05.5", "2024-01-02T03:04:05.500000"),
    ("timestamp BC", 1114, None, "0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
    ("timestamp year 12345", 1114, None, "12345-06-07 08:09:10.123456", "12345-06-07 08:09:10.123456"),
    ("timestamptz", 1184, None, "2024-01-02 01:04:05.5+00", "2024-01-02T01:04:05.500000Z"),
    ("timestamptz infinity", 1184, None, "infinity", "infinity"),
    ("timestamptz year 12345", 1184, None, "12345-01-01 00:00:00+00", "12345-01-01 00:00:00+00"),
    ("time", 1083, None, "03:04:05.25", "03:04:05.250000"),
    ("time 24:00", 1083, None, "24:00:00", "24:00:00"),
    ("timetz", 1266, None, "03:04:05.25+05:30", "03:04:05.250000+05:30"),
    ("timetz whole hours", 1266, None, "03:04:05-08", "03:04:05-08:00"),
    ("interval", 1186, None, "P1Y2M3DT4H5M6S", "P1Y2M3DT4H5M6S"),
    ("interval negative", 1186, None, "P-1DT-1.5S", "P-1DT-1.5S"),
    ("inet", 869, None, "192.168.0.1/24", "192.168.0.1/24"),
    ("money", 790, None, "$12.34", "$12.34"),
    ("enum", MOOD, "mood", "happy", "happy"),
    ("domain over int4", POSINT, "int4", "5", 5),
    ("int4[]", 1007, None, "{1,2,NULL}", [1, 2, None]),
    (
        "text[]",
        1009,
        None,
        '{"a b","c\\"d",NULL,"NULL","","x\\\\y",é}',
        ["a b", 'c"d', None, "NULL", "", "x\\y", "é"],
    ),
    ("enum[]", MOOD_ARRAY, "_mood", "{happy,NULL}", ["happy", None]),
    ("domain[]", POSINT_ARRAY, "_posint", "{1,2}", ["1", "2"]),
    ("box[]", 1020, None, "{(3,4),(1,2);(1,1),(0,0)}", ["(3,4),(1,2)", "(1,1),(0,0)"]),
    ("int4[][]", 1007, None, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
    ("int4[] with bounds", 1007, None, "[0:1]={1,2}", [1, 2]),
    (
        "timestamptz[]",
        1185,
        None,
        '{"2024-01-02 03:04:05.5+00",NULL}',
        ["2024-01-02T03:04:05.500000Z", None],
    ),
    ("bytea[]", 1001, None, '{"\\\\x0a","\\\\x"}', ["Cg==", ""]),
    ("jsonb[]", 3807, None, '{"{\\"a\\": 1}","\\"s\\""}', [{"a": 1}, "s"]),
    ("float8[]", 1022, None, "{1.5,NaN,-Infinity}", [1.5, "NaN", "-Infinity"]),
]

# Texts seen from PostgreSQL 15's output functions under the same settings (psql), not via a table.
OUTPUT_FUNCTION_CASES = [
    ("timestamp whole seconds", 1114, "2024-01-02 03:04:05", "2024-01-02T03:04:05"),
    ("timestamp -infinity", 1114, "-infinity", "-infinity"),
    ("timestamptz whole seconds", 1184, "2024-01-02 03:04:05+00", "2024-01-02T03:04:05Z"),
    ("timestamptz microseconds", 1184, "2024-01-02 03:04:05.123456+00", "2024-01-02T03:04:05.123456Z"),
    ("timestamptz BC", 1184, "0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
    ("timetz offset seconds", 1266, "03:04:05+05:30:15", "03:04:05+05:30:15"),
    ("interval zero", 1186, "PT0S", "PT0S"),
    ("bool as a ::text cast prints it", 16, "true", True),
    ("float8 -0", 701, "-0", -0.0),
    ("numeric big", 1700, "1000000000000000000000000000000", "1000000000000000000000000000000"),
    ("jsonb big integer", 3802, '{"n": 18446744073709551615}', {"n": 18446744073709551615}),
    ("jsonb 1.0", 3802, '{"n": 1.0}', {"n": 1.0}),
    ("int4range", 3904, "[1,5)", "[1,5)"),
    ("int4range[]", 3905, '{"[1,5)",empty}', ["[1,5)", "empty"]),
    ("point", 600, "(1.5,2)", "(1.5,2)"),
    ("bit", 1560, "101", "101"),
    ("tsvector", 3614, "'a' 'cat' 'fat'", "'a' 'cat' 'fat'"),
    ("xml", 142, "<a>x</a>", "<a>x</a>"),
    ("macaddr", 829, "08:00:2b:01:02:03", "08:00:2b:01:02:03"),
    ("int2vector is not brace syntax", 22, "1 2", "1 2"),
    ("interval[]", 1187, "{P1D}", ["P1D"]),
    ("date[]", 1182, "{2024-01-02,infinity}", ["2024-01-02", "infinity"]),
    ("bool[]", 1000, "{t,f,NULL}", [True, False, None]),
    ("numeric[]", 1231, "{1.50,NaN}", ["1.50", "NaN"]),
    ("uuid[]", 2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
    ('"char"[]', 1002, '{a,"\\""}', ["a", '"']),
    ("text[] whitespace", 1009, '{" ","a,b","\t","x\ny"}', [" ", "a,b", "\t", "x\ny"]),
    ("int4[] empty", 1007, "{}", []),
    ("int4[][] with bounds", 1007, "[0:1][1:2]={{1,2},{3,4}}", [[1, 2], [3, 4]]),
]


@pytest.mark.parametrize(
    ("type_oid", "type_name", "text", "expected"),
    [case[1:] for case in PGOUTPUT_CASES],
    ids=[case[0] for case in PGOUTPUT_CASES],
)
def test_pgoutput_texts(type_oid: int, type_name: str | None, text: str, expected: object) -> None:
    assert _same(converter_for(type_oid, type_name)(text), expected)
    assert _same(convert_value(type_oid, text, type_name), expected)


@pytest.mark.parametrize(
    ("type_oid", "text", "expected"),
    [case[1:] for case in OUTPUT_FUNCTION_CASES],
    ids=[case[0] for case in OUTPUT_FUNCTION_CASES],
)
def test_output_function_texts(type_oid: int, text: str, expected: object) -> None:
    assert _same(convert_value(type_oid, text), expected)


def _same(got: object, expected: object) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 nor True)."""
    if type(got) is not type(expected):
        return False
    if isinstance(got, list):
        return len(got) == len(expected) and all(map(_same, got, expected))  # type: ignore[arg-type]
    if isinstance(got, float):
        return math.copysign(1, got) == math.copysign(1, expected) and got == expected  # type: ignore[arg-type]
    return got == expected


@pytest.mark.parametrize(
    ("type_oid", "text"),
    [(700, "NaN"), (701, "NaN"), (701, "Infinity"), (701, "-Infinity"), (1022, "{NaN,Infinity,-Infinity}")],
)
def test_no_float_is_ever_nan_or_infinite(type_oid: int, text: str) -> None:
    value = convert_value(type_oid, text)
    values = value if isinstance(value, list) else [value]
    assert all(isinstance(item, str) for item in values)
    assert orjson.loads(orjson.dumps(value)) == value


def test_jsonb_beyond_a_double_keeps_its_text() -> None:
    text = '{"n": 1e400}'
    assert convert_value(3802, text) == text


# --- choosing converters ------------------------------------------------------------------------


@pytest.mark.parametrize("type_oid", [25, 1043, 1042, 19, 18, 1700, 2950, 1082, 1186, 869, 99999])
def test_text_like_types_get_str_itself(type_oid: int) -> None:
    # The source skips the call when the converter is `str`.
    assert converter_for(type_oid) is str


@pytest.mark.parametrize("type_oid", [20, 21, 23, 26])
def test_integer_types_get_int_itself(type_oid: int) -> None:
    assert converter_for(type_oid) is int


@pytest.mark.parametrize(
    ("type_name", "array_element_name", "text", "expected"),
    [
        ("int4", None, "5", 5),  # a domain over int4, as pgoutput names it
        ("pg_catalog.timestamptz", None, "2024-01-02 03:04:05+00", "2024-01-02T03:04:05Z"),
        ("citext", None, "Hello", "Hello"),
        ("_mood", None, '{happy,"a b"}', ["happy", "a b"]),
        ("_posint", "int4", "{1,NULL}", [1, None]),
        ("mood[]", None, "{sad}", ["sad"]),
        ("integer[]", None, "{{1},{2}}", [[1], [2]]),
        (None, "jsonb", '{"{}"}', [{}]),
        ("_mybox", "box", "{(1,1),(0,0);(2,2),(1,1)}", ["(1,1),(0,0)", "(2,2),(1,1)"]),
    ],
)
def test_types_known_by_name(
    type_name: str | None, array_element_name: str | None, text: str, expected: object
) -> None:
    converter = converter_for(70000, type_name, array_element_name=array_element_name)
    assert _same(converter(text), expected)


def test_a_known_oid_wins_over_the_name() -> None:
    assert converter_for(23, "text") is int


def test_unknown_type_without_a_name_keeps_its_text() -> None:
    assert convert_value(123456, "anything {1,2}") == "anything {1,2}"


# --- other inputs the converters accept ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02 03:04:05.25+05:30", "2024-01-01T21:34:05.250000Z"),
        ("2024-01-01 00:00:00-01", "2024-01-01T01:00:00Z"),
        ("1800-01-01 00:00:00+00:53:28", "1799-12-31T23:06:32Z"),
        ("0001-01-01 00:30:00+01", "0001-01-01 00:30:00+01"),  # would fall before year 1
        ("2024-01-02 03:04:05+02 BC", "2024-01-02 03:04:05+02 BC"),
    ],
)
def test_timestamptz_in_another_zone_is_converted_to_utc(text: str, expected: str) -> None:
    assert convert_value(1184, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("abc", b"abc"), ("a\\\\b", b"a\\b"), ("\\000\\377", b"\x00\xff"), ("", b"")],
)
def test_bytea_escape_output(text: str, expected: bytes) -> None:
    import base64

    assert base64.b64decode(convert_value(17, text)) == expected


# --- the array parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", []),
        ("{NULL}", [None]),
        ('{"NULL"}', ["NULL"]),
        ('{"null",NULL}', ["null", None]),
        ('{""}', [""]),
        ('{"\\\\"}', ["\\"]),
        ('{"\\""}', ['"']),
        ('{"{","}",","}', ["{", "}", ","]),
        ('{"a\\\\b\\"c"}', ['a\\b"c']),
        ("{a\\,b}", ["a,b"]),  # escapes outside quotes are valid input, though never output
        ("{{a,b},{NULL,d}}", [["a", "b"], [None, "d"]]),
        ('{{"a b"},{"{}"}}', [["a b"], ["{}"]]),
        ("{{{1}},{{2}}}", [[["1"]], [["2"]]]),
        ("[1:1]={x}", ["x"]),
        ("[-2:-1]={x,y}", ["x", "y"]),
        ("{é,日本}", ["é", "日本"]),
    ],
)
def test_parse_array(text: str, expected: list[object]) -> None:
    assert parse_array(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "{",
        "{1,2",
        "1,2}",
        "{1}}",
        "{{1}",
        '{"a}',
        '{"a"b}',
        "{1}{2}",
        "{1,,{2}}",
        "{{1},}",
        "{,{1}}",
    ],
)
def test_malformed_arrays_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_array(text)


def test_array_converter_keeps_malformed_text() -> None:
    assert convert_value(1007, "{1,{2}") == "{1,{2}"
    assert convert_value(1007, "not an array") == "not an array"


# Elements as PostgreSQL's array_out prints them (src/backend/utils/adt/arrayfuncs.c): quoted
# when empty, when "NULL" in any case, or when holding a quote, backslash, brace, the delimiter or
# whitespace; inside quotes, quote and backslash are escaped with a backslash.
_NEEDS_QUOTES = re.compile(r'["\\{}, \t\n\r\v\f]')


def format_element(value: str | None) -> str:
    if value is None:
        return "NULL"
    if value == "" or value.upper() == "NULL" or _NEEDS_QUOTES.search(value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def format_array(value: list[object]) -> str:
    return "{" + ",".join(format_array(v) if isinstance(v, list) else format_element(v) for v in value) + "}"  # type: ignore[arg-type]


def reshape(flat: list[object], shape: list[int]) -> list[object]:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0]
    return [reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


elements = (
    st.none()
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
    | st.sampled_from(["NULL", "null", "", " ", "a b", '"', "\\", "{}", ",", "\t", "é"])
)


@st.composite
def arrays(draw: st.DrawFn) -> list[object]:
    """A rectangular array of one to three dimensions, as PostgreSQL allows."""
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    flat = draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape)))
    return reshape(flat, shape)


@given(arrays(), st.booleans())
def test_array_round_trip(value: list[object], with_bounds: bool) -> None:
    text = format_array(value)
    if with_bounds:
        depth, inner = 0, value
        while isinstance(inner, list):
            depth, inner = depth + 1, inner[0]
        text = "[0:0]" * depth + "=" + text  # the bounds' values do not matter to the parser
    assert parse_array(text) == value


@given(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=10))
def test_int_array_round_trip(value: list[int | None]) -> None:
    text = "{" + ",".join("NULL" if v is None else str(v) for v in value) + "}"
    assert convert_value(1016, text) == value
