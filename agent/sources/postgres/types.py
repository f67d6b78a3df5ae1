"""PostgreSQL text output to typed, JSON-native values: one converter per column type, built once.

pgoutput sends column values in each type's text output format. The source's session sets
TimeZone=UTC, DateStyle=ISO, IntervalStyle=iso_8601 and extra_float_digits=3, and the converters
rely on it: timestamptz text then always ends in "+00", and floats round-trip exactly. The rules
are listed in docs/format.md, section "Change records"; in short, numbers that JSON holds exactly
become numbers, times become ISO 8601 strings, and everything else keeps its text form.

Converters run once per column per row, so the common ones cost nothing extra: int columns get
`int` itself and text-like columns get `str`, which callers may recognise (`converter is str`)
and skip the call altogether. No converter ever returns a float NaN or infinity, which JSON
cannot hold: PostgreSQL's "NaN", "Infinity" and "-Infinity" stay strings.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson

__all__ = ["Converter", "convert_value", "converter_for", "parse_array"]

Converter = Callable[[str], Any]

# OIDs of the built-in types converted to something other than their text (pg_type.oid).
BOOL = 16
BYTEA = 17
CHAR = 18
NAME = 19
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
BPCHAR = 1042
VARCHAR = 1043
DATE = 1082
TIME = 1083
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
INTERVAL = 1186
TIMETZ = 1266
NUMERIC = 1700
UUID = 2950
JSONB = 3802
BOX_ARRAY = 1020  # the one built-in array whose elements are separated by ';' (pg_type.typdelim)

_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
_MICROSECOND_DIGITS = 6


def _float(text: str) -> float | str:
    return text if text in _FLOAT_WORDS else float(text)


# "t"/"f" is the output function's text; "true"/"false" is what a `::text` cast gives.
_bool: Converter = {"t": True, "f": False, "true": True, "false": False}.__getitem__


def _json(text: str) -> Any:
    # orjson refuses numbers beyond a double's range (and NaN); such a document keeps its text.
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


_BYTEA_ESCAPE = re.compile(rb"\\(\\|[0-7]{3})")


def _bytea(text: str) -> str:
    """Base64 of the bytes; PostgreSQL's hex output (`\\x0a0b`), or its older escape output."""
    if text.startswith("\\x"):
        data = bytes.fromhex(text[2:])
    else:  # bytea_output=escape: printable ASCII as is, `\\` and `\ooo` octal escapes
        data = _BYTEA_ESCAPE.sub(
            lambda match: b"\\" if match[1] == b"\\" else bytes((int(match[1], 8),)),
            text.encode("latin-1"),
        )
    return base64.b64encode(data).decode("ascii")


def _padding(whole_seconds_length: int) -> dict[int, str]:
    """Zeros that pad a trimmed fraction ("05.5") to microseconds ("05.500000"), by text length.

    PostgreSQL trims trailing zeros from the fraction, and leaves out the point when there is
    none: a text `whole_seconds_length` long has no fraction.
    """
    padding = {whole_seconds_length: ""}
    for digits in range(1, _MICROSECOND_DIGITS + 1):
        padding[whole_seconds_length + 1 + digits] = "0" * (_MICROSECOND_DIGITS - digits)
    return padding


_TIMESTAMP_PADDING = _padding(len("2024-01-02 03:04:05"))
_TIMESTAMPTZ_PADDING = _padding(len("2024-01-02 03:04:05+00"))
_TIME_PADDING = _padding(len("03:04:05"))


def _timestamp(text: str) -> str:
    """`2024-01-02 03:04:05.5` → `2024-01-02T03:04:05.500000`; BC, infinity and 5-digit years as is."""
    if text[4:5] == "-" and text[10:11] == " " and text[-1] != "C":
        padding = _TIMESTAMP_PADDING.get(len(text))
        if padding is not None:
            return f"{text[:10]}T{text[11:]}{padding}"
    return text


def _timestamptz(text: str) -> str:
    """`2024-01-02 03:04:05.5+00` → `2024-01-02T03:04:05.500000Z`; infinity, BC, 5-digit years as is."""
    if text[-3:] == "+00" and text[10:11] == " " and text[4] == "-":
        padding = _TIMESTAMPTZ_PADDING.get(len(text))
        if padding is not None:
            return f"{text[:10]}T{text[11:-3]}{padding}Z"
    return _timestamptz_elsewhere(text)


_TIMESTAMPTZ = re.compile(
    r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?"
)


def _timestamptz_elsewhere(text: str) -> str:
    """A timestamptz printed in a zone other than UTC, should the session's TimeZone not be UTC."""
    match = _TIMESTAMPTZ.fullmatch(text)
    if match is None:
        return text
    day, clock, fraction, sign, hours, minutes, seconds = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
    microseconds = (fraction or "").ljust(_MICROSECOND_DIGITS, "0")
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}.{microseconds}")
        moment = moment - offset if sign == "+" else moment + offset
    except (ValueError, OverflowError):  # moved out of years 1..9999
        return text
    return f"{moment.isoformat()}Z"


def _time(text: str) -> str:
    """`03:04:05.25` → `03:04:05.250000`; `24:00:00` stays."""
    padding = _TIME_PADDING.get(len(text))
    return text if padding is None else f"{text}{padding}"


def _timetz(text: str) -> str:
    """`03:04:05.25+05:30` → `03:04:05.250000+05:30`, `03:04:05-08` → `03:04:05-08:00`."""
    sign = max(text.rfind("+"), text.rfind("-"))
    if sign < len("03:04:05"):
        return text
    offset = text[sign:]
    if len(offset) == len("+05"):
        offset += ":00"
    return _time(text[:sign]) + offset


_BY_OID: dict[int, Converter] = {
    BOOL: _bool,
    BYTEA: _bytea,
    CHAR: str,
    NAME: str,
    INT8: int,
    INT2: int,
    INT4: int,
    TEXT: str,
    OID: int,
    JSON: _json,
    FLOAT4: _float,
    FLOAT8: _float,
    BPCHAR: str,  # blank-padded as stored: char(4) 'ab' is "ab  "
    VARCHAR: str,
    DATE: str,  # already ISO 8601 under DateStyle=ISO
    TIME: _time,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    INTERVAL: str,  # an ISO 8601 duration under IntervalStyle=iso_8601
    TIMETZ: _timetz,
    NUMERIC: str,  # exact: a float would round it
    UUID: str,  # PostgreSQL prints the canonical lower-case form
    JSONB: _json,
}

# Every built-in array type and its element type (pg_type.oid → typelem, PostgreSQL 15), except
# the catalogs' row types, and int2vector and oidvector, whose text is space-separated, not braces.
_ARRAY_ELEMENTS: dict[int, int] = {
    143: 142,  # xml
    199: 114,  # json
    271: 5069,  # xid8
    629: 628,  # line
    651: 650,  # cidr
    719: 718,  # circle
    775: 774,  # macaddr8
    791: 790,  # money
    1000: 16,  # bool
    1001: 17,  # bytea
    1002: 18,  # char
    1003: 19,  # name
    1005: 21,  # int2
    1006: 22,  # int2vector
    1007: 23,  # int4
    1008: 24,  # regproc
    1009: 25,  # text
    1010: 27,  # tid
    1011: 28,  # xid
    1012: 29,  # cid
    1013: 30,  # oidvector
    1014: 1042,  # bpchar
    1015: 1043,  # varchar
    1016: 20,  # int8
    1017: 600,  # point
    1018: 601,  # lseg
    1019: 602,  # path
    1020: 603,  # box
    1021: 700,  # float4
    1022: 701,  # float8
    1027: 604,  # polygon
    1028: 26,  # oid
    1034: 1033,  # aclitem
    1040: 829,  # macaddr
    1041: 869,  # inet
    1115: 1114,  # timestamp
    1182: 1082,  # date
    1183: 1083,  # time
    1185: 1184,  # timestamptz
    1187: 1186,  # interval
    1231: 1700,  # numeric
    1263: 2275,  # cstring
    1270: 1266,  # timetz
    1561: 1560,  # bit
    1563: 1562,  # varbit
    2201: 1790,  # refcursor
    2207: 2202,  # regprocedure
    2208: 2203,  # regoper
    2209: 2204,  # regoperator
    2210: 2205,  # regclass
    2211: 2206,  # regtype
    2949: 2970,  # txid_snapshot
    2951: 2950,  # uuid
    3221: 3220,  # pg_lsn
    3643: 3614,  # tsvector
    3644: 3642,  # gtsvector
    3645: 3615,  # tsquery
    3735: 3734,  # regconfig
    3770: 3769,  # regdictionary
    3807: 3802,  # jsonb
    3905: 3904,  # int4range
    3907: 3906,  # numrange
    3909: 3908,  # tsrange
    3911: 3910,  # tstzrange
    3913: 3912,  # daterange
    3927: 3926,  # int8range
    4073: 4072,  # jsonpath
    4090: 4089,  # regnamespace
    4097: 4096,  # regrole
    4192: 4191,  # regcollation
    5039: 5038,  # pg_snapshot
    6150: 4451,  # int4multirange
    6151: 4532,  # nummultirange
    6152: 4533,  # tsmultirange
    6153: 4534,  # tstzmultirange
    6155: 4535,  # datemultirange
    6157: 4536,  # int8multirange
}

# Names as pgoutput's Type message gives them (pg_type.typname), and as format_type() spells them.
# For a domain, the Type message carries the domain's OID but its base type's name, so a domain
# over a built-in type is converted like that type.
_BY_NAME: dict[str, int] = {
    "bool": BOOL,
    "boolean": BOOL,
    "bytea": BYTEA,
    "char": CHAR,
    "name": NAME,
    "int8": INT8,
    "bigint": INT8,
    "int2": INT2,
    "smallint": INT2,
    "int4": INT4,
    "integer": INT4,
    "text": TEXT,
    "oid": OID,
    "json": JSON,
    "float4": FLOAT4,
    "real": FLOAT4,
    "float8": FLOAT8,
    "double precision": FLOAT8,
    "bpchar": BPCHAR,
    "character": BPCHAR,
    "varchar": VARCHAR,
    "character varying": VARCHAR,
    "date": DATE,
    "time": TIME,
    "time without time zone": TIME,
    "timestamp": TIMESTAMP,
    "timestamp without time zone": TIMESTAMP,
    "timestamptz": TIMESTAMPTZ,
    "timestamp with time zone": TIMESTAMPTZ,
    "interval": INTERVAL,
    "timetz": TIMETZ,
    "time with time zone": TIMETZ,
    "numeric": NUMERIC,
    "decimal": NUMERIC,
    "uuid": UUID,
    "jsonb": JSONB,
}


def converter_for(
    type_oid: int, type_name: str | None = None, *, array_element_name: str | None = None
) -> Converter:
    """The function turning a column's text into its value; `str` when the text is the value.

    Built-in types are known by OID. Any other type (an enum, a domain, an extension's type) goes
    by `type_name`, from pgoutput's Type message: a name starting with "_" (or ending in "[]"), or
    an `array_element_name`, means an array of that element type. Unknown types keep their text.
    """
    converter = _BY_OID.get(type_oid)
    if converter is not None:
        return converter
    element_oid = _ARRAY_ELEMENTS.get(type_oid)
    if element_oid is not None:
        return _array_converter(converter_for(element_oid), ";" if type_oid == BOX_ARRAY else ",")
    if type_name is None and array_element_name is None:
        return str
    name = (type_name or "").removeprefix("pg_catalog.")
    if array_element_name is None:
        if name.startswith("_"):
            array_element_name = name[1:]
        elif name.endswith("[]"):
            array_element_name = name[:-2]
        else:
            return _by_name(name)
    element_name = array_element_name.removeprefix("pg_catalog.")
    return _array_converter(_by_name(element_name), ";" if element_name == "box" else ",")


def value_converter(type_oid: int, type_name: str | None = None) -> Converter | None:
    """Like `converter_for`, but None where the text is the value: the hot paths skip the call."""
    converter = converter_for(type_oid, type_name)
    return None if converter is str else converter


def _by_name(name: str) -> Converter:
    oid = _BY_NAME.get(name)
    return str if oid is None else _BY_OID[oid]


_CONVERTERS: dict[tuple[int, str | None], Converter] = {}


def convert_value(type_oid: int, text: str, type_name: str | None = None) -> Any:
    """One value converted, with the converter for its type built once and cached."""
    converter = _CONVERTERS.get((type_oid, type_name))
    if converter is None:
        converter = _CONVERTERS[(type_oid, type_name)] = converter_for(type_oid, type_name)
    return converter(text)


# --- arrays -----------------------------------------------------------------------------------


def _array_converter(element: Converter, delimiter: str) -> Converter:
    def convert_array(text: str) -> Any:
        try:
            return parse_array(text, element, delimiter)
        except ValueError:  # not array output after all (never seen from PostgreSQL): keep it
            return text

    return convert_array


def parse_array(text: str, element: Converter = str, delimiter: str = ",") -> list[Any]:
    """PostgreSQL's array output (`{1,2,NULL}`, `{{"a b",NULL},{"NULL","c\\"d"}}`) as nested lists.

    Each element goes through `element`; an unquoted NULL is None, a quoted "NULL" is the string.
    Dimension bounds (`[0:1]={1,2}`) are dropped: the lists hold the elements only. ValueError
    when the text is not well-formed array output.
    """
    if text.startswith("["):  # explicit bounds, printed when a lower bound is not 1
        text = text[text.find("=") + 1 :]
    if text[:1] != "{" or text[-1:] != "}":
        raise ValueError(f"array text must be enclosed in braces: {text[:40]!r}")
    body = text[1:-1]
    if '"' in body or "{" in body or "}" in body or "\\" in body:
        return _parse_nested(text, element, delimiter)
    # The common case: one dimension, nothing quoted.
    if not body:
        return []
    if element is str:
        return [None if item == "NULL" else item for item in body.split(delimiter)]
    return [None if item == "NULL" else element(item) for item in body.split(delimiter)]


_BACKSLASH_ESCAPE = re.compile(r"\\(.)", re.S)


@functools.cache
def _tokens(delimiter: str) -> re.Pattern[str]:
    """Array output's tokens: a quoted element (quotes included), a brace, the delimiter, a bare element."""
    delim = re.escape(delimiter)
    return re.compile(rf'("(?:[^"\\]|\\.)*")|([{{}}])|({delim})|((?:[^{{}}"\\{delim}]|\\.)+)', re.S)


def _parse_nested(text: str, element: Converter, delimiter: str) -> list[Any]:
    """The general parser: quoted elements with backslash escapes, and nested dimensions."""
    root: list[Any] | None = None
    current: list[Any] | None = None
    parents: list[list[Any] | None] = []
    expect_item = True  # after "{" or a delimiter
    consumed = 0  # findall skips what no token matches; counting characters catches it
    for quoted, brace, delimiter_token, bare in _tokens(delimiter).findall(text):
        if brace == "{":
            if not expect_item or (current is None and root is not None):
                raise ValueError(f"unexpected '{{' at offset {consumed}: {text[:40]!r}")
            nested: list[Any] = []
            if current is None:
                root = nested
            else:
                current.append(nested)
            parents.append(current)
            current = nested
            consumed += 1
        elif brace:
            if current is None or (expect_item and current):
                raise ValueError(f"unexpected '}}' at offset {consumed}: {text[:40]!r}")
            current = parents.pop()
            expect_item = False
            consumed += 1
        elif delimiter_token:
            if current is None or expect_item:
                raise ValueError(f"unexpected delimiter at offset {consumed}: {text[:40]!r}")
            expect_item = True
            consumed += len(delimiter_token)
        else:
            if current is None or not expect_item:
                raise ValueError(f"unexpected element at offset {consumed}: {text[:40]!r}")
            raw = quoted[1:-1] if quoted else bare
            if raw == "NULL" and not quoted:
                current.append(None)
            else:
                current.append(element(_BACKSLASH_ESCAPE.sub(r"\1", raw) if "\\" in raw else raw))
            expect_item = False
            consumed += len(quoted or bare)
    if root is None or current is not None or consumed != len(text):
        raise ValueError(f"malformed array text: {text[:40]!r}")
    return root
